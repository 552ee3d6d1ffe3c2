"""LPLD label pruning: store labels for a fraction of the views, reuse them for the rest.

LPLD (Xiao & He, NeurIPS'24, "Are Large-scale Soft Labels Necessary for
Large-scale Dataset Distillation?") keeps the teacher's soft labels for a random
subset of the augmented views and replays the kept ones during student training.
Here a :class:`PrunePlan` decides, for every label of a layout with a ``view``
or ``epoch`` dimension, whether it is kept and which kept label of the *same
sample* a pruned one reuses. The plan is a pure function of (layout,
keep_fraction, seed), so an archive stores only those numbers (about 0 side
bytes) and stores inner-codec blocks for the kept labels only. It composes with
any codec: the codec never sees the pruned labels.

Plan rules (docs/format.md states them as the specification):

- the reuse dimension is the one named ``view`` or ``epoch``; a *group* is all
  labels that share every other coordinate (one sample's views);
- every group keeps ``k = clamp(floor(keep_fraction * V + 1/2), 1, V)`` of its
  V views: those with the k smallest keys ``splitmix64(seed * 0x9E3779B97F4A7C15
  + g * V + v + 1)`` (g = group number, v = view, ties by smaller v);
- the pruned views of a group, in increasing v, reuse the kept views in
  increasing v cyclically (pruned #j reuses kept #(j mod k)), as LPLD replays its
  kept labels in turn;
- stored labels are the kept ones in increasing flat index (the order a
  streaming writer sees them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.errors import ArchiveFormatError, ConfigError, InputError

__all__ = [
    "MAX_GROUP_SIZE",
    "MAX_PLAN_LABELS",
    "REUSE_DIMS",
    "PruneConfig",
    "PrunePlan",
    "keep_per_group",
    "prune_keys",
]

# Layout dimensions along which a sample's labels may stand in for each other.
REUSE_DIMS = ("view", "epoch")
PLAN_METHOD = "lpld"
PLAN_HASH = "splitmix64"

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Keys computed per block of groups, to bound the plan's temporary memory.
_BLOCK_KEYS = 1 << 20
# Largest reuse dimension (views or epochs per sample): a lookup costs O(V).
MAX_GROUP_SIZE = 1 << 20
# Largest layout whose plan holds its kept indices (reuse dim not the last one).
MAX_PLAN_LABELS = 1 << 32


class PruneConfig(BaseModel):
    """User-facing pruning options."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    keep_fraction: float = Field(
        gt=0.0,
        le=1.0,
        description="fraction of each sample's views whose label is kept",
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="seed of the kept subset")


def keep_per_group(keep_fraction: float, group_size: int) -> int:
    """Kept views per sample: ``round(keep_fraction * group_size)`` within [1, V]."""
    return max(1, min(group_size, math.floor(keep_fraction * group_size + 0.5)))


