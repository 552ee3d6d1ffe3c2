"""Distilled image sets: every framework's images in one format (:class:`DistilledSet`)."""

from __future__ import annotations

from labelzip.distill.base import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    DistilledSet,
    ProgressCallback,
    check_ipc,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "DistilledSet",
    "ProgressCallback",
    "check_ipc",
]
