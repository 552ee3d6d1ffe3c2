"""Per-label K levels of vqae-sparse and the lambda that trades KL for id bits.

A label keeps the first ``K / 2**i`` of its K ids (level i < L); rate control
fits the lambda of ``KL + lambda * bits`` so the mean payload meets the budget.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["K_GRID", "fit_lambda", "level_ks", "rows_of_level"]

# candidate K of rate control with per-label levels
K_GRID = tuple(
    sorted(
        {int(b * m) for b in (4, 8, 16, 32, 64, 128, 256) for m in (1, 1.25, 1.5, 1.75)}
        | {512}
    )
)


def level_ks(k: int, num_levels: int) -> list[int]:
    """The per-label K choices, ascending: K / 2**(L-1), ..., K / 2, K."""
    return sorted({max(1, round(k / (1 << i))) for i in range(num_levels)})


def rows_of_level(c: int, n: int, num_levels: int) -> Any:
    """Row count of level c's id matrix, read from the decoded level symbols."""
    if num_levels == 1:
        return n
    return lambda out: int((out[0][:, 0] == c).sum())


def fit_lambda(kl: torch.Tensor, bits: torch.Tensor, avail: float) -> float:
    """Smallest lam whose per-label choice argmin(kl + lam bits) fits ``avail``."""

    def mean_bits(lam: float) -> float:
        pick = (kl + lam * bits).argmin(1, keepdim=True)
        return float(bits.gather(1, pick).mean())

    if mean_bits(0.0) <= avail:
        return 0.0
    lo, hi = -12.0, 2.0  # log10 lam
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if mean_bits(10**mid) <= avail else (mid, hi)
    return float(10**hi)
