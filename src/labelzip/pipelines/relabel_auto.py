"""``codec="auto"`` for relabel outputs: the codec and view budget chosen by measurement.

The candidates of :mod:`labelzip.selection.auto` are measured on the teacher's
labels of a seeded sample of images (every view of each), before the relabel
run proper: the teacher labels that sample once more (for a 10-class set of
up to ~800k views, every view). Relabelled views carry a view context (the
replayed recipe), so the view-context codecs (``vqae-ctx``, ``ctx-transform``)
are candidates too. They fit one prototype per image, so the held-out part is
a share of each sampled image's views (:func:`~labelzip.selection.sample.split_views`)
rather than whole images, for every candidate alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from labelzip.archive import ArchiveMetadata, Layout
from labelzip.codecs.base import LabelContext
from labelzip.errors import ConfigError
from labelzip.pipelines.relabel_types import (
    RelabelConfig,
    RelabelOutput,
    recipe_context,
)
from labelzip.selection.auto import (
    AUTO,
    AutoChoice,
    AutoConfig,
    Target,
    choose_codec,
    run_options,
    with_auto_record,
)
from labelzip.selection.sample import draw_groups, split_views

__all__ = ["LabelFn", "choose_relabel_codec", "resolve_auto_outputs"]

LabelFn = Callable[[torch.Tensor], torch.Tensor]
"""Teacher logits (N, C) float32 of sorted flat view indices (N,)."""


def resolve_auto_outputs(
    outputs: Sequence[RelabelOutput],
    label: LabelFn,
    layout: Layout,
    num_classes: int,
    metadata: ArchiveMetadata,
    config: RelabelConfig,
) -> list[tuple[RelabelOutput, ArchiveMetadata, AutoChoice | None]]:
    """Every output with its metadata; ``auto`` ones resolved by
    :func:`choose_relabel_codec` (outputs with the same sample label it once)."""
    memo: list[tuple[torch.Tensor, torch.Tensor]] = []

    def once(flat: torch.Tensor) -> torch.Tensor:
        if not (memo and torch.equal(memo[0][0], flat)):
            memo[:] = [(flat, label(flat))]
        return memo[0][1]

    resolved: list[tuple[RelabelOutput, ArchiveMetadata, AutoChoice | None]] = []
    for out in outputs:
        if out.codec != AUTO:
            resolved.append((out, metadata, None))
            continue
        resolved.append(
            choose_relabel_codec(out, once, layout, num_classes, metadata, config)
        )
    return resolved


def choose_relabel_codec(
    out: RelabelOutput,
    label: LabelFn,
    layout: Layout,
    num_classes: int,
    metadata: ArchiveMetadata,
    config: RelabelConfig,
) -> tuple[RelabelOutput, ArchiveMetadata, AutoChoice]:
    """Measure the candidates for ``out`` (codec ``auto``) and resolve it.

    Returns the output with the winner's codec, options and view budget (a
    ``keep_fraction`` the user set is the only budget tried), the metadata
    with the choice recorded, and the choice.

    Raises:
        ConfigError: explicit augmentation records requested (their side bytes
            scale with the stored views, which auto does not charge).
        UnreachableTargetError: no candidate reaches the target.
    """
    if out.codec != AUTO:
        raise ConfigError(
            f"choose_relabel_codec resolves codec 'auto', not {out.codec}"
        )
    if config.store_augmentations:
        raise ConfigError(
            "codec auto does not measure archives with explicit augmentation "
            "records (--store-augmentations); name a codec"
        )
    auto = out.auto or AutoConfig(seed=out.prune_seed)
    if out.keep_fraction is not None:
        auto = auto.model_copy(
            update={"keep_fractions": (out.keep_fraction,), "search_views": False}
        )
    flat = torch.from_numpy(
        draw_groups(
            layout.dims,
            layout.shape,
            max_labels=auto.max_sample_labels(num_classes),
            seed=auto.seed,
        )
    )
    wanted = flat.reshape(-1).sort().values
    rows = label(wanted)[torch.searchsorted(wanted, flat.reshape(-1))]
    sample = split_views(
        rows.reshape(*flat.shape, num_classes), flat, auto.held_fraction, auto.seed
    )

    def context(index: torch.Tensor) -> LabelContext:
        return recipe_context(
            metadata.user, layout.dims, layout.shape, index, error=ConfigError
        )

    goal = out.goal
    assert goal is not None  # RelabelOutput: codec 'auto' needs a target
    target = Target(
        goal,
        layout,
        num_classes,
        chunk_size=config.chunk_size,
        metadata=metadata,
        family="vision",
        context=context,
        num_images=int(layout.shape[1]),
    )
    choice = choose_codec(sample, target, auto)
    win = choice.winner
    keep = out.keep_fraction
    if keep is None and win.keep_fraction < 1.0:
        keep = win.keep_fraction
    resolved = out.model_copy(
        update={
            "codec": win.codec,
            "options": run_options(win.codec, win.options, auto),
            "keep_fraction": keep,
            "auto": None,
        }
    )
    return resolved, with_auto_record(metadata, choice), choice
