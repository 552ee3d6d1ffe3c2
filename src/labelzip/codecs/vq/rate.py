"""Rate control for the VQAE codec: pick (K, M, k, R, H) for an all-in byte budget.

The budget covers the per-label payload at its fixed rate (a guaranteed upper
bound: entropy coding only shrinks it) plus the model shipped once (codebooks
and decoder in fp16). The decoder's share therefore depends on the label
count: at 20k labels a 128-wide decoder for C=1000 (~0.35 MB) is a third of a
40x budget, at millions of labels it is noise. The choice below walks a small
grid and keeps the feasible configuration with the best *predicted* fidelity,
from a distortion model fitted to measurements on real teacher outputs
(EfficientNet-Lite0 ImageNet views, C=1000; docs/vqae-design.md, "Rate control"):

    predicted KL(T=4) = a * code_bits ** -alpha + b * hidden_dim ** -beta

Both terms fall with more bits and a wider decoder, with diminishing returns,
so at small N the search trades decoder width for code bits, and at large N it
spends the budget on code bits up to the grid's limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from labelzip.codecs.vq.config import VQAEConfig
from labelzip.errors import ConfigError, UnreachableTargetError
from labelzip.ops.bitpack import bits_for

__all__ = [
    "ASSUMED_BLOCK_LABELS",
    "HIDDEN_LADDER",
    "choose_config",
    "model_bytes_for",
    "payload_bytes_for",
    "predicted_kl",
]

# Rate control reserves one padding byte per section per this many labels: the
# archive encodes blocks of thousands of labels, each padding its two bit streams.
ASSUMED_BLOCK_LABELS = 1024

# Decoder widths the search considers (narrow ones rescue small label sets).
HIDDEN_LADDER = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)

# Most code indices per label the search uses: beyond this the measured gain
# per bit is small and encode/decode slow down.
MAX_CHUNKS = 96

# Distortion model (fitted to measurements, see module docstring).
_A, _ALPHA = 40.0, 1.0
_B, _BETA = 1.0, 1.0


def model_bytes_for(config: VQAEConfig, num_classes: int) -> int:
    """fp16 bytes of the codebooks and decoder a config ships (no entropy tables)."""
    c = config
    latent = c.num_chunks * c.chunk_dim
    params = (
        c.num_stages * c.num_chunks * c.codebook_size * c.chunk_dim  # codebooks
        + c.hidden_dim * latent
        + c.hidden_dim  # in_weight, in_bias
        + c.num_ids * c.hidden_dim  # id_scale
        + num_classes * c.hidden_dim
        + num_classes  # out_weight, out_bias
        + c.num_ids * c.hidden_dim
        + c.num_ids  # value_weight, value_bias
    )
    return 2 * params


def payload_bytes_for(config: VQAEConfig, num_classes: int, num_labels: int) -> int:
    """Upper bound on the payload of ``num_labels`` labels at the fixed rate.

    Exact bits plus one padding byte per section per :data:`ASSUMED_BLOCK_LABELS`.
    """
    value_bits = config.value_bits if config.num_ids else 0
    id_bits = config.num_ids * (bits_for(num_classes) + value_bits)
    code_bits = config.num_stages * config.num_chunks * bits_for(config.codebook_size)
    blocks = max(1, math.ceil(num_labels / ASSUMED_BLOCK_LABELS))
    sections = blocks * (2 if config.num_ids else 1)
    return math.ceil(num_labels * (id_bits + code_bits) / 8) + sections


def predicted_kl(config: VQAEConfig) -> float:
    """Predicted KL(teacher_T4 || decoded_T4) of a config (lower is better)."""
    code_bits = config.num_stages * config.num_chunks * bits_for(config.codebook_size)
    return _A * code_bits**-_ALPHA + _B * config.hidden_dim**-_BETA


def _candidates(num_classes: int, fixed: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Grid of free parameters; user-fixed ones are held at their values."""
    base = VQAEConfig()
    num_ids = [fixed.get("num_ids", min(base.num_ids, num_classes))]
    hidden = [fixed["hidden_dim"]] if "hidden_dim" in fixed else list(HIDDEN_LADDER)
    stages = [fixed.get("num_stages", base.num_stages)]
    books = [fixed.get("codebook_size", base.codebook_size)]
    chunks = (
        [fixed["num_chunks"]] if "num_chunks" in fixed else range(1, MAX_CHUNKS + 1)
    )
    for k in num_ids:
        for h in hidden:
            for r in stages:
                for book in books:
                    for m in chunks:
                        yield {
                            "num_ids": k,
                            "hidden_dim": h,
                            "num_stages": r,
                            "codebook_size": book,
                            "num_chunks": m,
                        }


def choose_config(
    *,
    num_labels: int,
    num_classes: int,
    budget_bytes: int,
    fixed: Mapping[str, Any],
) -> VQAEConfig:
    """The best predicted config whose payload + model bytes fit ``budget_bytes``.

    Raises:
        ConfigError: invalid fixed options or sizes.
        UnreachableTargetError: nothing fits; the message names the smallest
            reachable all-in size and its ratio against fp16 logits.
    """
    if num_labels < 1 or num_classes < 2:
        raise ConfigError(
            f"rate control needs num_labels >= 1 and num_classes >= 2, got "
            f"{num_labels} and {num_classes}"
        )
    fixed = {k: v for k, v in fixed.items() if k != "kind"}
    try:
        VQAEConfig(**fixed)
    except Exception as exc:
        raise ConfigError(f"invalid vqae options: {exc}") from exc
    best: tuple[float, VQAEConfig] | None = None
    smallest: int | None = None
    for free in _candidates(num_classes, fixed):
        config = VQAEConfig(**{**fixed, **free})
        total = model_bytes_for(config, num_classes) + payload_bytes_for(
            config, num_classes, num_labels
        )
        smallest = total if smallest is None else min(smallest, total)
        if total > budget_bytes:
            continue
        score = predicted_kl(config)
        if best is None or score < best[0]:
            best = (score, config)
    if best is None:
        assert smallest is not None
        dense = 2 * num_labels * num_classes
        raise UnreachableTargetError(
            f"no vqae configuration fits {budget_bytes} bytes for {num_labels} labels "
            f"of {num_classes} classes; the smallest takes {smallest} bytes "
            f"(best reachable ratio {dense / smallest:.1f}x vs fp16, "
            f"{8 * smallest / num_labels:.1f} bits per label); lower the ratio or "
            "encode more labels so the decoder is amortised"
        )
    return best[1]
