"""Token ids coded by their rank under a unigram prior (vqae-sparse, vqae-sampled).

An LM's likely next tokens are mostly frequent ones, so an id is stored as its
rank r in the order of a fitted unigram prior: the bucket ``floor(log2(r + 1))``
is ANS-coded with one frequency table per group of head slots (0 | 1-2 | 3-6 |
...), the bucket's low bits are stored raw (variable-width bit fields).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from labelzip.codecs.entropy import quantize_counts

__all__ = [
    "LOG_PRIOR_FLOOR",
    "MAX_GROUPS",
    "group_frequencies",
    "num_slot_groups",
    "pack_varbits",
    "prior_order",
    "rank_alphabet",
    "rank_bucket",
    "slot_groups",
    "unigram_log_prior",
    "unpack_varbits",
]

MAX_GROUPS = 8  # slot groups with their own id table: 0 | 1-2 | 3-6 | ... | 127+


LOG_PRIOR_FLOOR = -60.0  # fp16-safe floor of the log unigram prior


def unigram_log_prior(log_p: torch.Tensor) -> torch.Tensor:
    """(C,) fp16 log of the mean teacher distribution of (n, C) log-probs (floored)."""
    prior = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])
    return prior.clamp_min(LOG_PRIOR_FLOOR).to(torch.float16)


def prior_order(log_prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) rank -> id and (C,) id -> rank, most probable first (stable ties)."""
    order = torch.argsort(log_prior.float(), descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return order, rank


def rank_alphabet(num_classes: int) -> int:
    """Rank buckets: b = floor(log2(r + 1)) for ranks 0..C-1."""
    return int(math.floor(math.log2(num_classes))) + 1


def num_slot_groups(k: int) -> int:
    return min(MAX_GROUPS, int(math.floor(math.log2(k))) + 1)


def slot_groups(k: int) -> list[int]:
    """Slot j -> its group's table: 0 | 1-2 | 3-6 | 7-14 | ... (capped)."""
    return [min(MAX_GROUPS - 1, int(math.floor(math.log2(j + 1)))) for j in range(k)]


def group_frequencies(
    buckets: torch.Tensor, alphabet: int, cols: list[int]
) -> torch.Tensor:
    """(groups, alphabet) int16 frequencies of the buckets (entries < 0 skipped)."""
    counts = torch.zeros(max(cols) + 1, alphabet, dtype=torch.int64)
    for j, t in enumerate(cols):
        col = buckets[:, j]
        counts[t] += torch.bincount(col[col >= 0], minlength=alphabet)
    return quantize_counts(counts)


def rank_bucket(ranks: torch.Tensor) -> torch.Tensor:
    """floor(log2(r + 1)) for int64 ranks, exact (no float rounding)."""
    r = ranks + 1
    out = torch.zeros_like(r)
    for shift in (16, 8, 4, 2, 1):
        big = r >= (1 << shift)
        out += big.long() * shift
        r = torch.where(big, r >> shift, r)
    return out


def pack_varbits(values: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Concatenate the ``widths[i]`` low bits of each value (LSB first) into bytes."""
    if values.numel() == 0 or int(widths.max()) == 0:
        return torch.zeros(0, dtype=torch.uint8)
    j = torch.arange(int(widths.max()))
    bits = (values[:, None] >> j) & 1
    flat = bits[j[None] < widths[:, None]].to(torch.uint8).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little"))


def unpack_varbits(data: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_varbits`: (n,) int64 values."""
    total = int(widths.sum())
    if total == 0:
        return torch.zeros(widths.numel(), dtype=torch.int64)
    bits = torch.from_numpy(
        np.unpackbits(data.numpy(), count=total, bitorder="little").astype(np.int64)
    )
    j = torch.arange(int(widths.max()))
    start = widths.cumsum(0) - widths
    idx = (start[:, None] + j).clamp_max(total - 1)
    valid = j[None] < widths[:, None]
    return ((bits[idx] * valid) << j).sum(dim=1)
