"""What each distillation framework stores, as byte formulas.

Every framework turns (images N, epochs E, classes C, options) into a
:class:`LabelCost`: label payload, augmentation side information, model bytes
and container (header) bytes. The formulas follow each framework's released
relabelling code; docs/storage.md derives every constant below and shows that
the SRe2L/CDA formula reproduces the published ImageNet-1K label sizes.

Vision frameworks store one label per (image, epoch) "view" (or a pruned
subset); LM frameworks store one next-token distribution per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from labelzip.errors import ConfigError
from labelzip.storage.options import CostInputs, LabelCost, codec_numbers

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PRUNE_RATIO",
    "DEFAULT_TOPK",
    "FKD_SIDE_PER_VIEW",
    "FRAMEWORKS",
    "LPQLD_SIDE_PER_BATCH",
    "LPQLD_SIDE_PER_VIEW",
    "SEED_BYTES",
    "SRE2L_SIDE_PER_BATCH",
    "SRE2L_SIDE_PER_VIEW",
    "TORCH_SAVE_FILE_BYTES",
    "VALUE_BYTES",
    "FrameworkInfo",
    "frameworks_for_mode",
    "get_framework",
    "json_index_bytes",
]

# Bytes of one stored logit value.
VALUE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}

# SRe2L/CDA batch file `[coords, flip, mix_index, mix_lam, mix_bbox, logits]`
# (SRe2L relabel/generate_soft_label.py + utils_fkd.py):
SRE2L_SIDE_PER_VIEW: dict[str, int] = {
    "coords (4 x float32, RandomResizedCrop box / image size)": 16,
    "flip (bool, collated Python bool)": 1,
    "mix_index (int64, torch.randperm)": 8,
}
SRE2L_SIDE_PER_BATCH: dict[str, int] = {
    "mix_lam (float64, np.random.beta)": 8,
    "mix_bbox (4 x int64, np.clip)": 32,
}
# LPQLD casts its side information down (generate_soft_label_pruning_batch.py).
LPQLD_SIDE_PER_VIEW: dict[str, int] = {
    "coords (4 x float16)": 8,
    "flip (bool)": 1,
    "mix_index (uint8, valid for batch <= 256)": 1,
}
LPQLD_SIDE_PER_BATCH: dict[str, int] = {
    "mix_lam (float64)": 8,
    "mix_bbox (4 x uint8)": 4,
}
# FKD: one file per image, `[coords (N,4) float32, flip (N,) bool, labels]`.
FKD_SIDE_PER_VIEW: dict[str, int] = {"coords (4 x float32)": 16, "flip (bool)": 1}

# Container bytes of one torch.save file (zip entries, pickle, 64-byte record
# alignment, filesystem block padding): the value the published SRe2L sizes pin
# down (docs/storage.md, "Constants and their sources").
TORCH_SAVE_FILE_BYTES = 3072

# A uint64 seed from which labelzip replays image order, crops, flips and mix
# partners; the augmentation recipe itself lives in the archive's JSON header.
SEED_BYTES = 8

DEFAULT_BATCH_SIZE: dict[str, int] = {
    "sre2l": 1024,  # SRe2L relabel README: -b 1024
    "cda": 1024,  # CDA reuses the SRe2L relabel script
    "rded": 1024,  # materialised variant written like SRe2L
    "lpld": 128,  # LPLD cfg LPLD_in1k_[4k].yaml: batch_size 128
    "lpqld": 128,  # LPQLD cfg LPQLD_in1k_[4k].yaml: batch_size 128
    "labelzip": 1024,  # only used when --augment stored
}
DEFAULT_PRUNE_RATIO: dict[str, float] = {
    "lpld": 40.0,  # LPLD headline setting (prune_ratio 0.975)
    "lpqld": 10.0,  # LPQLD reproduce script: prune_ratio 0.9
}
DEFAULT_TOPK: dict[str, int] = {
    "lpqld": 50,  # MR-50, the recommended x80 ImageNet-1K labels
    "fkd": 5,  # FKD default label_type marginal_smoothing_k5
    "topk": 50,  # LM top-k log-probs
}


CostFn = Callable[[CostInputs, str], list[tuple[str, LabelCost]]]


@dataclass(frozen=True)
class FrameworkInfo:
    name: str
    modes: tuple[str, ...]  # "vision", "lm"
    summary: str
    cost: CostFn


# -- helpers ---------------------------------------------------------------------
def _augment(inp: CostInputs, native: str) -> str:
    return inp.options.augment or native


def _batch(inp: CostInputs, name: str) -> int:
    return inp.options.batch_size or DEFAULT_BATCH_SIZE[name]


def _prune(inp: CostInputs, name: str) -> Fraction:
    ratio = inp.options.prune_ratio or DEFAULT_PRUNE_RATIO[name]
    return Fraction(str(ratio))


def _topk(inp: CostInputs, name: str) -> int:
    k = inp.options.topk or DEFAULT_TOPK[name]
    if k > inp.num_classes:
        raise ConfigError(
            f"topk {k} is larger than the number of classes {inp.num_classes}; "
            "pass a smaller --topk"
        )
    return k


def json_index_bytes(num_indices: int, population: int) -> int:
    """Expected bytes of ``num_indices`` image ids in a JSON list (``"i, "`` each).

    Ids are drawn from ``range(population)``; every full epoch lists each id once,
    so the expectation uses the exact mean decimal length over that range.
    """
    if num_indices == 0 or population == 0:
        return 0
    digits = 0
    low, width = 0, 1
    while low < population:
        high = min(population, 10**width)
        digits += (high - low) * width
        low, width = high, width + 1
    per_id_times_population = digits + 2 * population  # digits plus ", "
    return -(-num_indices * per_id_times_population // population)


def _pruned_batches(inp: CostInputs, batch: int, ratio: Fraction) -> tuple[int, int]:
    """(stored batch files, labels per file) of LPLD/LPQLD's batch-level pruning.

    Their relabel code drops the last partial batch and keeps
    ``int(E * batches_per_epoch * (1 - prune_ratio))`` batches; we use the exact
    ``floor(E * batches_per_epoch / R)`` (at least one batch).
    """
    per_file = min(batch, inp.num_images)
    per_epoch = inp.num_images // per_file
    files = max(1, math.floor(Fraction(inp.epochs * per_epoch) / ratio))
    return files, per_file


# -- vision frameworks ---------------------------------------------------------
def _sre2l_like(inp: CostInputs, name: str) -> LabelCost:
    """Dense logits per view in per-batch torch.save files (SRe2L, CDA, RDED-mat)."""
    batch = _batch(inp, name)
    views = inp.num_views
    files = inp.epochs * math.ceil(inp.num_images / batch)
    label = views * inp.num_classes * VALUE_BYTES[inp.options.logit_dtype]
    augment = _augment(inp, "stored")
    if augment == "stored":
        side = views * sum(SRE2L_SIDE_PER_VIEW.values())
        side += files * sum(SRE2L_SIDE_PER_BATCH.values())
    else:
        side = SEED_BYTES
    notes = (f"{files} batch files of {batch} views",)
    return LabelCost(
        views, label, side, 0, files * TORCH_SAVE_FILE_BYTES, augment, notes
    )


def _sre2l(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    return [(name, _sre2l_like(inp, name))]


def _rded(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    teacher = inp.options.teacher_bytes
    notes: tuple[str, ...] = (
        ("labels computed online; teacher shipped",)
        if teacher is not None
        else ("labels computed online; teacher not counted (pass --teacher-bytes)",)
    )
    online = LabelCost(0, 0, 0, teacher or 0, 0, "online", notes)
    return [
        ("rded-online", online),
        ("rded-materialised", _sre2l_like(inp, name)),
    ]


def _lpld(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    ratio = _prune(inp, name)
    files, per_file = _pruned_batches(inp, _batch(inp, name), ratio)
    stored = files * per_file
    label = stored * inp.num_classes * VALUE_BYTES[inp.options.logit_dtype]
    augment = _augment(inp, "stored")
    if augment == "stored":
        side = stored * sum(SRE2L_SIDE_PER_VIEW.values())
        side += files * sum(SRE2L_SIDE_PER_BATCH.values())
        side += json_index_bytes(stored, inp.num_images)
    else:
        side = SEED_BYTES
    notes = (f"keeps {stored} of {inp.num_views} views (1/{float(ratio):g})",)
    cost = LabelCost(
        stored, label, side, 0, files * TORCH_SAVE_FILE_BYTES, augment, notes
    )
    return [(name, cost)]


def _lpqld(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    ratio = _prune(inp, name)
    k = _topk(inp, name)
    batch = _batch(inp, name)
    files, per_file = _pruned_batches(inp, batch, ratio)
    stored = files * per_file
    id_bytes = 2 if inp.num_classes <= 32767 else 4  # int16 ids (.short())
    label = stored * k * (VALUE_BYTES["fp16"] + id_bytes)
    augment = _augment(inp, "stored")
    if augment == "stored":
        per_view = sum(LPQLD_SIDE_PER_VIEW.values()) + (0 if per_file <= 256 else 7)
        side = stored * per_view + files * sum(LPQLD_SIDE_PER_BATCH.values())
        side += json_index_bytes(stored, inp.num_images)
    else:
        side = SEED_BYTES
    notes = (
        f"keeps {stored} of {inp.num_views} views (1/{float(ratio):g}), "
        f"top-{k} fp16 values + int{8 * id_bytes} ids",
    )
    cost = LabelCost(
        stored, label, side, 0, files * TORCH_SAVE_FILE_BYTES, augment, notes
    )
    return [(name, cost)]


def _fkd(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    k = _topk(inp, name)
    views = inp.num_views
    # ids share the fp16 value array; fp16 holds integers exactly only to 2048.
    value = 2 if inp.num_classes <= 2048 else 4
    label = views * k * 2 * value
    augment = _augment(inp, "stored")
    side = (
        views * sum(FKD_SIDE_PER_VIEW.values()) if augment == "stored" else SEED_BYTES
    )
    notes = (f"top-{k} values and ids as {'fp16' if value == 2 else 'fp32'}",)
    header = inp.num_images * TORCH_SAVE_FILE_BYTES  # one file per image
    return [(name, LabelCost(views, label, side, 0, header, augment, notes))]


def _labelzip(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    codec = codec_numbers(inp.options, inp.num_classes)
    stored = math.ceil(
        Fraction(inp.num_views) / Fraction(str(inp.options.labelzip_prune_ratio))
    )
    label = codec.payload_bytes(stored)
    notes = [f"codec: {codec.source}"]
    if inp.mode == "lm":  # token positions are implicit, nothing to replay
        augment, side = "none", 0
    else:
        augment = _augment(inp, "seed")
        if augment == "stored":
            batches = math.ceil(stored / _batch(inp, name))
            side = stored * sum(SRE2L_SIDE_PER_VIEW.values())
            side += batches * sum(SRE2L_SIDE_PER_BATCH.values())
        else:
            side = SEED_BYTES
    if codec.header_bytes is None:
        notes.append("archive header not known (pass --codec-header-bytes)")
    header = codec.header_bytes or 0
    cost = LabelCost(
        stored, label, side, codec.model_bytes, header, augment, tuple(notes)
    )
    return [(name, cost)]


# -- LM frameworks -----------------------------------------------------------------
def _lm_dense(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    tokens = inp.num_views
    label = tokens * inp.num_classes * VALUE_BYTES[inp.options.logit_dtype]
    notes = (f"{inp.options.logit_dtype} x {inp.num_classes} per token",)
    return [(name, LabelCost(tokens, label, 0, 0, 0, "none", notes))]


def _lm_topk(inp: CostInputs, name: str) -> list[tuple[str, LabelCost]]:
    tokens = inp.num_views
    k = _topk(inp, name)
    id_bits = max(1, math.ceil(math.log2(inp.num_classes)))
    label = -(-tokens * k * (16 + id_bits) // 8)  # bit-packed, one stream
    notes = (f"top-{k}: fp16 value + {id_bits}-bit id per entry",)
    return [(name, LabelCost(tokens, label, 0, 0, 0, "none", notes))]


FRAMEWORKS: dict[str, FrameworkInfo] = {
    "sre2l": FrameworkInfo(
        "sre2l", ("vision",), "dense fp16 logits + stored augmentation", _sre2l
    ),
    "cda": FrameworkInfo("cda", ("vision",), "same label format as SRe2L", _sre2l),
    "rded": FrameworkInfo(
        "rded", ("vision",), "online labels (ship the teacher) vs materialised", _rded
    ),
    "lpld": FrameworkInfo(
        "lpld", ("vision",), "random label pruning (keep 1/R of the views)", _lpld
    ),
    "lpqld": FrameworkInfo(
        "lpqld", ("vision",), "pruning + top-k fp16 values and int16 ids", _lpqld
    ),
    "fkd": FrameworkInfo(
        "fkd", ("vision",), "top-k per view, one file per image", _fkd
    ),
    "labelzip": FrameworkInfo(
        "labelzip", ("vision", "lm"), "a labelzip codec (bits/label + model)", _labelzip
    ),
    "dense": FrameworkInfo(
        "dense", ("lm",), "dense per-token distributions", _lm_dense
    ),
    "topk": FrameworkInfo("topk", ("lm",), "top-k values + bit-packed ids", _lm_topk),
}


def frameworks_for_mode(mode: str) -> list[str]:
    return [name for name, info in FRAMEWORKS.items() if mode in info.modes]


def get_framework(name: str, mode: str) -> FrameworkInfo:
    """The framework ``name``, checked against the mode ("vision" or "lm")."""
    choices = ", ".join(frameworks_for_mode(mode))
    if name not in FRAMEWORKS or mode not in FRAMEWORKS[name].modes:
        what = "LM" if mode == "lm" else "image"
        raise ConfigError(f"unknown {what} framework {name!r}; choose one of {choices}")
    return FRAMEWORKS[name]
