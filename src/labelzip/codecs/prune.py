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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.errors import ArchiveFormatError, ConfigError, InputError

__all__ = ["REUSE_DIMS", "PruneConfig", "PrunePlan", "keep_per_group", "prune_keys"]

# Layout dimensions along which a sample's labels may stand in for each other.
REUSE_DIMS = ("view", "epoch")
PLAN_METHOD = "lpld"
PLAN_HASH = "splitmix64"

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Keys computed per block of groups, to bound the plan's temporary memory.
_BLOCK_KEYS = 1 << 20


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

    Memory: the plan holds one int32 (int64 beyond 2**31 labels) per label, built
    in blocks; a (N=50k, E=300) label set costs 60 MB against the 30 GB of its
    fp16 logits.
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
        self._table: torch.Tensor | None = None
        self._kept: torch.Tensor | None = None

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
    def _build(self) -> None:
        """Fill the (num_labels,) stored-index table and the kept mask."""
        num_labels, v_size, inner = self.num_labels, self.group_size, self._inner
        k = self.keep_per_group
        source = np.empty(num_labels, dtype=np.int64)
        block = max(1, _BLOCK_KEYS // v_size)
        views = np.arange(v_size, dtype=np.int64)
        for first in range(0, self.num_groups, block):
            groups = np.arange(
                first, min(first + block, self.num_groups), dtype=np.int64
            )
            keys = prune_keys(self.seed, groups[:, None] * v_size + views[None, :])
            order = np.argsort(keys, axis=1, kind="stable")  # (G, V) views by key
            kept = np.sort(order[:, :k], axis=1)
            chosen = np.empty_like(order)  # (G, V) view whose label each view uses
            rows = np.arange(len(groups))[:, None]
            chosen[rows, kept] = kept
            if k < v_size:
                pruned = np.sort(order[:, k:], axis=1)
                cycle = np.arange(v_size - k) % k
                chosen[rows, pruned] = kept[:, cycle]
            outer, inner_idx = np.divmod(groups, inner)
            base = outer * v_size * inner + inner_idx  # flat index of view 0
            flat_of = base[:, None] + views[None, :] * inner
            source[flat_of.reshape(-1)] = (base[:, None] + chosen * inner).reshape(-1)
        is_kept = source == np.arange(num_labels, dtype=np.int64)
        rank = np.cumsum(is_kept, dtype=np.int64) - 1
        stored = rank[source]
        dtype = np.int32 if self.num_kept < 2**31 else np.int64
        self._table = torch.from_numpy(stored.astype(dtype))
        self._kept = torch.from_numpy(is_kept)

    @property
    def table(self) -> torch.Tensor:
        """(num_labels,) stored index (int32/int64) of the label each label uses."""
        if self._table is None:
            self._build()
        assert self._table is not None
        return self._table

    def stored_index(self, flat: torch.Tensor) -> torch.Tensor:
        """Index among the stored (kept) labels of the label each flat index uses.

        Args:
            flat: int64 tensor of any shape, entries in ``[0, num_labels)``.

        Returns:
            int64 tensor of the same shape, entries in ``[0, num_kept)``.
        """
        flat = torch.as_tensor(flat, dtype=torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_labels):
            raise InputError(
                f"label indices must lie in [0, {self.num_labels}), got "
                f"{int(flat.min())}..{int(flat.max())}"
            )
        return self.table[flat.cpu()].to(torch.int64)

    def kept_mask(self) -> torch.Tensor:
        """(num_labels,) bool: True where the label itself is stored."""
        if self._kept is None:
            self._build()
        assert self._kept is not None
        return self._kept

    def kept_indices(self) -> torch.Tensor:
        """(num_kept,) int64 flat indices of the stored labels, increasing."""
        return torch.nonzero(self.kept_mask()).reshape(-1)

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
