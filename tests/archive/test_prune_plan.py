"""LPLD prune plans: which labels are kept, which kept label each pruned one reuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelzip.codecs.prune import PrunePlan, keep_per_group, prune_keys
from labelzip.errors import ArchiveFormatError, ConfigError, InputError


def _splitmix64(seed: int, i: int) -> int:
    """Reference implementation in plain Python ints (the format pins this hash)."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + 1 + i) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_keys_are_the_documented_splitmix64() -> None:
    ids = np.array([0, 1, 2, 12345, 2**40], dtype=np.int64)
    for seed in (0, 1, 2**62):
        got = prune_keys(seed, ids).tolist()
        assert got == [_splitmix64(seed, int(i)) for i in ids]
    assert (
        prune_keys(0, np.array([0]))[0] == 0x5692161D100B05E5
    )  # pinned: archives depend on it


@pytest.mark.parametrize(
    ("fraction", "views", "k"),
    [(0.25, 8, 2), (0.1, 300, 30), (0.5, 3, 2), (0.01, 4, 1), (1.0, 5, 5), (0.3, 1, 1)],
)
def test_keep_per_group_rounds_half_up(fraction: float, views: int, k: int) -> None:
    assert keep_per_group(fraction, views) == k


def test_each_sample_keeps_k_views_and_reuses_them_cyclically() -> None:
    plan = PrunePlan(("sample", "view"), (50, 10), 0.3, seed=5)
    table = plan.table.long().reshape(50, 10)
    kept = plan.kept_mask().reshape(50, 10)
    assert plan.keep_per_group == 3 and plan.num_kept == 150
    assert torch.equal(kept.sum(1), torch.full((50,), 3))
    kept_flat = plan.kept_indices()
    assert torch.equal(kept_flat, torch.nonzero(kept.reshape(-1)).reshape(-1))
    for n in range(50):
        source = kept_flat[table[n]]  # flat index each view of sample n uses
        assert torch.equal(source // 10, torch.full((10,), n))  # same sample
        kept_views = torch.nonzero(kept[n]).reshape(-1)
        assert torch.equal(source[kept_views] % 10, kept_views)  # kept use themselves
        uses = torch.bincount(source % 10, minlength=10)[kept_views]
        assert int(uses.max() - uses.min()) <= 1  # 7 pruned over 3 kept: 3/3/2 + self


def test_plan_is_deterministic_and_seeded() -> None:
    a = PrunePlan(("sample", "view"), (20, 6), 0.5, seed=1)
    b = PrunePlan(("sample", "view"), (20, 6), 0.5, seed=1)
    c = PrunePlan(("sample", "view"), (20, 6), 0.5, seed=2)
    assert torch.equal(a.table, b.table)
    assert not torch.equal(a.kept_mask(), c.kept_mask())


def test_epoch_major_layout_keeps_the_same_views_per_sample() -> None:
    by_sample = PrunePlan(("sample", "view"), (30, 7), 0.4, seed=3)
    by_epoch = PrunePlan(("epoch", "sample"), (7, 30), 0.4, seed=3)
    assert torch.equal(
        by_sample.kept_mask().reshape(30, 7), by_epoch.kept_mask().reshape(7, 30).T
    )
    # stored order follows flat order, so stored indices differ but sources agree
    src_sample = by_sample.kept_indices()[by_sample.table.long()].reshape(30, 7)
    src_epoch = by_epoch.kept_indices()[by_epoch.table.long()].reshape(7, 30).T
    assert torch.equal(src_sample % 7, src_epoch // 30)  # same reused view


def test_inner_dims_group_by_all_other_coordinates() -> None:
    plan = PrunePlan(("shard", "view", "sample"), (2, 5, 3), 0.4, seed=0)
    kept = plan.kept_mask().reshape(2, 5, 3)
    assert torch.equal(kept.sum(1), torch.full((2, 3), 2))
    source = plan.kept_indices()[plan.table.long()].reshape(2, 5, 3)
    shard, sample = source // 15, source % 3
    assert torch.equal(shard, torch.arange(2)[:, None, None].expand(2, 5, 3))
    assert torch.equal(sample, torch.arange(3).expand(2, 5, 3))


def test_keep_all_is_identity() -> None:
    plan = PrunePlan(("sample", "view"), (4, 3), 1.0)
    assert torch.equal(plan.table.long(), torch.arange(12))


def test_layout_without_view_dimension_is_rejected() -> None:
    with pytest.raises(ConfigError, match="no 'view' or 'epoch' dimension"):
        PrunePlan(("sample",), (100,), 0.5)
    with pytest.raises(ConfigError, match="no 'view' or 'epoch'"):
        PrunePlan(("sequence", "position"), (4, 64), 0.5)
    with pytest.raises(ConfigError, match="both 'view' and 'epoch'"):
        PrunePlan(("epoch", "sample", "view"), (2, 3, 4), 0.5)


@pytest.mark.parametrize(("fraction", "seed"), [(0.0, 0), (1.5, 0), (0.5, -1)])
def test_invalid_options(fraction: float, seed: int) -> None:
    with pytest.raises(ConfigError, match="keep_fraction must be in"):
        PrunePlan(("sample", "view"), (4, 4), fraction, seed)


def test_stored_dict_round_trip_and_mismatch() -> None:
    plan = PrunePlan(("sample", "view"), (10, 8), 0.25, seed=11)
    data = plan.to_dict()
    assert data == {
        "method": "lpld",
        "hash": "splitmix64",
        "dim": "view",
        "keep_fraction": 0.25,
        "keep_per_group": 2,
        "seed": 11,
    }
    again = PrunePlan.from_dict(plan.dims, plan.shape, data)
    assert torch.equal(again.table, plan.table)
    with pytest.raises(ArchiveFormatError, match="does not match its layout"):
        PrunePlan.from_dict(plan.dims, plan.shape, {**data, "keep_per_group": 3})
    with pytest.raises(ArchiveFormatError, match="prune method"):
        PrunePlan.from_dict(plan.dims, plan.shape, {**data, "hash": "md5"})


def test_stored_index_checks_range() -> None:
    plan = PrunePlan(("sample", "view"), (3, 4), 0.5)
    assert plan.stored_index(torch.tensor([[0, 11]])).shape == (1, 2)
    with pytest.raises(InputError, match=r"must lie in \[0, 12\)"):
        plan.stored_index(torch.tensor([12]))


@pytest.mark.parametrize(
    ("dims", "shape", "table"),
    [
        # Pinned from the plan as labelzip computed it before lookups were lazy.
        (
            ("epoch", "sample"),
            (5, 4),
            [3, 0, 1, 2, 3, 4, 1, 5, 6, 0, 7, 2, 6, 4, 7, 5, 3, 0, 1, 2],
        ),
        (("sample", "view"), (3, 5), [0, 0, 1, 1, 0, 2, 3, 2, 3, 2, 4, 4, 5, 5, 4]),
    ],
)
def test_lookups_are_pinned(dims: tuple, shape: tuple, table: list) -> None:
    assert PrunePlan(dims, shape, 0.4, seed=7).table.tolist() == table


@pytest.mark.parametrize(
    ("dims", "shape"),
    [
        (("sample", "view"), (40, 9)),
        (("epoch", "sample"), (9, 40)),
        (("shard", "view", "sample"), (3, 7, 5)),
    ],
)
def test_every_lookup_agrees_with_the_materialised_plan(
    dims: tuple, shape: tuple
) -> None:
    plan = PrunePlan(dims, shape, 0.3, seed=11)
    assert plan.is_lazy == (dims[-1] in ("view", "epoch"))
    kept, mask = plan.kept_indices(), plan.kept_mask()
    assert torch.equal(plan.kept_flat(torch.arange(plan.num_kept)), kept)
    assert torch.equal(plan.stored_index(kept), torch.arange(plan.num_kept))
    shuffled = torch.randperm(
        plan.num_labels, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(plan.is_kept(shuffled), mask[shuffled])
    assert torch.equal(plan.stored_index(shuffled), plan.table.long()[shuffled])
    assert torch.equal(plan.kept_range(17, 101), mask[17:101])
    with pytest.raises(InputError):
        plan.kept_flat(torch.tensor([plan.num_kept]))


def test_plans_too_large_to_index_are_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="limit"):
        PrunePlan(("epoch", "sample"), (300, 10**9), 0.25)
    with pytest.raises(ConfigError, match="limit"):
        PrunePlan(("sample", "view"), (3, 10**9), 0.25)
