"""Rate control of vqae-sparse: stored bytes, block slack and the budget's K.

All-in sizes: the stored tensors (:func:`model_bytes`), a few bytes of framing
per block (:func:`block_slack`) and the per-label payload, measured on the fit
sample; :data:`MARGIN` keeps the measured payload under the budget.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from labelzip.accounting import reference_bytes
from labelzip.codecs.vqae_lm.idcoding import (
    group_frequencies,
    num_slot_groups,
    rank_alphabet,
    slot_groups,
)
from labelzip.codecs.vqae_lm.levels import level_ks
from labelzip.codecs.vqae_lm.sparse_config import VQAESparseConfig
from labelzip.errors import ConfigError, UnreachableTargetError

__all__ = [
    "BLOCK_SLACK",
    "CODEBOOK_SIZE",
    "MARGIN",
    "SLACK_LABELS",
    "block_slack",
    "budget_config",
    "choose_k",
    "model_bytes",
]

logger = logging.getLogger(__name__)

CODEBOOK_SIZE = 256  # codewords per codebook: one byte per code
MARGIN = 0.02  # measured payload stays this far under the per-label budget
BLOCK_SLACK = 12  # bytes per block: u32 length, ANS tail word, bit padding
SLACK_LABELS = 256  # labels per block assumed by rate control (LM chunk = 1 window)


def model_bytes(cfg: VQAESparseConfig, k: int, num_classes: int) -> int:
    """Bytes of every stored tensor for K kept ids and C classes."""
    latent = cfg.num_chunks * cfg.chunk_dim
    decoder = latent * cfg.hidden + cfg.hidden + cfg.hidden * (k + 1) + k + 1
    books = cfg.num_stages * cfg.num_chunks * CODEBOOK_SIZE * cfg.chunk_dim
    tables = num_slot_groups(k) * rank_alphabet(num_classes)
    levels = len(level_ks(k, cfg.k_levels))
    tables += levels if levels > 1 else 0
    return 2 * (num_classes + decoder + books + tables)


def block_slack(num_labels: int) -> int:
    """Framing bytes of the blocks ``num_labels`` labels are assumed to fill."""
    return BLOCK_SLACK * math.ceil(num_labels / SLACK_LABELS)


def budget_config(
    num_labels: int, num_classes: int, budget_bytes: int, options: dict[str, Any]
) -> VQAESparseConfig:
    """The config of a codec with an all-in budget; fit picks K within it.

    Raises:
        ConfigError: invalid options.
        UnreachableTargetError: even K = 1 at 1 bit per id cannot fit next to
            the stored tensors (the exact check happens in ``fit``).
    """
    try:
        base = VQAESparseConfig(**options)
    except Exception as exc:
        raise ConfigError(f"invalid vqae-sparse codec options: {exc}") from exc
    k = base.k or 1
    model = model_bytes(base, k, num_classes)
    slack = block_slack(num_labels)
    # a lower bound of the payload: the codes and tail index (ids cost > 0)
    least = math.ceil(num_labels * (8 * base.code_bytes + base.tail_bits + k) / 8)
    need = model + slack + least
    if need > budget_bytes:
        ref = reference_bytes(num_labels, num_classes, "fp16")
        raise UnreachableTargetError(
            f"vqae-sparse needs more than {need} bytes for {num_labels} labels "
            f"({model} of them stored tensors) but the budget is {budget_bytes}; "
            f"the best reachable ratio is below {ref / need:.1f}x vs fp16; choose "
            "a lower ratio or fewer code bytes (num_chunks, num_stages)"
        )
    return base.model_copy(update={"budget_bytes": budget_bytes})


def choose_k(
    cfg: VQAESparseConfig,
    buckets: torch.Tensor,
    num_classes: int,
    num_labels: int | None,
) -> int:
    """Largest K whose measured mean payload plus model bytes fits the budget.

    ``buckets``: (n, K_max) rank buckets of the fit labels' top ids (one K for
    every label, ``k_levels=1``).
    """
    if cfg.budget_bytes is None or num_labels is None:
        raise ConfigError(
            "vqae-sparse with k=None needs budget_bytes and fit(num_labels=...); "
            "give a rate target (labelzip.rate.configure_codec) or k"
        )
    n, k_cap = buckets.shape
    alphabet = rank_alphabet(num_classes)
    # per-slot cost with tables pooled per slot group over all k_cap slots
    cols = slot_groups(k_cap)
    tables = group_frequencies(buckets, alphabet, cols)
    log2p = torch.log2(tables.double() / tables.double().sum(1, keepdim=True))
    slot_bits = torch.stack(
        [-log2p[cols[j]][buckets[:, j]].mean() for j in range(k_cap)]
    ) + buckets.double().mean(dim=0)
    cum = slot_bits.cumsum(0)  # cum[K-1] = id bits of K slots
    fixed = 8 * cfg.code_bytes + cfg.tail_bits
    slack = block_slack(num_labels)
    best = 0
    for k in range(1, k_cap + 1):
        model = model_bytes(cfg, k, num_classes)
        avail = 8 * (cfg.budget_bytes - model - slack) / num_labels
        if (float(cum[k - 1]) + fixed) <= avail * (1 - MARGIN):
            best = k
    if best == 0:
        model = model_bytes(cfg, 1, num_classes)
        need = model + slack + math.ceil((float(cum[0]) + fixed) * num_labels / 8)
        ref = reference_bytes(num_labels, num_classes, "fp16")
        raise UnreachableTargetError(
            f"vqae-sparse with K=1 needs ~{need} bytes for {num_labels} labels "
            f"({model} of them stored tensors), the budget is {cfg.budget_bytes}; "
            f"the best reachable ratio is ~{ref / need:.1f}x vs fp16; choose a "
            "lower ratio or fewer code bytes (num_chunks, num_stages)"
        )
    # exact check with the tables the chosen K really uses
    while best > 1:
        exact = group_frequencies(buckets[:, :best], alphabet, slot_groups(best))
        lp = torch.log2(exact.double() / exact.double().sum(1, keepdim=True))
        c = slot_groups(best)
        bits = sum(
            float(-lp[c[j]][buckets[:, j]].mean() + buckets[:, j].double().mean())
            for j in range(best)
        )
        model = model_bytes(cfg, best, num_classes)
        avail = 8 * (cfg.budget_bytes - model - slack) / num_labels
        if bits + fixed <= avail * (1 - MARGIN):
            break
        best -= 1
    logger.info("vqae-sparse: K=%d for %d bits per label", best, int(avail))
    return best
