"""Read an imported archive back in label order, one file's worth at a time.

:class:`ArchiveLabelSource` is what an export sees: the labels in the stored
form when the import was lossless (dense values in the stored dtype, top-k
values and ids in the stored order), decoded float32 logits otherwise, and
side tensors read row range by row range straight from the file (each checked
against its sha256 once, by a streaming pass), so an export never holds a
whole side tensor or the whole label set in memory.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from labelzip.archive.format import SIDE_PREFIX, TensorEntry, dtype_from_code
from labelzip.archive.reader import ArchiveReader
from labelzip.codecs.dense import DTYPES, DenseCodec
from labelzip.codecs.topk import TopKCodec
from labelzip.errors import ArchiveFormatError, ChecksumError, InputError
from labelzip.interop.base import INTEROP_KEY, LabelRows, LabelSource

__all__ = ["ArchiveLabelSource", "interop_document"]

_HASH_BYTES = 1 << 20


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


class ArchiveLabelSource(LabelSource):
    """Labels and side tensors of an imported archive, streamed in label order."""

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
        codec = reader.codec
        lossless = bool(self.interop.get("lossless"))
        self._sparse = lossless and isinstance(codec, TopKCodec)
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
            assert isinstance(codec, TopKCodec)
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

    def side(self, name: str, start: int, stop: int) -> torch.Tensor:
        key = SIDE_PREFIX + name
        entry = self._entry(name)
        if key not in self._verified:
            self._verify(key, entry.start, entry.end)
            self._verified.add(key)
        dtype = dtype_from_code(entry.dtype)
        shape = entry.shape
        row_bytes = torch.empty((), dtype=dtype).element_size()
        for size in shape[1:]:
            row_bytes *= size
        if not 0 <= start <= stop <= shape[0]:
            raise ArchiveFormatError(
                f"side tensor {name!r} has {shape[0]} rows; rows {start}:{stop} "
                "were asked for"
            )
        base = self.reader.container.data_start + entry.start
        with open(self.reader.path, "rb") as handle:
            handle.seek(base + start * row_bytes)
            data = bytearray(handle.read((stop - start) * row_bytes))
        if not data:
            return torch.empty((stop - start, *shape[1:]), dtype=dtype)
        flat = torch.frombuffer(data, dtype=torch.uint8).view(dtype)
        return flat.reshape(stop - start, *shape[1:])

    def _verify(self, key: str, begin: int, end: int) -> None:
        digest = hashlib.sha256(key.encode("utf-8") + b"\x00")
        if self.reader.header.format_version == 1:
            digest = hashlib.sha256()
        base = self.reader.container.data_start
        with open(self.reader.path, "rb") as handle:
            handle.seek(base + begin)
            left = end - begin
            while left:
                piece = handle.read(min(left, _HASH_BYTES))
                if not piece:
                    break
                digest.update(piece)
                left -= len(piece)
        if digest.hexdigest() != self.reader.checksums.get(key):
            raise ChecksumError(
                f"archive {str(self.reader.path)!r} is corrupted: tensor {key!r} does "
                "not match its checksum; re-create or re-download the file"
            )


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
