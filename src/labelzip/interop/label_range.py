"""A label store's records as archive rows: all of them, or one range of chunks.

The single-process import (:func:`labelzip.interop.convert.import_store`)
feeds every record to an :class:`~labelzip.archive.ArchiveWriter`; a torchrun
rank encodes only its range of the archive's chunks
(:func:`encode_label_range`). Both take a record's labels the same way
(:func:`record_rows`, :class:`TopkBlocks`), so a rank's chunks are the bytes
the single process writes for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from labelzip.archive.chunks import ChunkCutter, ChunkEncoder, EncodedChunk
from labelzip.archive.writer import ArchiveWriter
from labelzip.codecs.base import Codec, EncodedBlock, check_logits
from labelzip.errors import InputError
from labelzip.interop.base import ImportedStore, SparseCodec, StoreRecord

__all__ = [
    "TopkBlocks",
    "encode_label_range",
    "named",
    "record_rows",
    "record_side",
    "sparse_import",
]


def sparse_import(codec: Codec, store: ImportedStore, lossless: bool) -> bool:
    """Whether the records' (values, ids) go to the codec as they are (a lossless
    import of a top-k store)."""
    return isinstance(codec, SparseCodec) and store.kind == "topk" and lossless


def record_rows(
    store: ImportedStore, record: StoreRecord, lossless: bool
) -> torch.Tensor:
    """A record's (B, C) label rows: as stored (lossless dense), else the
    format's dense logits."""
    if record.dense is not None and lossless:
        return record.dense
    return store.to_dense(record)


def record_side(record: StoreRecord) -> Iterator[tuple[str, torch.Tensor]]:
    """A record's side rows in the order they are appended: per-label (checked
    against the record's labels), per-file, verbatim blobs."""
    for name, rows in record.side.items():
        if rows.dim() < 1 or rows.shape[0] != record.rows:
            raise InputError(
                f"{record.source}: {name} has {rows.shape[0] if rows.dim() else 0} "
                f"rows but the file holds {record.rows} labels"
            )
        yield name, rows
    yield from record.file_side.items()
    yield from record.blobs.items()


def named(record: StoreRecord, exc: InputError) -> InputError:
    """``exc`` with the record's file named (unless it already is)."""
    if record.source in str(exc):
        return exc
    return InputError(f"{record.source}: {exc}")


class TopkBlocks:
    """Re-cut (values, ids) pairs into full chunks for a codec's ``encode_topk``."""

    def __init__(self, codec: Codec, chunk_size: int) -> None:
        assert isinstance(codec, SparseCodec)
        self.codec = codec
        self.size = chunk_size
        self.values: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.held = 0

    def add(self, values: torch.Tensor, ids: torch.Tensor) -> Iterator[EncodedBlock]:
        self.values.append(values)
        self.ids.append(ids)
        self.held += int(values.shape[0])
        while self.held >= self.size:
            v, i = torch.cat(self.values), torch.cat(self.ids)
            yield self.codec.encode_topk(v[: self.size], i[: self.size])
            self.values, self.ids = [v[self.size :]], [i[self.size :]]
            self.held -= self.size

    def finish(self) -> Iterator[EncodedBlock]:
        if self.held:
            yield self.codec.encode_topk(torch.cat(self.values), torch.cat(self.ids))


def encode_label_range(
    store: ImportedStore,
    codec: Codec,
    *,
    lossless: bool,
    chunk_size: int,
    chunks: range,
    sink: Callable[[EncodedChunk], None],
    side: ArchiveWriter | None = None,
) -> None:
    """Encode the archive chunks ``chunks`` of ``store`` into ``sink``, in order.

    Every record is read (the formats stream their files in order); only the
    labels of the chunks are encoded. With ``side``, every record's side rows
    are appended to that writer too (rank 0, which writes the archive).

    Raises:
        InputError: a record's labels or side rows are malformed (naming its file).
    """
    lo = chunks.start * chunk_size
    hi = min(chunks.stop * chunk_size, store.num_labels) if chunks else lo
    blocks = (
        TopkBlocks(codec, chunk_size) if sparse_import(codec, store, lossless) else None
    )
    cutter = ChunkCutter(ChunkEncoder(codec), chunk_size, sink)
    start = 0
    for record in store.records():
        count = record.rows
        a, b = max(lo, start) - start, min(hi, start + count) - start
        try:
            if a < b and blocks is not None:
                assert record.topk_values is not None and record.topk_ids is not None
                pairs = record.topk_values[a:b], record.topk_ids[a:b]
                for block in blocks.add(*pairs):
                    sink(EncodedChunk.of_block(block))
            elif a < b:
                rows = record_rows(store, record, lossless)
                rows = check_logits(rows.reshape(-1, rows.shape[-1]), codec.num_classes)
                cutter.add(rows[a:b])
            if side is not None:
                for name, rows in record_side(record):
                    side.append_side(name, rows)
        except InputError as exc:
            raise named(record, exc) from exc
        start += count
        if side is None and start >= hi:
            break
    if blocks is not None:
        for block in blocks.finish():
            sink(EncodedChunk.of_block(block))
    cutter.finish()
