"""Partial files: the encoded chunks of an unfinished encode, kept for ``--resume``.

Each process of a chunked run (``compress``; ``import`` and ``relabel`` under
torchrun or with ``--resume``; one process, or one per torchrun rank) appends the
chunks it encodes to its own partial file in the output's folder, named so
that a later run finds it::

    .<output name>.labelzip-part-<input fingerprint, 8 hex>-<rank>-of-<world>

A partial file is a JSON header, then one record per chunk::

    b"LZPART01" | u32 header length | header JSON
    (b"LZCK" | u32 labels | u64 bytes | 32-byte sha256 | chunk bytes) ...

The header records what the chunks were encoded from and with (input
fingerprint, settings digest, codec digest, the rank's chunk range); a resumed
run must match it exactly. Records are flushed one by one, so a killed run
loses at most the chunk it was writing: :meth:`PartialFile.resume` keeps the
records whose bytes match their digest and cuts the file after the last one.
When the archive is complete the partial files are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from labelzip import faults
from labelzip.archive.chunks import EncodedChunk
from labelzip.errors import InputError

__all__ = [
    "PART_TAG",
    "ChunkRecord",
    "PartialFile",
    "PartialMismatchError",
    "check_header",
    "find_partials",
    "partial_path",
    "read_partial",
    "remove_partials",
]

logger = logging.getLogger(__name__)

PART_TAG = ".labelzip-part-"
_MAGIC = b"LZPART01"
_RECORD = struct.Struct("<4sIQ32s")
_RECORD_MAGIC = b"LZCK"
_MAX_HEADER = 1 << 20
_MAX_STEM = 150  # as labelzip.outputs: room for the tag under NAME_MAX
_NAME_RE = re.compile(r"(?P<fp>[0-9a-f]{8})-(?P<rank>[0-9]+)-of-(?P<world>[0-9]+)")


def _prefix(dest: Path) -> str:
    return f".{dest.name[:_MAX_STEM]}{PART_TAG}"


def partial_path(dest: Path, fingerprint: str, rank: int, world: int) -> Path:
    """The partial file of rank ``rank`` of ``world`` writing ``dest``."""
    return dest.parent / f"{_prefix(dest)}{fingerprint[:8]}-{rank}-of-{world}"


def find_partials(dest: Path) -> dict[Path, tuple[str, int, int]]:
    """Partial files beside ``dest``: path -> (fingerprint prefix, rank, world)."""
    folder = dest.parent if str(dest.parent) else Path(".")
    prefix = _prefix(dest)
    found: dict[Path, tuple[str, int, int]] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return found
    for name in names:
        if not name.startswith(prefix):
            continue
        match = _NAME_RE.fullmatch(name[len(prefix) :])
        if match is not None:
            found[folder / name] = (
                match["fp"],
                int(match["rank"]),
                int(match["world"]),
            )
    return found


def remove_partials(paths: list[Path], dest: Path, why: str) -> None:
    """Remove partial files; one notice line (a warning) when any existed."""
    removed = []
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            continue  # not ours to remove; the next run tries again
        removed.append((path.name, size))
    if removed:
        total = sum(size for _, size in removed)
        logger.warning(
            "labelzip: removed %d partial file(s) of an earlier run of %s (%s, %d bytes): %s",
            len(removed),
            dest,
            why,
            total,
            ", ".join(name for name, _ in removed),
        )


@dataclass(frozen=True)
class ChunkRecord:
    """One stored chunk of a partial file: its labels, bytes and where they lie."""

    num_labels: int
    offset: int  # of the chunk bytes
    nbytes: int
    sha256: bytes


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _read_header(handle: IO[bytes], path: Path) -> tuple[dict[str, Any], int]:
    head = handle.read(len(_MAGIC) + 4)
    if len(head) < len(_MAGIC) + 4 or head[: len(_MAGIC)] != _MAGIC:
        raise InputError(f"{path.name} is not a labelzip partial file")
    (length,) = struct.unpack("<I", head[len(_MAGIC) :])
    if length > _MAX_HEADER:
        raise InputError(f"{path.name}: partial header of {length} bytes is too long")
    raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if len(raw) < length or not isinstance(header, dict):
        raise InputError(f"{path.name}: damaged partial header")
    return header, len(head) + length


def _scan(handle: IO[bytes], start: int, size: int, verify: bool) -> list[ChunkRecord]:
    """The complete records from ``start`` on; stops at the first incomplete or
    (with ``verify``) damaged one."""
    records: list[ChunkRecord] = []
    pos = start
    while pos + _RECORD.size <= size:
        handle.seek(pos)
        magic, labels, nbytes, sha = _RECORD.unpack(handle.read(_RECORD.size))
        data_at = pos + _RECORD.size
        if magic != _RECORD_MAGIC or labels < 1 or data_at + nbytes > size:
            break
        if verify:
            digest = hashlib.sha256()
            left = nbytes
            while left:
                piece = handle.read(min(left, 1 << 20))
                digest.update(piece)
                left -= len(piece)
            if digest.digest() != sha:
                break
        records.append(ChunkRecord(labels, data_at, nbytes, sha))
        pos = data_at + nbytes
    return records


def read_partial(
    path: Path, *, verify: bool = False
) -> tuple[dict[str, Any], list[ChunkRecord]]:
    """A partial file's header and complete records (digests checked with ``verify``).

    Raises:
        InputError: the file is missing, unreadable or not a partial file.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header, start = _read_header(handle, path)
            return header, _scan(handle, start, size, verify)
    except OSError as exc:
        raise InputError(
            f"cannot read partial file {str(path)!r}: {_reason(exc)}"
        ) from exc