def prune_keys(seed: int, ids: np.ndarray) -> np.ndarray:
    """splitmix64 keys of flat (group, view) ids; a fixed, torch-independent hash."""
    base = (int(seed) * _GOLDEN + 1) & _MASK64
    z = ids.astype(np.uint64) + np.uint64(base)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class PrunePlan:
    """Which labels of a layout are kept, and which kept label each pruned one reuses.

    Args:
        dims, shape: the layout (names and sizes of the label dimensions).
        keep_fraction: fraction of views per sample whose labels are stored.
        seed: seed of the kept subset.

    Raises:
        ConfigError: the layout has no ``view``/``epoch`` dimension (nothing to
            reuse within a sample), has both, or the options are out of range.

    Memory: lookups compute only the groups they touch when the reuse dimension
    is the last one (:attr:`is_lazy`); otherwise the plan holds the sorted flat
    indices of the kept labels (8 bytes per kept label, built in blocks): a
    (E=300, N=50k) relabel layout keeping 25% costs 30 MB against the 30 GB of
    its fp16 logits.
    """

    def __init__(
        self,
        dims: Sequence[str],
        shape: Sequence[int],
        keep_fraction: float,
        seed: int = 0,
    ) -> None:
        try:
            config = PruneConfig(keep_fraction=keep_fraction, seed=seed)
        except Exception as exc:
            raise ConfigError(
                f"invalid prune options keep_fraction={keep_fraction!r}, seed={seed!r}; "
                "keep_fraction must be in (0, 1] and seed a non-negative integer"
            ) from exc
        self.dims = tuple(dims)
        self.shape = tuple(int(s) for s in shape)
        found = [d for d in self.dims if d in REUSE_DIMS]
        if not found:
            raise ConfigError(
                f"pruning reuses a kept view's label for the other views of the same "
                f"sample, but layout {list(self.dims)} has no 'view' or 'epoch' "
                "dimension; give (N, E, C) logits or name a dimension 'view'/'epoch'"
            )
        if len(found) > 1:
            raise ConfigError(
                f"layout {list(self.dims)} has both 'view' and 'epoch'; pruning needs "
                "exactly one dimension to reuse labels along"
            )
        self.config = config
        self.reuse_dim = found[0]
        axis = self.dims.index(self.reuse_dim)
        self._outer = math.prod(self.shape[:axis])
        self.group_size = self.shape[axis]
        self._inner = math.prod(self.shape[axis + 1 :])
        self.keep_per_group = keep_per_group(config.keep_fraction, self.group_size)
        if self.group_size > MAX_GROUP_SIZE:
            raise ConfigError(
                f"pruning along {self.reuse_dim!r} of size {self.group_size} exceeds "
                f"the limit of {MAX_GROUP_SIZE} labels per sample"
            )
        if self._inner > 1 and self.num_labels > MAX_PLAN_LABELS:
            raise ConfigError(
                f"a prune plan over layout {list(self.dims)} {list(self.shape)} would "
                f"index {self.num_labels} labels (limit {MAX_PLAN_LABELS} when "
                f"{self.reuse_dim!r} is not the last dimension)"
            )
        self._kept: np.ndarray | None = None

    # -- sizes -------------------------------------------------------------------------
    @property
    def keep_fraction(self) -> float:
        return self.config.keep_fraction

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def num_groups(self) -> int:
        return self._outer * self._inner

    @property
    def num_labels(self) -> int:
        return self.num_groups * self.group_size

    @property
    def num_kept(self) -> int:
        return self.num_groups * self.keep_per_group

    # -- the plan ----------------------------------------------------------------------
    @property
    def is_lazy(self) -> bool:
        """True when lookups need no table: the reuse dimension is the last one.

        Then every group (sample) is a contiguous run of V labels that keeps
        exactly k, so a label's stored index is ``group * k + (its source's rank
        among the group's kept views)``: O(V) work per requested group. Otherwise
        (e.g. the relabel layout ``[epoch, sample]``) a stored index counts kept
        labels across all groups, and the plan holds the sorted flat indices of
        the kept labels (8 bytes per kept label, built once, in blocks).
        """
        return self._inner == 1

    def _choice(
        self, groups: np.ndarray, *, chosen: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """For groups (G,): their kept views (G, k) increasing, and (unless
        ``chosen`` is False) the view whose label each view uses (G, V). The
        rules of the module docstring."""
        v_size, k = self.group_size, self.keep_per_group
        views = np.arange(v_size, dtype=np.int64)
        keys = prune_keys(self.seed, groups[:, None] * v_size + views[None, :])
        order = np.argsort(keys, axis=1, kind="stable")  # (G, V) views by key
        kept = np.sort(order[:, :k], axis=1)
        if not chosen:
            return kept, None
        uses = np.empty_like(order)
        rows = np.arange(len(groups))[:, None]
        uses[rows, kept] = kept
        if k < v_size:
            pruned = np.sort(order[:, k:], axis=1)
            cycle = np.arange(v_size - k) % k
            uses[rows, pruned] = kept[:, cycle]
        return kept, uses

    def _group_blocks(self, groups: np.ndarray) -> Iterator[np.ndarray]:
        """Consecutive blocks of ``groups`` whose keys fit the block budget."""
        block = max(1, _BLOCK_KEYS // self.group_size)
        for first in range(0, len(groups), block):
            yield groups[first : first + block]

    def _split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat indices -> (outer index, view, inner index)."""
        outer, rest = np.divmod(flat, self.group_size * self._inner)
        view, inner = np.divmod(rest, self._inner)
        return outer, view, inner

    def _sources(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For flat labels: the view their label comes from, and that view's rank
        among its group's kept views. Computes only the groups asked for."""
        outer, view, inner = self._split(flat)
        unique, where = np.unique(outer * self._inner + inner, return_inverse=True)
        where = where.reshape(-1)
        source = np.empty(len(flat), dtype=np.int64)
        rank = np.empty(len(flat), dtype=np.int64)
        first = 0
        for groups in self._group_blocks(unique):
            kept, uses = self._choice(groups)
            assert uses is not None
            sel = np.nonzero((where >= first) & (where < first + len(groups)))[0]
            local = where[sel] - first
            source[sel] = uses[local, view[sel]]
            rank[sel] = (kept[local] < source[sel, None]).sum(axis=1)
            first += len(groups)
        return source, rank

    def _check_flat(self, flat: torch.Tensor) -> np.ndarray:
        flat = torch.as_tensor(flat, dtype=torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_labels):
            raise InputError(
                f"label indices must lie in [0, {self.num_labels}), got "
                f"{int(flat.min())}..{int(flat.max())}"
            )
        return flat.cpu().reshape(-1).numpy()

    def stored_index(self, flat: torch.Tensor) -> torch.Tensor:
        """Index among the stored (kept) labels of the label each flat index uses.

        Computed for the requested labels only (see :attr:`is_lazy`).

        Args:
            flat: int64 tensor of any shape, entries in ``[0, num_labels)``.

        Returns:
            int64 tensor of the same shape, entries in ``[0, num_kept)``.
        """
        shape = torch.as_tensor(flat).shape
        index = self._check_flat(flat)
        source, rank = self._sources(index)
        if self.is_lazy:
            stored = (index // self.group_size) * self.keep_per_group + rank
        else:
            outer, _, inner = self._split(index)
            inner_size = self._inner
            src_flat = (outer * self.group_size + source) * inner_size + inner
            stored = np.searchsorted(self._kept_sorted(), src_flat)
        return torch.from_numpy(stored.astype(np.int64)).reshape(shape)

    def kept_flat(self, stored: torch.Tensor) -> torch.Tensor:
        """Flat index of each stored label ``stored`` (any shape, in [0, num_kept))."""
        stored = torch.as_tensor(stored, dtype=torch.int64)
        shape = stored.shape
        index = stored.cpu().reshape(-1).numpy()
        if index.size and (index.min() < 0 or index.max() >= self.num_kept):
            raise InputError(
                f"stored label indices must lie in [0, {self.num_kept}), got "
                f"{int(index.min())}..{int(index.max())}"
            )
        if not self.is_lazy:
            return torch.from_numpy(self._kept_sorted()[index]).reshape(shape)
        groups, slot = np.divmod(index, self.keep_per_group)
        unique, where = np.unique(groups, return_inverse=True)
        where = where.reshape(-1)
        out = np.empty(len(index), dtype=np.int64)
        first = 0
        for block in self._group_blocks(unique):
            kept = self._choice(block, chosen=False)[0]
            sel = np.nonzero((where >= first) & (where < first + len(block)))[0]
            out[sel] = (
                groups[sel] * self.group_size + kept[where[sel] - first, slot[sel]]
            )
            first += len(block)
        return torch.from_numpy(out).reshape(shape)

    def kept_range(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start,) bool: which of the flat labels ``start..stop-1`` are kept.

        What a streaming writer needs per batch; touches only those labels'
        groups (lazy plans) or the sorted kept indices (others).
        """
        if not 0 <= start <= stop <= self.num_labels:
            raise InputError(
                f"label range [{start}, {stop}) outside [0, {self.num_labels})"
            )
        flat = np.arange(start, stop, dtype=np.int64)
        if self.is_lazy:
            source, _ = self._sources(flat)
            return torch.from_numpy(source == flat % self.group_size)
        kept = self._kept_sorted()
        lo, hi = np.searchsorted(kept, [start, stop])
        mask = np.zeros(stop - start, dtype=bool)
        mask[kept[lo:hi] - start] = True
        return torch.from_numpy(mask)

    def is_kept(self, flat: torch.Tensor) -> torch.Tensor:
        """Bool tensor, same shape as ``flat``: True where that label is stored.

        Like :meth:`kept_range` for any set of labels (e.g. a shuffled batch).
        """
        shape = torch.as_tensor(flat).shape
        index = self._check_flat(flat)
        if self.is_lazy:
            source, _ = self._sources(index)
            kept = source == index % self.group_size
        else:
            table = self._kept_sorted()
            where = np.minimum(np.searchsorted(table, index), max(len(table) - 1, 0))
            kept = table[where] == index
        return torch.from_numpy(kept).reshape(shape)

    def _kept_sorted(self) -> np.ndarray:
        """(num_kept,) int64 flat indices of the kept labels, increasing (cached).

        Lazy plans list groups in flat order already; others mark a temporary
        (num_labels,) bool mask in blocks and read it back in order.
        """
        if self._kept is None:
            inner, v_size = self._inner, self.group_size
            groups = np.arange(self.num_groups, dtype=np.int64)
            if self.is_lazy:
                parts = [
                    (block[:, None] * v_size + kept).reshape(-1)
                    for block in self._group_blocks(groups)
                    for kept in [self._choice(block, chosen=False)[0]]
                ]
                self._kept = np.concatenate(parts)
            else:
                mask = np.zeros(self.num_labels, dtype=bool)
                for block in self._group_blocks(groups):
                    kept = self._choice(block, chosen=False)[0]
                    outer, inner_idx = np.divmod(block, inner)
                    base = outer * v_size * inner + inner_idx  # flat index of view 0
                    mask[(base[:, None] + kept * inner).reshape(-1)] = True
                self._kept = np.flatnonzero(mask).astype(np.int64, copy=False)
        return self._kept

    @property
    def table(self) -> torch.Tensor:
        """(num_labels,) stored index (int32/int64) of the label each label uses.

        Materialises the whole plan (4-8 bytes per label): for tests and small
        label sets; readers and writers use :meth:`stored_index`,
        :meth:`kept_flat` and :meth:`kept_range`.
        """
        stored = self.stored_index(torch.arange(self.num_labels))
        return stored.to(torch.int32 if self.num_kept < 2**31 else torch.int64)

    def kept_mask(self) -> torch.Tensor:
        """(num_labels,) bool: True where the label itself is stored (materialised)."""
        return self.kept_range(0, self.num_labels)

    def kept_indices(self) -> torch.Tensor:
        """(num_kept,) int64 flat indices of the stored labels, increasing."""
        return torch.from_numpy(self._kept_sorted().copy())

    # -- storage -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """What an archive header stores: enough to rebuild the plan exactly."""
        return {
            "method": PLAN_METHOD,
            "hash": PLAN_HASH,
            "dim": self.reuse_dim,
            "keep_fraction": self.keep_fraction,
            "keep_per_group": self.keep_per_group,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(
        cls, dims: Sequence[str], shape: Sequence[int], data: Mapping[str, Any]
    ) -> PrunePlan:
        """Rebuild a stored plan; checks it matches what this version computes."""
        if data.get("method") != PLAN_METHOD or data.get("hash") != PLAN_HASH:
            raise ArchiveFormatError(
                f"archive uses prune method {data.get('method')!r} with hash "
                f"{data.get('hash')!r}; this labelzip knows {PLAN_METHOD!r}/{PLAN_HASH!r}"
            )
        try:
            plan = cls(dims, shape, float(data["keep_fraction"]), int(data["seed"]))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArchiveFormatError(
                f"archive has an invalid prune plan: {exc}"
            ) from exc
        if plan.reuse_dim != data.get("dim") or plan.keep_per_group != data.get(
            "keep_per_group"
        ):
            raise ArchiveFormatError(
                f"archive prune plan {dict(data)} does not match its layout "
                f"{list(dims)} {list(shape)}"
            )
        return plan

    def __repr__(self) -> str:
        return (
            f"PrunePlan(dim={self.reuse_dim!r}, keep={self.keep_per_group}/"
            f"{self.group_size}, seed={self.seed}, kept={self.num_kept}/{self.num_labels})"
        )
