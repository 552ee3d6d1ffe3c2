"""``labelzip import`` split across torchrun ranks: one archive, the single-process bytes.

The same path runs one process with ``--resume`` (a world of one): its chunks
go to a partial file, so a killed import continues from its last complete chunk.

A :class:`~labelzip.pipelines.chunked.ChunkJob` over an opened label store:

- rank 0 fits the codec exactly as the single-process import does (pass 1,
  its seeded reservoir; ``--codec auto`` chooses there), or takes the
  lossless codec, and sends it to the other ranks;
- each rank encodes its contiguous range of the archive's chunks
  (:func:`~labelzip.interop.label_range.encode_label_range`): it reads the
  records up to the end of its range and encodes only the labels of its
  chunks; rank 0 also reads every record's side information (augmentation
  parameters, file rows, blobs) into the archive writer;
- rank 0 links every rank's chunks, in order, into that writer.

Reading is not split (a rank reads the files before and in its range), the
encoding is: the speed-up is that of a re-encoding codec (``vqae``, ``topk``
with rate control, ...); a lossless import mostly copies and gains little.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from labelzip.accounting import StorageAccount
from labelzip.archive import ArchiveMetadata, ArchiveWriter
from labelzip.codecs.base import Codec
from labelzip.distributed import Ranks
from labelzip.interop.convert import ImportPlan, import_codec
from labelzip.interop.label_range import encode_label_range
from labelzip.pipelines.chunked import (
    ChunkSink,
    OnChunk,
    Report,
    json_digest,
    run_chunked,
)

__all__ = ["import_chunked", "store_fingerprint"]


def store_fingerprint(path: Path, plan: ImportPlan) -> str:
    """sha256 of what the scan of a store found and of its files' names and sizes:
    equal on every machine that holds the same store (paths may differ)."""
    store = plan.store
    files = []
    if path.is_dir():
        for root, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                full = Path(root) / name
                files.append((full.relative_to(path).as_posix(), full.stat().st_size))
    else:
        files.append((path.name, path.stat().st_size))
    return json_digest(
        {
            "describe": store.describe(),
            "kind": store.kind,
            "dtype": str(store.value_dtype),
            "classes": store.num_classes,
            "labels": store.num_labels,
            "layout": store.layout.to_dict(),
            "files": files,
        }
    )


def _settings_digest(plan: ImportPlan, chunk_size: int, reference: str) -> str:
    choice = plan.choice
    auto = choice.auto.model_dump(mode="json") if choice.auto is not None else None
    return json_digest(
        {
            "choice": dataclasses.asdict(dataclasses.replace(choice, auto=None)),
            "auto": auto,
            "chunk_size": chunk_size,
            "reference": reference,
            "metadata": dataclasses.asdict(plan.metadata),
        }
    )


class _ImportJob:
    """A label store into an archive (the :class:`ChunkJob` of ``import``)."""

    def __init__(
        self,
        out: Path,
        source: Path,
        plan: ImportPlan,
        chunk_size: int,
        reference: str,
        ranks: Ranks,
    ) -> None:
        self.out, self.plan, self.ranks = out, plan, ranks
        self.chunk_size, self.reference = chunk_size, reference
        self.num_stored = plan.store.num_labels
        self.fingerprint = store_fingerprint(source, plan)
        self.settings_digest = _settings_digest(plan, chunk_size, reference)
        self.metadata: ArchiveMetadata = plan.metadata  # + the auto record, on rank 0
        self._writer: ArchiveWriter | None = None

    def fit(self) -> Codec:
        codec, self.metadata = import_codec(self.plan, self.chunk_size, self.reference)
        return codec

    def encode(self, codec: Codec, chunks: range, sink: ChunkSink) -> None:
        if self.ranks.is_main:  # the writer of the archive gathers the side rows
            self._writer = ArchiveWriter(
                self.out,
                codec,
                layout=self.plan.store.layout,
                chunk_size=self.chunk_size,
                metadata=self.metadata,
                reference=self.reference,
            )
        encode_label_range(
            self.plan.store,
            codec,
            lossless=self.plan.lossless,
            chunk_size=self.chunk_size,
            chunks=chunks,
            sink=sink,
            side=self._writer,
        )

    def writer(self, codec: Codec) -> ArchiveWriter:
        assert self._writer is not None, "rank 0 encodes before it merges"
        return self._writer

    def release(self) -> None:
        if self._writer is not None:
            self._writer.abort()  # after close() this drops nothing
            self._writer = None


def import_chunked(
    out: Path,
    source: str | os.PathLike[str],
    plan: ImportPlan,
    *,
    chunk_size: int,
    reference: str = "fp16",
    ranks: Ranks | None = None,
    resume: bool = False,
    on_chunk: OnChunk | None = None,
    report: Report | None = None,
) -> StorageAccount | None:
    """Import the opened store ``plan`` into ``out`` with every rank's help.

    Args:
        out: the archive to write (checked by the caller).
        source: the store's path (named in the input fingerprint every rank checks).
        plan: from :func:`~labelzip.interop.convert.open_import` (on every rank).
        ranks, resume, on_chunk, report: as for
            :func:`~labelzip.pipelines.chunked.run_chunked`.

    Returns:
        On rank 0 the archive's storage account (side bytes included); None on
        the other ranks.
    """
    ranks = ranks or Ranks()
    job = _ImportJob(out, Path(source), plan, chunk_size, reference, ranks)
    _, account = run_chunked(
        job, ranks=ranks, resume=resume, on_chunk=on_chunk, report=report
    )
    return account
