"""Read an imported archive back in label order, one file's worth at a time.

:class:`ArchiveLabelSource` is what an export sees: the labels in the stored
form when the import was lossless (dense values in the stored dtype, top-k
values and ids in the stored order), decoded float32 logits otherwise, and
side tensors read row range by row range straight from the file (each checked
against its sha256 once, by a streaming pass), so an export never holds a
whole side tensor or the whole label set in memory.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from labelzip.archive.format import SIDE_PREFIX, TensorEntry, dtype_from_code
from labelzip.archive.reader import ArchiveReader
from labelzip.closing import ClosesOnExit
from labelzip.codecs.baseline.dense import DTYPES, DenseCodec
from labelzip.errors import ArchiveFormatError, InputError
from labelzip.interop.base import INTEROP_KEY, LabelRows, LabelSource, SparseCodec

__all__ = ["ArchiveLabelSource", "interop_document"]


def interop_document(reader: ArchiveReader) -> dict[str, Any]:
    """The ``metadata.user["interop"]`` document of an imported archive.

    Raises:
        InputError: the archive was not made by ``labelzip import``.
    """
    doc = reader.header.user.get(INTEROP_KEY)
    if not isinstance(doc, dict) or "format" not in doc:
        raise InputError(
            f"archive {str(reader.path)!r} was not made by `labelzip import`; only "
            "imported archives remember the file layout an export rebuilds"
        )
    return doc


@dataclass(frozen=True)
class _SideLayout:
    """Where one side tensor's rows lie in the archive file."""

    offset: int  # file offset of row 0
    dtype: torch.dtype
    shape: tuple[int, ...]
    row_bytes: int


class ArchiveLabelSource(LabelSource, ClosesOnExit):
    """Labels and side tensors of an imported archive, streamed in label order.

    Side rows are read with ``os.pread`` on one descriptor held for the source's
    life: an export asks for a few rows of several side tensors per file, which
    for a large FKD store is several calls per image (docs/interop.md,
    "Streaming"). Close it with :meth:`close` or a ``with`` block; it is also
    closed when the source is collected.
    """

    def __init__(self, reader: ArchiveReader) -> None:
        self.reader = reader
        self.interop = interop_document(reader)
        self.num_classes = reader.num_classes
        self.num_labels = reader.num_labels
        self._chunk = 0
        self._start = 0  # first label of chunk self._chunk
        self._pending: list[LabelRows] = []
        self._held = 0
        self._verified: set[str] = set()
        self._layouts: dict[str, _SideLayout] = {}
        self._fd: int | None = None
        self._closer: weakref.finalize | None = None
        codec = reader.codec
        lossless = bool(self.interop.get("lossless"))
        self._sparse = lossless and isinstance(codec, SparseCodec)
        self._dense_dtype: torch.dtype | None = None
        if lossless and isinstance(codec, DenseCodec):
            self._dense_dtype = DTYPES[codec.config.dtype]

    # -- labels ------------------------------------------------------------------
    def _next_chunk(self) -> LabelRows:
        if self._chunk >= self.reader.num_chunks:
            raise ArchiveFormatError(
                f"archive {str(self.reader.path)!r} ran out of labels before the "
                "files its import recorded were complete"
            )
        index, self._chunk = self._chunk, self._chunk + 1
        start = self._start
        self._start += self.reader.header.chunk_labels[index]
        codec = self.reader.codec
        if self._sparse:
            assert isinstance(codec, SparseCodec)
            values, ids = codec.decode_topk(self.reader.read_chunk(index))
            return LabelRows(values=values, ids=ids)
        rows = self.reader.decode(slice(start, self._start))
        if self._dense_dtype is not None:
            return LabelRows(dense=rows.to(self._dense_dtype))
        return LabelRows(dense=rows, exact=False)

    def take(self, count: int) -> LabelRows:
        while self._held < count:
            part = self._next_chunk()
            self._pending.append(part)
            self._held += _rows(part)
        joined = _cat(self._pending)
        head, tail = _split(joined, count)
        self._pending = [tail] if _rows(tail) else []
        self._held -= count
        return head

    # -- side tensors --------------------------------------------------------------
    def has_side(self, name: str) -> bool:
        return SIDE_PREFIX + name in self.reader.container.entries

    def side_rows(self, name: str) -> int:
        return int(self._entry(name).shape[0])

    def _entry(self, name: str) -> TensorEntry:
        entry = self.reader.container.entries.get(SIDE_PREFIX + name)
        if entry is None:
            raise ArchiveFormatError(
                f"archive {str(self.reader.path)!r} has no side tensor {name!r}, "
                "which its import recorded"
            )
        return entry

    def _layout(self, name: str) -> _SideLayout:
        layout = self._layouts.get(name)
        if layout is None:
            key = SIDE_PREFIX + name
            entry = self._entry(name)
            if key not in self._verified:
                self.reader.verify_tensor(key)
                self._verified.add(key)
            dtype = dtype_from_code(entry.dtype)
            row_bytes = torch.empty((), dtype=dtype).element_size()
            for size in entry.shape[1:]:
                row_bytes *= size
            layout = _SideLayout(
                offset=self.reader.container.data_start + entry.start,
                dtype=dtype,
                shape=tuple(entry.shape),
                row_bytes=row_bytes,
            )
            self._layouts[name] = layout
        return layout

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(
                self.reader.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)
            )
            self._closer = weakref.finalize(self, os.close, self._fd)
        return self._fd

    def close(self) -> None:
        """Release the descriptor side rows are read through (idempotent)."""
        if self._closer is not None:
            self._closer()
        self._fd = None
        self._closer = None

    def side(self, name: str, start: int, stop: int) -> torch.Tensor:
        layout = self._layout(name)
        shape = layout.shape
        if not 0 <= start <= stop <= shape[0]:
            raise ArchiveFormatError(
                f"side tensor {name!r} has {shape[0]} rows; rows {start}:{stop} "
                "were asked for"
            )
        size = (stop - start) * layout.row_bytes
        if not size:
            return torch.empty((stop - start, *shape[1:]), dtype=layout.dtype)
        offset = layout.offset + start * layout.row_bytes
        data = bytearray(os.pread(self._descriptor(), size, offset))
        if len(data) != size:
            raise ArchiveFormatError(
                f"archive {str(self.reader.path)!r} ends inside side tensor {name!r}"
            )
        flat = torch.frombuffer(data, dtype=torch.uint8).view(layout.dtype)
        return flat.reshape(stop - start, *shape[1:])


def _rows(part: LabelRows) -> int:
    held = part.dense if part.dense is not None else part.values
    assert held is not None
    return int(held.shape[0])


def _cat(parts: list[LabelRows]) -> LabelRows:
    if len(parts) == 1:
        return parts[0]
    if parts[0].dense is not None:
        dense = torch.cat([p.dense for p in parts if p.dense is not None])
        return LabelRows(dense=dense, exact=parts[0].exact)
    values = torch.cat([p.values for p in parts if p.values is not None])
    ids = torch.cat([p.ids for p in parts if p.ids is not None])
    return LabelRows(values=values, ids=ids)


def _split(part: LabelRows, count: int) -> tuple[LabelRows, LabelRows]:
    if part.dense is not None:
        return (
            LabelRows(dense=part.dense[:count], exact=part.exact),
            LabelRows(dense=part.dense[count:], exact=part.exact),
        )
    assert part.values is not None and part.ids is not None
    return (
        LabelRows(values=part.values[:count], ids=part.ids[:count]),
        LabelRows(values=part.values[count:], ids=part.ids[count:]),
    )
