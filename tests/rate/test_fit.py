"""The one fit entry point: a fixed configuration, or a rate target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labelzip.archive import Layout, save_archive
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import codec_class, create_codec
from labelzip.errors import ConfigError, UnreachableTargetError
from labelzip.rate import (
    ArchiveTarget,
    RateGoal,
    auto_prune_plan,
    configure_codec,
    estimate_header_bytes,
    fit_codec,
    side_entry_bytes,
)

N, C = 512, 100


@pytest.fixture
def logits(make_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    return make_logits(N, C, 5)


def test_fixed_configuration_is_fitted_as_given(logits: torch.Tensor) -> None:
    codec = fit_codec("topk", [logits], {"k": 3, "decoder": "mr"}, num_labels=N)
    assert codec.is_fitted and codec.config.k == 3  # type: ignore[attr-defined]
    assert (
        codec.to_config()
        == create_codec("topk", k=3, decoder="mr").fit([logits]).to_config()
    )
    with pytest.raises(ConfigError, match="fitted for num_labels"):
        fit_codec("topk", [logits], {"k": 3})
    assert configure_codec("topk", {"k": 3}).config == create_codec("topk", k=3).config


def test_target_picks_the_configuration_and_the_file_meets_it(
    tmp_path: Path, logits: torch.Tensor
) -> None:
    target = ArchiveTarget.flat(N, C, ratio=20.0)
    codec = fit_codec("topk", [logits], {"decoder": "mr"}, target=target)
    chosen = configure_codec("topk", {"decoder": "mr"}, target)
    assert codec.is_fitted and codec.config == chosen.config
    account = save_archive(tmp_path / "a.lz", codec, logits)
    assert account.total_bytes == (tmp_path / "a.lz").stat().st_size
    assert account.total_bytes <= target.total_bytes
    # one more entry per label would not have fit
    bigger = create_codec("topk", decoder="mr", k=codec.config.k + 1)  # type: ignore[attr-defined]
    account2 = save_archive(tmp_path / "b.lz", bigger.fit([logits]), logits)
    assert account2.total_bytes > target.total_bytes


def test_header_and_side_bytes_come_off_the_budget() -> None:
    goal = RateGoal(ratio=20.0)
    layout = Layout(("sample",), (N,))
    bare = ArchiveTarget(goal, layout, C, header_bytes=0)
    # the codec alone gets the whole goal: its own size model at that budget
    own = codec_class("topk").for_target(
        num_labels=N, num_classes=C, budget_bytes=goal.total_bytes(N, C)
    )
    assert configure_codec("topk", {}, bare).config == own.config
    k_bare = configure_codec("topk", {}, bare).config.k  # type: ignore[attr-defined]
    estimated = ArchiveTarget(goal, layout, C)
    k_archive = configure_codec("topk", {}, estimated).config.k  # type: ignore[attr-defined]
    side = estimated.replace(side_bytes=goal.total_bytes(N, C) // 4)
    k_side = configure_codec("topk", {}, side).config.k  # type: ignore[attr-defined]
    assert k_bare >= k_archive > k_side
    header = estimate_header_bytes(N, estimated.chunk_size, "topk", num_classes=C)
    assert header > 0


def test_pruned_target_fits_the_codec_for_the_kept_labels(logits: torch.Tensor) -> None:
    layout = Layout(("sample", "view"), (N // 4, 4))
    plan = PrunePlan(layout.dims, layout.shape, 0.25, seed=0)
    target = ArchiveTarget(RateGoal(ratio=3.0), layout, C, prune=plan)
    assert target.num_stored == plan.num_kept == N // 4
    kept = logits[plan.kept_indices()]
    codec = fit_codec("dense", [kept], {}, target=target)
    assert codec.is_fitted and codec.config.dtype == "fp16"  # type: ignore[attr-defined]
    with pytest.raises(UnreachableTargetError, match="with 128 of 512 labels kept"):
        configure_codec("dense", {}, target.replace(goal=RateGoal(ratio=8.0)))


def test_auto_prune_keeps_the_most_views_that_fit() -> None:
    layout = Layout(("sample", "view"), (64, 16))
    goal = RateGoal(ratio=0.9)
    target = ArchiveTarget(goal, layout, C)
    assert auto_prune_plan("dense", target) is None  # every view fits below 1x
    plan = auto_prune_plan("dense", target.replace(goal=RateGoal(ratio=3.0)))
    assert plan is not None
    kept = round(plan.keep_fraction * 16)
    assert kept == 5  # fp16 dense at 3x: 16/3 views, less the header
    more = PrunePlan(layout.dims, layout.shape, (kept + 1) / 16, 0)
    with pytest.raises(UnreachableTargetError):
        configure_codec(
            "dense", {}, target.replace(goal=RateGoal(ratio=3.0), prune=more)
        )
    with pytest.raises(ConfigError, match="needs one 'epoch' or 'view' dimension"):
        auto_prune_plan("dense", ArchiveTarget.flat(64, C, ratio=3.0))
    with pytest.raises(UnreachableTargetError, match="even with the label of 1 of 16"):
        auto_prune_plan("dense", target.replace(goal=RateGoal(ratio=100.0)))


def test_side_entry_bytes_count_each_name_twice() -> None:
    tensors = {"ab": torch.zeros(1), "xyz": torch.zeros(2)}
    assert side_entry_bytes(tensors) == 2 * 200 + 2 * 2 + 2 * 3


def test_archive_target_of_no_goal_is_a_fixed_configuration() -> None:
    layout = Layout(("sample",), (N,))
    assert ArchiveTarget.of(None, layout, C) is None
    target = ArchiveTarget.of(RateGoal(bits_per_label=64), layout, C, side_bytes=9)
    assert target == ArchiveTarget(RateGoal(bits_per_label=64), layout, C, side_bytes=9)
    assert target.total_bytes == N * 8
    with pytest.raises(ConfigError, match="exactly one of ratio or bits_per_label"):
        ArchiveTarget.flat(N, C)
