"""Exceptions raised by labelzip.

Every error a user can trigger derives from :class:`LabelzipError`; the CLI turns
these into a one-line message and a non-zero exit code instead of a traceback.
Messages say what is wrong, the value received, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "LabelzipError",
    "InputError",
    "ConfigError",
    "NotFittedError",
    "UnreachableTargetError",
    "ArchiveFormatError",
    "ChecksumError",
    "CodecMismatchError",
    "DistributedError",
    "ReportedError",
]


class LabelzipError(Exception):
    """Base class of all errors labelzip raises on purpose."""


class InputError(LabelzipError, ValueError):
    """A user-supplied file or tensor is unusable (missing, wrong rank, NaN, ...)."""


class ConfigError(LabelzipError, ValueError):
    """A codec or pipeline configuration is invalid."""


class NotFittedError(LabelzipError, RuntimeError):
    """A codec was used to encode or decode before ``fit`` was called."""


class UnreachableTargetError(LabelzipError, ValueError):
    """A rate target (ratio or bits per label) that no configuration can meet."""


class ArchiveFormatError(LabelzipError, ValueError):
    """A file is not a labelzip archive, is truncated, or has an unknown version."""


class ChecksumError(ArchiveFormatError):
    """Archive content does not match its stored checksum (corruption)."""


class CodecMismatchError(LabelzipError, ValueError):
    """An archive or codec does not fit the data it is used with."""


class DistributedError(LabelzipError, RuntimeError):
    """Another process of a multi-process run failed, hung, or sees other input."""


class ReportedError(LabelzipError):
    """An error whose one-line message was already printed (the CLI prints no more).

    A torchrun rank prints its own line while every rank is still alive, because
    torchrun stops the other ranks as soon as the first one exits.
    """
