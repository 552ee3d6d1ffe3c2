from __future__ import annotations

import pytest
import torch

from labelzip.codecs.vqae.codec import VQAECodec
from labelzip.codecs.vqae.sizing import (
    MAX_CHUNKS,
    choose_config,
    model_bytes_for,
    payload_bytes_for,
)
from labelzip.errors import ConfigError, UnreachableTargetError

from ..sizing import goal_bytes, sized_codec


@pytest.mark.parametrize(
    ("num_labels", "ratio"),
    [(20_000, 20.0), (20_000, 40.0), (3_000_000, 40.0), (3_000_000, 150.0)],
)
def test_meets_budget_at_c1000(num_labels: int, ratio: float) -> None:
    budget = goal_bytes(num_labels=num_labels, num_classes=1000, ratio=ratio)
    codec = VQAECodec.for_target(
        num_labels=num_labels, num_classes=1000, budget_bytes=budget
    )
    cfg = codec.config
    used = model_bytes_for(cfg, 1000) + payload_bytes_for(cfg, 1000, num_labels)
    assert used <= budget
    # The search spends the budget: one more chunk would not fit, or the grid is at its limit.
    more = cfg.model_copy(update={"num_chunks": cfg.num_chunks + 1})
    bigger = model_bytes_for(more, 1000) + payload_bytes_for(more, 1000, num_labels)
    assert bigger > budget or cfg.num_chunks >= MAX_CHUNKS


def test_more_labels_buy_a_wider_decoder() -> None:
    widths = []
    for n in (20_000, 3_000_000):
        budget = goal_bytes(num_labels=n, num_classes=1000, ratio=40.0)
        cfg = choose_config(
            num_labels=n, num_classes=1000, budget_bytes=budget, fixed={}
        )
        widths.append(cfg.hidden_dim)
    assert widths[1] > widths[0]


def test_fixed_options_are_kept() -> None:
    budget = goal_bytes(num_labels=50_000, num_classes=1000, ratio=40.0)
    cfg = choose_config(
        num_labels=50_000,
        num_classes=1000,
        budget_bytes=budget,
        fixed={"num_ids": 2, "codebook_size": 16, "hidden_dim": 32, "steps": 7},
    )
    assert (cfg.num_ids, cfg.codebook_size, cfg.hidden_dim, cfg.steps) == (2, 16, 32, 7)
    with pytest.raises(ConfigError, match="invalid vqae options"):
        choose_config(
            num_labels=10, num_classes=10, budget_bytes=10**6, fixed={"num_ids": -1}
        )


def test_unreachable_names_the_best_ratio() -> None:
    with pytest.raises(
        UnreachableTargetError, match=r"best reachable ratio \d+\.\dx"
    ) as info:
        sized_codec("vqae", num_labels=10, num_classes=1000, ratio=40.0)
    assert "bits per label" in str(info.value)


def test_fitted_codec_really_fits_its_budget() -> None:
    g = torch.Generator().manual_seed(0)
    n, c = 3000, 40
    logits = torch.randn(n, c, generator=g) * 2
    budget = goal_bytes(num_labels=n, num_classes=c, ratio=8.0)
    codec = sized_codec(
        "vqae", num_labels=n, num_classes=c, ratio=8.0, steps=2, encoder_dim=16
    )
    codec.fit([logits], num_labels=n)
    payload = sum(codec.encode(part).nbytes for part in logits.split(1024))
    assert payload + codec.model_bytes() <= budget
