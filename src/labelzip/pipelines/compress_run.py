"""The encode pass of ``compress`` in chunks: resumable, and split across torchrun ranks.

A :class:`~labelzip.pipelines.chunked.ChunkJob` over a
:class:`~labelzip.logit_store.LogitStore`: rank 0 fits the codec (pass 1,
exactly as a single process: same reservoir, same seed), each rank encodes its
range of the archive's chunks (``chunk_size`` stored labels each; with
pruning, the kept labels) with :class:`~labelzip.archive.chunks.ChunkEncoder`,
and rank 0 joins them into one archive, byte-identical to a single-process
run. :mod:`labelzip.pipelines.chunked` holds the steps every rank runs,
partial files and ``--resume`` included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from labelzip.accounting import StorageAccount
from labelzip.archive import ArchiveMetadata, ArchiveWriter, Layout
from labelzip.archive.chunks import ChunkEncoder
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.distributed import Ranks
from labelzip.logit_store import LogitStore
from labelzip.pipelines.chunked import (
    ChunkSink,
    OnChunk,
    Report,
    codec_digest,
    json_digest,
    rank_chunks,
    run_chunked,
    sigterm_as_interrupt,
)
from labelzip.pipelines.compress import CompressSettings

__all__ = [
    "chunk_rows",
    "codec_digest",
    "compress_chunked",
    "rank_chunks",
    "run_digest",
    "sigterm_as_interrupt",
]

Fit = Callable[[], Codec]


def run_digest(
    store: LogitStore,
    settings: CompressSettings,
    layout: Layout,
    metadata: ArchiveMetadata,
) -> str:
    """sha256 of everything besides the input values that decides the archive's bytes."""
    return json_digest(
        {
            "settings": dataclasses.asdict(settings),
            "layout": layout.to_dict(),
            "metadata": dataclasses.asdict(metadata),
            "classes": store.num_classes,
            "dtype": str(store.dtype),
        }
    )


def chunk_rows(
    store: LogitStore,
    plan: PrunePlan | None,
    chunk_size: int,
    num_stored: int,
    index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk ``index``'s stored labels: their (n, C) rows and (n,) flat indices.

    Stored labels are all labels, or with pruning the kept ones in increasing
    flat order; chunk ``i`` holds stored labels ``[i * chunk_size, ...)``. With
    pruning the input rows between the chunk's first and last kept label are
    read and the kept ones selected.
    """
    lo, hi = index * chunk_size, min((index + 1) * chunk_size, num_stored)
    if plan is None:
        return store.read(lo, hi), torch.arange(lo, hi, dtype=torch.int64)
    flat = plan.kept_flat(torch.arange(lo, hi, dtype=torch.int64))
    first = int(flat[0])
    rows = store.read(first, int(flat[-1]) + 1)
    return rows[flat - first], flat


class _CompressJob:
    """A logits file into an archive (the :class:`ChunkJob` of ``compress``)."""

    def __init__(
        self,
        out: Path,
        store: LogitStore,
        settings: CompressSettings,
        layout: Layout,
        plan: PrunePlan | None,
        metadata: ArchiveMetadata,
        fit: Fit,
    ) -> None:
        self.out, self.store, self.settings = out, store, settings
        self.layout, self.plan, self.metadata, self._fit = layout, plan, metadata, fit
        self.chunk_size = settings.chunk_size
        self.num_stored = plan.num_kept if plan is not None else layout.num_labels
        self.fingerprint = store.fingerprint()
        self.settings_digest = run_digest(store, settings, layout, metadata)

    def fit(self) -> Codec:
        return self._fit()

    def encode(self, codec: Codec, chunks: range, sink: ChunkSink) -> None:
        encoder = ChunkEncoder(codec, layout=self.layout, metadata=self.metadata)
        for index in chunks:
            rows, flat = chunk_rows(
                self.store, self.plan, self.chunk_size, self.num_stored, index
            )
            sink(encoder.encode(rows, flat))

    def writer(self, codec: Codec) -> ArchiveWriter:
        return ArchiveWriter(
            self.out,
            codec,
            layout=self.layout,
            chunk_size=self.chunk_size,
            prune=self.plan,
            metadata=self.metadata,
            reference=self.settings.reference,
        )

    def release(self) -> None:
        """Nothing to drop: the caller owns the store."""


def compress_chunked(
    out: Path,
    store: LogitStore,
    settings: CompressSettings,
    layout: Layout,
    plan: PrunePlan | None,
    metadata: ArchiveMetadata,
    *,
    fit: Fit,
    ranks: Ranks | None = None,
    resume: bool = False,
    on_chunk: OnChunk | None = None,
    report: Report | None = None,
) -> tuple[Codec, StorageAccount | None]:
    """Fit (rank 0) and encode ``store`` into the archive ``out``, chunk by chunk.

    Args:
        out: the archive to write (checked by the caller).
        store, settings, layout, plan, metadata: as for
            :func:`~labelzip.pipelines.compress.write_archive`.
        fit: fits the codec (called on rank 0 only).
        ranks, resume, on_chunk, report: as for
            :func:`~labelzip.pipelines.chunked.run_chunked`.

    Returns:
        The codec and, on rank 0, the archive's storage account (None on the
        other ranks).
    """
    job = _CompressJob(out, store, settings, layout, plan, metadata, fit)
    return run_chunked(
        job, ranks=ranks, resume=resume, on_chunk=on_chunk, report=report
    )
