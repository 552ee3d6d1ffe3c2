"""Shared fixtures of the codec tests: next-token-like logits for the LM codecs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

LM_CLASSES = 2000


def lm_logits(num_labels: int, seed: int) -> torch.Tensor:
    """(N, C) next-token-like logits: a shared Zipf law over a fixed token order,
    per-label noise and decay, and a few boosted context tokens."""
    order = torch.randperm(LM_CLASSES, generator=torch.Generator().manual_seed(99))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(LM_CLASSES)
    g = torch.Generator().manual_seed(seed)
    decay = 0.8 + 0.6 * torch.rand(num_labels, 1, generator=g)
    logits = -decay * (rank.float() + 1.0).log()[None]
    logits = logits + 0.7 * torch.randn(num_labels, LM_CLASSES, generator=g)
    boost = torch.cat(
        [
            order[torch.randint(0, 50, (num_labels, 4), generator=g)],
            torch.randint(0, LM_CLASSES, (num_labels, 4), generator=g),
        ],
        dim=1,
    )
    amount = 4.0 + 3.0 * torch.rand(num_labels, 8, generator=g)
    return logits.scatter_add(1, boost, amount)


@pytest.fixture(scope="session")
def make_lm_logits() -> Callable[..., torch.Tensor]:
    """``lm_logits(num_labels, seed)``: (N, 2000) next-token-like logits."""
    return lm_logits
