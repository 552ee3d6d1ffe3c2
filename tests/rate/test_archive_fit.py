"""Rate control: the archive file on disk, header included, meets the target.

(Moved from tests/archive with ``labelzip.archive.rate``.)"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labelzip.accounting import reference_bytes
from labelzip.archive import (
    ArchiveMetadata,
    ArchiveReader,
    ArchiveWriter,
    Layout,
    save_archive,
)
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import create_codec
from labelzip.errors import UnreachableTargetError
from labelzip.rate import (
    ArchiveTarget,
    RateGoal,
    configure_codec,
    estimate_header_bytes,
    fit_codec,
)


@pytest.fixture
def views(make_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    """(48, 4, 20) teacher logits: 48 samples x 4 views x 20 classes, seed 3."""
    return make_logits(48 * 4, 20, 3).reshape(48, 4, 20)


def _write(path: Path, codec: Codec, views: torch.Tensor, **kwargs: object) -> int:
    with ArchiveWriter(
        path, codec, layout=Layout.for_shape(views.shape[:-1]), **kwargs
    ) as w:  # type: ignore[arg-type]
        w.write(views)
    return os.path.getsize(path)


@pytest.mark.parametrize("chunk_size", [7, 50, 4096])
@pytest.mark.parametrize(("name", "options"), [("dense", {}), ("topk", {"k": 3})])
def test_header_estimate_is_a_tight_upper_bound(
    tmp_path: Path,
    views: torch.Tensor,
    chunk_size: int,
    name: str,
    options: dict,
) -> None:
    codec = create_codec(name, **options).fit([views.reshape(-1, 20)])
    meta = ArchiveMetadata(
        tuple("abcdefghijklmnopqrst"), "fp", "teacher", {"k": [1, 2]}
    )
    plan = PrunePlan(("sample", "view"), (48, 4), 0.5, seed=1)
    layout = Layout.for_shape((48, 4))
    for prune in (None, plan):
        account = save_archive(
            tmp_path / "a.lz",
            codec,
            views,
            chunk_size=chunk_size,
            prune=prune,
            metadata=meta,
        )
        common = {"num_classes": 20, "layout": layout, "prune": prune, "metadata": meta}
        fitted_est = estimate_header_bytes(192, chunk_size, codec, **common)
        named_est = estimate_header_bytes(
            192, chunk_size, name, options=options, **common
        )
        chunks = -(-(96 if prune else 192) // chunk_size)
        assert (
            account.header_bytes <= fitted_est <= account.header_bytes + 42 * chunks + 7
        )
        # dense and top-k learn only C at fit: their header is known before it
        assert named_est == fitted_est
        # Bounded by the file size (the rate target), offsets get its digits.
        size = os.path.getsize(tmp_path / "a.lz")
        bounded = estimate_header_bytes(
            192, chunk_size, codec, **common, max_file_bytes=size
        )
        assert account.header_bytes <= bounded <= fitted_est
        assert bounded - account.header_bytes <= 3 * chunks * (len(str(size)) - 1) + 7
        if chunks > 10:
            assert bounded < fitted_est


@pytest.fixture
def big(make_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    """(256, 4, 100) logits: 205 kB of fp16 reference, so headers are ~1%."""
    return make_logits(256 * 4, 100, 5).reshape(256, 4, 100)


@pytest.mark.parametrize(
    ("target", "prune_keep"),
    [({"ratio": 3.8}, 0.25), ({"ratio": 1.9}, 0.5), ({"bits_per_label": 425.0}, 0.25)],
)
def test_prune_dense_meets_target_with_real_file_size(
    tmp_path: Path, big: torch.Tensor, target: dict, prune_keep: float
) -> None:
    layout = Layout.for_shape((256, 4))
    plan = PrunePlan(layout.dims, layout.shape, prune_keep, seed=0)
    kept = big.reshape(-1, 100)[plan.kept_indices()]
    codec = fit_codec(
        "dense",
        [kept],
        {},
        target=ArchiveTarget(
            RateGoal(**target), layout, 100, chunk_size=64, prune=plan
        ),
    )
    size = _write(tmp_path / "a.lz", codec, big, prune=plan, chunk_size=64)
    budget = (
        reference_bytes(1024, 100) / target["ratio"]
        if "ratio" in target
        else target["bits_per_label"] * 1024 / 8
    )
    assert size <= budget
    with ArchiveReader(tmp_path / "a.lz") as reader:
        assert reader.account().total_bytes == size
        assert reader.account().payload_bytes == len(kept) * 100 * 2


@pytest.mark.parametrize("ratio", [4.0, 8.0, 15.0])
@pytest.mark.parametrize("prune_keep", [None, 0.5])
def test_topk_meets_ratio_and_uses_the_budget(
    tmp_path: Path, big: torch.Tensor, ratio: float, prune_keep: float | None
) -> None:
    layout = Layout.for_shape((256, 4))
    plan = PrunePlan(layout.dims, layout.shape, prune_keep) if prune_keep else None
    rows = big.reshape(-1, 100)
    kept = rows[plan.kept_indices()] if plan else rows
    codec = fit_codec(
        "topk",
        [kept],
        {"decoder": "mr"},
        target=ArchiveTarget(RateGoal(ratio=ratio), layout, 100, prune=plan),
    )
    size = _write(tmp_path / "a.lz", codec, big, prune=plan)
    budget = reference_bytes(1024, 100) / ratio
    assert size <= budget
    # the largest k was chosen: one more entry per stored label would not fit
    per_entry = (2 + 1) * len(kept)  # fp16 value + 7-bit id, rounded up
    assert budget - size < per_entry + 512  # 512: header-estimate slack


def test_unreachable_target_names_the_best_reachable(big: torch.Tensor) -> None:
    layout = Layout.for_shape((256, 4))
    plan = PrunePlan(layout.dims, layout.shape, 0.25)
    with pytest.raises(UnreachableTargetError, match="best reachable is") as info:
        configure_codec(
            "dense", {}, ArchiveTarget(RateGoal(ratio=10.0), layout, 100, prune=plan)
        )
    message = str(info.value)
    assert "with 256 of 1024 labels kept" in message
    best = float(re.search(r"best reachable is ([\d.]+)x", message).group(1))  # type: ignore[union-attr]
    assert 3.9 < best < 4.0  # 4x from pruning, less the header
    codec = configure_codec(
        "dense",
        {},
        ArchiveTarget(RateGoal(ratio=best * 0.999), layout, 100, prune=plan),
    )
    assert codec.config.dtype == "fp16"  # type: ignore[attr-defined]


def test_unreachable_because_of_header(views: torch.Tensor) -> None:
    layout = Layout.for_shape((48, 4))
    with pytest.raises(
        UnreachableTargetError, match="header and side information alone"
    ) as info:
        configure_codec("topk", {}, ArchiveTarget(RateGoal(ratio=1000.0), layout, 20))
    assert "best reachable is" in str(info.value)


def test_user_fixed_option_is_respected(big: torch.Tensor) -> None:
    layout = Layout.for_shape((256, 4))
    codec = configure_codec(
        "topk", {"k": 2}, ArchiveTarget(RateGoal(ratio=2.0), layout, 100)
    )
    assert codec.config.k == 2  # type: ignore[attr-defined]
    with pytest.raises(UnreachableTargetError, match="best reachable"):
        configure_codec(
            "topk", {"k": 20}, ArchiveTarget(RateGoal(ratio=20.0), layout, 100)
        )


def test_ratio_leaving_zero_bytes_is_a_clear_error() -> None:
    """A huge ratio on a tiny set rounds the byte target to 0: an error, not a crash."""
    with pytest.raises(UnreachableTargetError, match="leaves 0 bytes for 4 labels"):
        configure_codec(
            "topk", {}, ArchiveTarget(RateGoal(ratio=1e6), Layout.for_shape((4,)), 10)
        )