class PartialMismatchError(InputError):
    """``--resume`` found a partial file of other input, settings or codec (the
    file is kept: a rerun with the original options still resumes from it)."""


# Header fields in the order a mismatch is reported: the first one that
# differs is the cause (other settings also give another codec).
_FIELD_ORDER = ("format", "input", "settings", "world", "rank", "chunks", "chunk_size")


def _mismatch(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first header field that differs, or None."""
    rest = sorted((set(found) | set(wanted)) - set(_FIELD_ORDER))
    for key in (*_FIELD_ORDER, *rest):
        if found.get(key) != wanted.get(key):
            return key
    return None


def _shown(value: Any) -> str:
    """A header value for a message: digests cut to 8 hex."""
    if isinstance(value, str) and len(value) == 64:
        return value[:8]
    return repr(value)


def check_header(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to resume from ``path`` when its header ``found`` differs from this
    run's header ``wanted`` (the first field that differs is named).

    Raises:
        PartialMismatchError: a field differs (the file is kept).
    """
    field = _mismatch(found, wanted)
    if field is not None:
        raise PartialMismatchError(
            f"--resume: the partial run in {path.name} differs in its "
            f"{field} ({_shown(found.get(field))}, now "
            f"{_shown(wanted.get(field))}); rerun with its options, or drop "
            "--resume to start over"
        )


class PartialFile:
    """The partial file of one rank: append encoded chunks, resume after a kill.

    Args:
        path: see :func:`partial_path`.
        header: what the chunks are encoded from and with (JSON values).
        rank: this process's rank (for the test fault hook).
        resume: continue an existing file whose header equals ``header``
            (keeping its records up to the first damaged one); without it an
            existing file is replaced.

    Raises:
        InputError: the file cannot be created or written, or ``resume`` finds
            a file of other input, settings or codec (naming the field).
    """

    def __init__(
        self, path: Path, header: dict[str, Any], *, rank: int = 0, resume: bool = False
    ) -> None:
        self.path = path
        self.rank = rank
        self._written = 0  # chunks appended by this run
        self.records: list[ChunkRecord] = []
        encoded = json.dumps(header, sort_keys=True).encode("utf-8")
        if resume and path.exists():
            try:
                self._handle = self._resume(header)
            except OSError as exc:
                raise InputError(
                    f"cannot resume from partial file {str(path)!r}: {_reason(exc)}"
                ) from exc
            return
        try:
            self._handle = open(path, "wb")
        except OSError as exc:
            raise InputError(
                f"cannot write partial file {str(path)!r}: {_reason(exc)}"
            ) from exc
        try:
            self._handle.write(_MAGIC + struct.pack("<I", len(encoded)) + encoded)
            self._handle.flush()
        except OSError as exc:
            self.remove()
            raise InputError(
                f"cannot write partial file {str(path)!r}: {_reason(exc)}"
            ) from exc

    def _resume(self, header: dict[str, Any]) -> IO[bytes]:
        handle = open(self.path, "r+b")
        try:
            size = os.fstat(handle.fileno()).st_size
            found, start = _read_header(handle, self.path)
            check_header(self.path, found, header)
            self.records = _scan(handle, start, size, verify=True)
            end = (
                self.records[-1].offset + self.records[-1].nbytes
                if self.records
                else start
            )
            handle.truncate(end)
            handle.seek(end)
        except BaseException:
            handle.close()
            raise
        return handle

    @property
    def num_chunks(self) -> int:
        return len(self.records)

    def append(self, chunk: EncodedChunk) -> None:
        """Store one chunk; flushed, so a killed run keeps it."""
        try:
            offset = self._handle.tell() + _RECORD.size
            self._handle.write(
                _RECORD.pack(
                    _RECORD_MAGIC, chunk.num_labels, len(chunk.data), chunk.sha256
                )
            )
            self._handle.write(chunk.data)
            self._handle.flush()
            self._written += 1
            faults.chunk_written(self.rank, self._written)
        except OSError as exc:
            raise InputError(
                f"writing partial file {str(self.path)!r} failed: {_reason(exc)}"
            ) from exc
        self.records.append(
            ChunkRecord(chunk.num_labels, offset, len(chunk.data), chunk.sha256)
        )

    def close(self) -> None:
        """Close the file (kept for a later ``--resume``)."""
        try:
            self._handle.close()
        except OSError:  # a flush that cannot complete: the records say what is whole
            pass

    def remove(self) -> None:
        """Close and delete the file (the run failed or finished)."""
        self.close()
        self._discard()

    def _discard(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass
