"""A seeded sample of whole label groups, split into a fit part and a held-out part.

Codec selection (:mod:`labelzip.selection.auto`) fits small candidates on one
part of a sample and measures them on the other. When the layout has a ``view``
or ``epoch`` dimension a *group* is one sample's views (the unit LPLD pruning
reuses labels within, see :mod:`labelzip.codecs.prune`), and groups are drawn
whole, so a held-out sample keeps all its views and a pruned view can be
charged for the label of the kept view that stands in for it. Without such a
dimension a group is one label.

The layout is known before the stream is read, so the groups are drawn
directly (a seeded uniform subset of the group numbers) and one pass over the
stream gathers their rows: the same uniform sample a reservoir would keep,
without holding more than the sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from labelzip.codecs.base import LogitSource, check_logits, iterate_source
from labelzip.codecs.prune import REUSE_DIMS
from labelzip.errors import ConfigError, InputError

__all__ = ["GroupShape", "LabelSample", "draw_groups", "draw_sample", "split_views"]


@dataclass(frozen=True)
class GroupShape:
    """How a layout's labels fall into groups (one sample's views).

    Attributes:
        outer: product of the dims before the reuse dim.
        views: size of the reuse dim (1 when the layout has none).
        inner: product of the dims after the reuse dim.
        has_views: whether the layout has a ``view``/``epoch`` dim.
    """

    outer: int
    views: int
    inner: int
    has_views: bool

    @classmethod
    def of(cls, dims: tuple[str, ...], shape: tuple[int, ...]) -> GroupShape:
        found = [i for i, d in enumerate(dims) if d in REUSE_DIMS]
        if len(found) != 1:
            return cls(math.prod(shape), 1, 1, False)
        axis = found[0]
        return cls(
            math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]), True
        )

    @property
    def num_groups(self) -> int:
        return self.outer * self.inner

    def flat_indices(self, groups: np.ndarray) -> np.ndarray:
        """(G, V) flat label indices of every view of each group in ``groups``."""
        outer, inner = np.divmod(groups.astype(np.int64), self.inner)
        views = np.arange(self.views, dtype=np.int64)
        return (outer[:, None] * self.views + views[None, :]) * self.inner + inner[
            :, None
        ]


@dataclass(frozen=True)
class LabelSample:
    """Rows of whole groups: a fit part and a held-out part.

    Attributes:
        fit_rows, fit_flat: (Gf, V, C) teacher logits and (Gf, V) flat indices.
        held_rows, held_flat: the same for the held-out groups.
        held_views: None when every view of a held-out group is scored (the
            group split); else (Gh, V) bool, True at the views scored, each
            group scoring as many (the view split of :func:`split_views`:
            fit and held-out parts are the same groups, and the fit uses only
            labels whose decoding is never scored).
    """

    fit_rows: torch.Tensor
    fit_flat: torch.Tensor
    held_rows: torch.Tensor
    held_flat: torch.Tensor
    held_views: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return int(self.fit_rows.shape[-1])

    @property
    def held_labels(self) -> int:
        """Labels scored."""
        if self.held_views is not None:
            return int(self.held_views.sum())
        return int(self.held_rows.shape[0] * self.held_rows.shape[1])

    @property
    def fit_labels(self) -> int:
        """Labels of the fit part (before a candidate's pruning)."""
        size = int(self.fit_rows.shape[0] * self.fit_rows.shape[1])
        return size - self.held_labels if self.held_views is not None else size

    @classmethod
    def from_rows(
        cls, rows: torch.Tensor, held_fraction: float, seed: int
    ) -> LabelSample:
        """A sample of single labels (no views) already drawn, e.g. by a reservoir.

        Flat indices are the row numbers; without views they are used only to
        pair rows, never to look up a prune plan.
        """
        check_logits(rows)
        flat = torch.arange(rows.shape[0], dtype=torch.int64)
        return _split(rows.unsqueeze(1), flat.unsqueeze(1), held_fraction, seed)


def _choose_groups(num_groups: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct group numbers in [0, num_groups), seeded, increasing."""
    gen = torch.Generator().manual_seed(seed)
    if 4 * count >= num_groups:
        chosen = torch.randperm(num_groups, generator=gen)[:count]
        return np.sort(chosen.numpy())
    picked: dict[int, None] = {}
    while len(picked) < count:  # rejection: count << num_groups, few rounds
        draw = torch.randint(num_groups, (2 * (count - len(picked)),), generator=gen)
        for g in draw.tolist():
            picked.setdefault(int(g))
            if len(picked) == count:
                break
    return np.sort(np.fromiter(picked, dtype=np.int64, count=count))


def _split(
    rows: torch.Tensor, flat: torch.Tensor, held_fraction: float, seed: int
) -> LabelSample:
    """Split (G, V, C) groups into fit and held-out parts by a seeded shuffle."""
    num = rows.shape[0]
    if num < 2:
        raise InputError(
            "codec selection needs at least 2 samples (one to fit, one to hold out); "
            f"the input has {num}"
        )
    held = min(num - 1, max(1, round(held_fraction * num)))
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed + 1))
    held_idx, fit_idx = order[:held].sort().values, order[held:].sort().values
    return LabelSample(rows[fit_idx], flat[fit_idx], rows[held_idx], flat[held_idx])


def split_views(
    rows: torch.Tensor, flat: torch.Tensor, held_fraction: float, seed: int
) -> LabelSample:
    """The view split of (G, V, C) groups: in every group a seeded
    ``held_fraction`` of its views (at least one, at most V - 1) is scored.

    For codecs with per-sample parameters (the view-context codecs store one
    prototype per image, fitted on that image's labels), a held-out sample
    would have none fitted; scoring held-out *views* of fitted samples measures
    what the archive does (every view of a sample is decoded with its
    prototype). Every candidate is measured on the same split.
    """
    check_logits(rows.reshape(-1, rows.shape[-1]))
    groups, views = rows.shape[0], rows.shape[1]
    if groups < 1 or views < 2:
        raise InputError(
            "codec selection by views needs samples of at least 2 views; "
            f"got {groups} samples of {views}"
        )
    held = min(views - 1, max(1, round(held_fraction * views)))
    gen = torch.Generator().manual_seed(seed + 1)
    order = torch.rand(groups, views, generator=gen).argsort(dim=1)
    mask = torch.zeros(groups, views, dtype=torch.bool)
    mask.scatter_(1, order[:, :held], True)
    return LabelSample(rows, flat, rows, flat, mask)


def draw_groups(
    dims: tuple[str, ...], shape: tuple[int, ...], *, max_labels: int, seed: int
) -> np.ndarray:
    """(G, V) flat label indices of a seeded sample of whole groups.

    At most ``max_labels`` labels (at least 2 groups), groups in increasing order.
    """
    groups = GroupShape.of(dims, shape)
    count = min(groups.num_groups, max(2, max_labels // groups.views))
    return groups.flat_indices(_choose_groups(groups.num_groups, count, seed))


def draw_sample(
    source: LogitSource,
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    *,
    max_labels: int,
    held_fraction: float,
    seed: int,
) -> LabelSample:
    """Gather a seeded sample of whole groups from one pass over ``source``.

    Args:
        source: (B, C) batches of every label in flat layout order.
        dims, shape: the layout of the labels.
        max_labels: most labels gathered (whole groups: at least 2 groups).
        held_fraction: share of the groups held out.
        seed: seed of the draw and of the split.

    Raises:
        InputError: the source holds a different number of labels than the
            layout, or fewer than 2 groups.
    """
    if not 0.0 < held_fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in (0, 1), got {held_fraction}")
    groups = GroupShape.of(dims, shape)
    chosen = draw_groups(dims, shape, max_labels=max_labels, seed=seed)
    count = chosen.shape[0]
    wanted = np.sort(chosen.reshape(-1))
    parts: list[torch.Tensor] = []
    seen = 0
    for batch in _batches(source):
        lo, hi = np.searchsorted(wanted, [seen, seen + batch.shape[0]])
        if hi > lo:
            parts.append(batch[torch.from_numpy(wanted[lo:hi] - seen)].float())
        seen += batch.shape[0]
    if seen != groups.num_groups * groups.views:
        raise InputError(
            f"the labels hold {seen} rows but the layout {list(shape)} needs "
            f"{groups.num_groups * groups.views}"
        )
    rows = torch.cat(parts)  # in increasing flat order: position of each in wanted
    where = torch.from_numpy(np.searchsorted(wanted, chosen.reshape(-1)))
    grouped = rows[where].reshape(count, groups.views, -1)
    return _split(grouped, torch.from_numpy(chosen), held_fraction, seed)


def _batches(source: LogitSource) -> Iterator[torch.Tensor]:
    for batch in iterate_source(source):
        yield check_logits(batch)
