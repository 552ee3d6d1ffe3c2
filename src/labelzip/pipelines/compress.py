"""Compress a logits input into an archive, streaming: fit pass, then encode pass.

The input is a :class:`~labelzip.logit_store.LogitStore` (a file or a
directory of shards, read in row ranges), so memory holds one batch of labels
plus what the codec keeps for its fit (a bounded reservoir sample for the
codecs that learn) and the writer's chunk. Two passes read the input:

1. fit: the stored labels (the kept ones, with pruning) stream into
   :func:`labelzip.rate.fit_codec` as a re-iterable
   source of 4096-label batches;
2. encode: every label streams into an :class:`~labelzip.archive.ArchiveWriter`,
   which drops pruned labels, cuts chunks and writes the archive atomically.

Batches are the same 4096 stored labels whatever the input's shards, so the
archive's bytes depend only on the labels, the settings and the seed.

``labelzip compress`` runs pass 2 through
:func:`labelzip.pipelines.compress_run.compress_chunked` instead (resumable, and
split across torchrun ranks); it writes the same bytes as :func:`write_archive`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labelzip import rate
from labelzip.accounting import StorageAccount
from labelzip.archive import (
    DEFAULT_CHUNK_SIZE,
    ArchiveMetadata,
    ArchiveWriter,
    Layout,
)
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.errors import ConfigError, InputError
from labelzip.logit_store import LogitStore
from labelzip.rate import ArchiveTarget, RateGoal
from labelzip.selection.auto import (
    AUTO,
    AutoChoice,
    AutoConfig,
    Target,
    choose_codec,
)
from labelzip.selection.sample import draw_sample

__all__ = [
    "AUTO",
    "FIT_BATCH",
    "CompressSettings",
    "auto_prune_keep",
    "choose_auto",
    "fit_codec",
    "label_layout",
    "prune_plan",
    "stored_batches",
    "write_archive",
]

# Stored labels per batch handed to fit(); fixed so the fit sees the same
# batches whatever the input's sharding.
FIT_BATCH = 4096

Advance = Callable[[int], None]


def _ignore(count: int) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class CompressSettings:
    """What ``compress`` does with its input, as validated values.

    Attributes:
        codec: registry name of the codec.
        options: codec options (typed by the codec's config on creation).
        goal: the all-in rate target, or None for a fixed configuration.
        chunk_size: stored labels per archive chunk.
        prune_keep: LPLD pruning fraction of each sample's views, or None.
        seed: seed of pruning (the codec's own seed is in ``options``).
        dims: names of the label dims, or None for the defaults.
        reference: dense reference the archive's ratio is stated against
            (the goal's own, when there is a goal).
    """

    codec: str
    options: dict[str, Any] = field(default_factory=dict)
    goal: RateGoal | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prune_keep: float | None = None
    seed: int = 0
    dims: tuple[str, ...] | None = None
    reference: str = "fp16"

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        if self.goal is not None and self.goal.reference != self.reference:
            raise ConfigError(
                f"the target's reference {self.goal.reference} differs from the "
                f"archive's {self.reference}"
            )


def label_layout(store: LogitStore, dims: tuple[str, ...] | None) -> Layout:
    """The archive layout of the store's label dims (``--dims`` names them)."""
    label_shape = store.shape[:-1]
    if dims is not None and len(dims) != len(label_shape):
        raise InputError(
            f"--dims names {len(dims)} dims but the logits have shape "
            f"{tuple(store.shape)} ({len(label_shape)} label dims + classes)"
        )
    return Layout.for_shape(label_shape, list(dims) if dims is not None else None)


def auto_prune_keep(
    settings: CompressSettings,
    layout: Layout,
    num_classes: int,
    metadata: ArchiveMetadata,
) -> float | None:
    """``--auto-prune``: the largest fraction of each sample's views whose labels
    the codec of ``settings`` stores within its target (relabel's rule, the same
    :func:`labelzip.rate.auto_prune_plan`); None when every view fits.

    Raises:
        ConfigError: no target, or the layout has no ``epoch``/``view`` dim.
        UnreachableTargetError: not even one view per sample fits.
    """
    target = ArchiveTarget.of(
        settings.goal, layout, num_classes, settings.chunk_size, metadata=metadata
    )
    if target is None:
        raise ConfigError(
            "--auto-prune keeps the most views that meet a target: give --ratio or "
            "--bits-per-label"
        )
    plan = rate.auto_prune_plan(
        settings.codec, target, seed=settings.seed, options=settings.options
    )
    return None if plan is None else plan.keep_fraction


def prune_plan(layout: Layout, settings: CompressSettings) -> PrunePlan | None:
    """The LPLD prune plan of ``settings``, or None without pruning."""
    if settings.prune_keep is None:
        return None
    return PrunePlan(layout.dims, layout.shape, settings.prune_keep, settings.seed)


def stored_batches(
    store: LogitStore,
    plan: PrunePlan | None,
    size: int = FIT_BATCH,
    advance: Advance = _ignore,
) -> Iterator[torch.Tensor]:
    """The labels the archive stores (kept ones with pruning), as (size, C) batches.

    Reads the input in order once; with pruning, kept rows of consecutive reads
    are regrouped so every batch but the last holds exactly ``size`` labels.
    ``advance`` is called with the number of input labels read.
    """
    if plan is None:
        for batch in store.batches(size):
            advance(batch.shape[0])
            yield batch
        return
    pending: list[torch.Tensor] = []
    held = 0
    for start in range(0, store.num_labels, size):
        stop = min(start + size, store.num_labels)
        rows = store.read(start, stop)[plan.kept_range(start, stop)]
        advance(stop - start)
        pending.append(rows)
        held += rows.shape[0]
        while held >= size:
            joined = torch.cat(pending)
            yield joined[:size]
            pending, held = [joined[size:]], held - size
    if held:
        yield torch.cat(pending)


def choose_auto(
    store: LogitStore,
    settings: CompressSettings,
    layout: Layout,
    metadata: ArchiveMetadata,
    config: AutoConfig,
) -> AutoChoice:
    """``--codec auto``: measure the candidates on a sample of ``store`` (one pass).

    A ``prune_keep`` the user set is the only view budget tried. The caller
    fits the winner normally: ``dataclasses.replace(settings, codec=...,
    prune_keep=...)`` and the metadata of
    :func:`~labelzip.selection.auto.with_auto_record`.
    """
    if settings.goal is None:
        raise ConfigError(
            "--codec auto chooses for a target: give --ratio or --bits-per-label"
        )
    if settings.prune_keep is not None:
        config = config.model_copy(
            update={"keep_fractions": (settings.prune_keep,), "search_views": False}
        )
    sample = draw_sample(
        lambda: store.batches(FIT_BATCH),
        layout.dims,
        layout.shape,
        max_labels=config.max_sample_labels(store.num_classes),
        held_fraction=config.held_fraction,
        seed=config.seed,
    )
    target = Target(
        settings.goal,
        layout,
        store.num_classes,
        chunk_size=settings.chunk_size,
        metadata=metadata,
    )
    return choose_codec(sample, target, config)


def fit_codec(
    store: LogitStore,
    settings: CompressSettings,
    layout: Layout,
    plan: PrunePlan | None,
    metadata: ArchiveMetadata,
    advance: Advance = _ignore,
) -> Codec:
    """Fit the codec of ``settings`` on the stored labels (pass 1 over the input).

    Fixed configuration: ``create_codec(...).fit``; with a target: rate control
    (:func:`labelzip.rate.fit_codec`) picks the configuration first.
    Codecs read the source as often as they need (each pass re-reads the input).
    """
    num_stored = plan.num_kept if plan is not None else layout.num_labels

    def source() -> Iterator[torch.Tensor]:
        return stored_batches(store, plan, FIT_BATCH, advance)

    target = ArchiveTarget.of(
        settings.goal,
        layout,
        store.num_classes,
        settings.chunk_size,
        prune=plan,
        metadata=metadata,
    )
    return rate.fit_codec(
        settings.codec, source, settings.options, num_labels=num_stored, target=target
    )


def write_archive(
    out: Path,
    store: LogitStore,
    codec: Codec,
    settings: CompressSettings,
    layout: Layout,
    plan: PrunePlan | None,
    metadata: ArchiveMetadata,
    advance: Advance = _ignore,
) -> StorageAccount:
    """Encode every label of ``store`` into the archive ``out`` (pass 2)."""
    with ArchiveWriter(
        out,
        codec,
        layout=layout,
        chunk_size=settings.chunk_size,
        prune=plan,
        metadata=metadata,
        reference=settings.reference,
    ) as writer:
        for batch in store.batches(FIT_BATCH):
            writer.write(batch)
            advance(batch.shape[0])
    assert writer.account is not None
    return writer.account
