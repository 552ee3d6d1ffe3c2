"""Rate control for the VQAE codec: pick (K, M, H) for an all-in byte budget.

The budget covers the per-label payload at its fixed rate (a guaranteed upper
bound: entropy coding only shrinks it) plus the model shipped once (codebooks
and decoder in fp16). The decoder's share therefore depends on the label
count: at 20k labels a 128-wide decoder for C=1000 (~0.28 MB) is a quarter of
a 40x budget, at millions of labels it is noise.

For each decoder width of :data:`HIDDEN_LADDER` the payload gets what the
model leaves; the measured split puts about one (id, value) slot per
:data:`BITS_PER_ID` payload bits (at C=1000; scaled by slot size otherwise)
and the rest in code indices, then adds chunks while the budget allows. The
width with the lowest predicted distortion wins, from a model fitted to
measurements on real teacher outputs (EfficientNet-Lite0 ImageNet views,
C=1000; docs/vqae-design.md, sections 4, 5 and "Final configuration")::

    predicted KL(T=4) ~ payload_bits ** -0.5 * (hidden_dim / 128) ** -0.25

so at small N the search trades decoder width for payload bits, and at large N
it takes the widest decoder and spends the rest on the payload.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from labelzip.codecs.vqae.config import VQAEConfig
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

# Most code indices per label the search uses (768 code bits at k=16): beyond
# this the measured gain per bit is small and encoding slows down.
MAX_CHUNKS = 192

# Most explicit ids per label the search uses.
MAX_IDS = 16

# Measured split of the payload (see module docstring): about one explicit id
# (10-bit id + 5-bit value at C=1000) per this many payload bits, the rest in
# 8-bit codes.
BITS_PER_ID = 25.0

# Distortion model: predicted KL(T=4) ~ payload_bits**-RATE_EXPONENT *
# (hidden_dim / 128)**-WIDTH_EXPONENT (fitted, docs/vqae-design.md).
RATE_EXPONENT = 0.5
WIDTH_EXPONENT = 0.25


def model_bytes_for(config: VQAEConfig, num_classes: int) -> int:
    """fp16 bytes of the codebooks and decoder a config ships (no entropy tables)."""
    c = config
    latent = c.num_chunks * c.chunk_dim
    heads = c.num_ids if c.value_bits == 0 else 0
    params = (
        c.num_stages * c.num_chunks * c.codebook_size * c.chunk_dim  # codebooks
        + c.hidden_dim * latent
        + c.hidden_dim  # in_weight, in_bias
        + c.num_ids * c.hidden_dim  # id_scale
        + num_classes * c.hidden_dim
        + num_classes  # out_weight, out_bias
        + heads * c.hidden_dim
        + heads  # value_weight, value_bias (only when values are not stored)
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


def predicted_kl(config: VQAEConfig, num_classes: int) -> float:
    """Relative predicted KL(teacher_T4 || decoded_T4) of a config (lower is better)."""
    bits = _payload_bits(config, num_classes)
    return float(bits**-RATE_EXPONENT * (config.hidden_dim / 128) ** -WIDTH_EXPONENT)


def _payload_bits(config: VQAEConfig, num_classes: int) -> int:
    value_bits = config.value_bits if config.num_ids else 0
    slot = bits_for(num_classes) + value_bits
    return config.num_ids * slot + config.num_stages * config.num_chunks * bits_for(
        config.codebook_size
    )


def _split(
    payload_bits: int, num_classes: int, base: VQAEConfig, fixed: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Measured best (num_ids, num_chunks) for a payload of ``payload_bits``."""
    value_bits = base.value_bits
    slot = bits_for(num_classes) + value_bits
    code = base.num_stages * bits_for(base.codebook_size)
    if "num_ids" in fixed:
        num_ids = base.num_ids
    else:
        # The measured rule (C=1000, 15-bit slots) scales with the slot size.
        scaled = BITS_PER_ID * slot / (bits_for(1000) + 5)
        num_ids = int(round(payload_bits / scaled))
        num_ids = max(1, min(num_ids, MAX_IDS, num_classes))
    if "num_chunks" in fixed:
        num_chunks = base.num_chunks
    else:
        num_chunks = min(
            MAX_CHUNKS, (payload_bits - num_ids * (slot if num_ids else 0)) // code
        )
        # Too few bits: fewer ids (none only when even one id does not fit, and
        # then top-1 agreement is no longer exact).
        if num_chunks < 1 and "num_ids" not in fixed:
            num_ids = max(0, (payload_bits - code) // slot)
            num_chunks = min(MAX_CHUNKS, (payload_bits - num_ids * slot) // code)
    if num_chunks < 1:
        return None
    return {"num_ids": num_ids, "num_chunks": int(num_chunks)}


def choose_config(
    *,
    num_labels: int,
    num_classes: int,
    budget_bytes: int,
    fixed: Mapping[str, Any],
) -> VQAEConfig:
    """The best predicted config whose payload + model bytes fit ``budget_bytes``.

    For each decoder width of :data:`HIDDEN_LADDER` the payload gets what the
    model leaves, split into explicit ids and codes by the measured rule; the
    width with the lowest :func:`predicted_kl` wins. Options in ``fixed`` are
    kept as given.

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
        base = VQAEConfig(**fixed)
    except Exception as exc:
        raise ConfigError(f"invalid vqae options: {exc}") from exc
    if base.num_ids > num_classes:
        raise ConfigError(f"num_ids={base.num_ids} exceeds the {num_classes} classes")
    widths = [base.hidden_dim] if "hidden_dim" in fixed else list(HIDDEN_LADDER)
    best: tuple[float, VQAEConfig] | None = None
    smallest: int | None = None
    for width in widths:
        sized = base.model_copy(update={"hidden_dim": width})
        smallest = _min_total(sized, num_classes, num_labels, fixed, smallest)
        # Start from the bits the smallest model would leave, then step down
        # until the split's own model (codebooks grow with M) fits as well.
        blocks = 2 * max(1, math.ceil(num_labels / ASSUMED_BLOCK_LABELS))
        floor_model = _min_model(sized, num_classes, fixed)
        spare = budget_bytes - blocks - floor_model
        payload_bits = (8 * spare) // num_labels if spare > 0 else 0
        while payload_bits > 0:
            split = _split(payload_bits, num_classes, sized, fixed)
            if split is None:
                break
            config = VQAEConfig(**{**sized.model_dump(), **split})
            excess = _total(config, num_classes, num_labels) - budget_bytes
            if excess <= 0:
                config = _fill(config, num_classes, num_labels, budget_bytes, fixed)
                score = predicted_kl(config, num_classes)
                if best is None or score < best[0]:
                    best = (score, config)
                break
            payload_bits -= max(1, (8 * excess) // num_labels)
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


def _fill(
    config: VQAEConfig,
    num_classes: int,
    num_labels: int,
    budget_bytes: int,
    fixed: Mapping[str, Any],
) -> VQAEConfig:
    """Add chunks while the budget allows (the split's stepping can undershoot)."""
    if "num_chunks" in fixed:
        return config
    while config.num_chunks < MAX_CHUNKS:
        more = config.model_copy(update={"num_chunks": config.num_chunks + 1})
        if _total(more, num_classes, num_labels) > budget_bytes:
            break
        config = more
    return config


def _total(config: VQAEConfig, num_classes: int, num_labels: int) -> int:
    return model_bytes_for(config, num_classes) + payload_bytes_for(
        config, num_classes, num_labels
    )


def _min_model(base: VQAEConfig, num_classes: int, fixed: Mapping[str, Any]) -> int:
    """Model bytes at this width with the fewest chunks and ids allowed."""
    update: dict[str, Any] = {}
    if "num_ids" not in fixed:
        update["num_ids"] = 0
    if "num_chunks" not in fixed:
        update["num_chunks"] = 1
    return model_bytes_for(base.model_copy(update=update), num_classes)


def _min_total(
    base: VQAEConfig,
    num_classes: int,
    num_labels: int,
    fixed: Mapping[str, Any],
    current: int | None,
) -> int:
    """Smallest all-in size at this width (1 chunk, no ids unless fixed)."""
    update: dict[str, Any] = {}
    if "num_ids" not in fixed:
        update["num_ids"] = 0
    if "num_chunks" not in fixed:
        update["num_chunks"] = 1
    total = _total(base.model_copy(update=update), num_classes, num_labels)
    return total if current is None else min(current, total)
