"""VQAE-ctx: soft labels predicted from the replayed view's context, plus a VQ residual.

A relabelled view (epoch e, image i) is rendered from a stored seed, so encoder
and decoder both know for free its image i, its CutMix/Mixup partner j and the
own image's weight lambda (a :class:`~labelzip.codecs.base.LabelContext`). The
teacher's label of such a view is close to a mix of per-image prototypes::

    prior = lambda * P[i] + (1 - lambda) * P[j]        (logit space, (N, C))

so the codec stores P once (M x C, uint8 on one grid, or fp16) and per label
only the index of one codeword of a small residual codebook B (K x C, fp16),
ANS-coded with a stored frequency table (:mod:`labelzip.codecs.entropy`)::

    decoded = prior + B[code]

K = 1 stores no per-label bits at all (the prior plus one learned offset).
Prototypes and codebook are fitted jointly by minimising KL(teacher || decoded)
summed over KD temperatures, alternating code assignment (exhaustive: the
codeword with the least KL) and Adam steps. Logit-space mixing measured better
than mixing probabilities (quickstart label set: KL(T=4) 0.023 vs 0.031 with no
per-label bits; docs/vqae-design.md, "Context prior").

Everything the decoder needs is stored, so a codec rebuilt with
:meth:`ViewMixCodec.from_stored` encodes as well as decodes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

import torch
from pydantic import Field, model_validator

from labelzip.codecs.base import (
    Codec,
    CodecConfig,
    EncodedBlock,
    LabelContext,
    LogitSource,
    check_logits,
    check_model_tensors,
    iterate_source,
)
from labelzip.codecs.entropy import CategoricalStreamCoder, quantize_counts
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    UnreachableTargetError,
)
from labelzip.ops.bitpack import pack_bits, packed_size, unpack_bits

__all__ = [
    "BLOCK_OVERHEAD_BYTES",
    "CONTEXT_KIND",
    "PROTOTYPE_SWITCH_BITS",
    "RATE_MARGIN",
    "RD_SLACK_BITS",
    "SEEN_RATE_MARGIN",
    "ViewContextCodec",
    "ViewContextConfig",
    "ViewMixCodec",
    "ViewMixConfig",
    "decode_prototypes",
    "check_label_context",
    "kl_sum",
    "dequantize_prototypes",
    "fit_sample",
    "no_context_error",
    "prototype_shapes",
    "restore_prototypes",
    "stored_context_config",
    "fit_view_mix_prior",
    "payload_need_bytes",
    "prototype_bytes",
    "quantize_prototypes",
    "store_prototypes",
    "stored_bytes",
    "view_mix_prior",
]

logger = logging.getLogger(__name__)

CONTEXT_KIND = "view-mix"  # the context the codec needs, recorded in its config
# Rate control reserves this many bytes per block for ANS flushing/padding and
# assumes blocks of ASSUMED_BLOCK_LABELS labels (archives use 4096).
BLOCK_OVERHEAD_BYTES = 8
ASSUMED_BLOCK_LABELS = 1024
# Coded bits may exceed the fitted entropy on labels the table was not fitted
# on; rate control and the fit's check keep this relative margin.
RATE_MARGIN = 0.03
# ... and this one on the labels the fit saw (they encode to the codes it
# measured; float rounding may flip a near tie).
SEEN_RATE_MARGIN = 0.005
# Rate control plans codebooks one bit per label larger than uniform codes would
# fit; the fit's rate-distortion assignment (rate_penalty) brings the coded
# size back under payload_budget_bytes.
RD_SLACK_BITS = 1.0
# ... but at least this many bits per label: below that the RD fit sends almost
# every label to one codeword, worse than K = 1 (measured: KL(T=4) 0.029 vs 0.023).
MIN_PLANNED_BITS = 0.25
MAX_CODEBOOK = 256
# Rate control stores 4-bit instead of 8-bit prototypes (unless the user fixed
# prototype_bits) when the bytes this frees give every stored label at least
# this many more code bits. Measured (IPC 50 RDED set, prior only): 4-bit levels
# cost KL(T=4) +0.0006 (0.0298 vs 0.0292); one more code bit per label is worth
# ~0.004 (K = 2 -> 4, docs/vqae-design.md), so 0.15 bits break even.
PROTOTYPE_SWITCH_BITS = 0.15
_GRID_BYTES = 8  # the float32 [low, step] grid of 4/8-bit prototypes
# Config fields to_config leaves out while they hold their default: the ones
# only the fit reads, and the prototype coding fields, whose defaults are what
# archives written before those fields existed use (so they can never change).
OMITTED_WHEN_DEFAULT = frozenset(
    {
        "fit_threads",
        "learning_rate",
        "max_train_labels",
        "prior_steps",
        "prototype_coding",
        "prototype_delta",
        "round_steps",
        "rounds",
        "seed",
        "temperatures",
    }
)
_WIDEST_FLOAT = 2.2250738585072014e-308  # repr: 23 characters, the most of any x >= 0
# Labels scored against every codeword at once: at most _ASSIGN_CHUNK, and at
# most _ASSIGN_VALUES label x codeword x class values, so that the (rows, K, C)
# candidates stay small at C = 1000 (4096 x 64 x 1000 floats were 1 GiB each,
# and the KL keeps several such temporaries per temperature).
_ASSIGN_CHUNK = 4096
_ASSIGN_VALUES = 1 << 24


class ViewContextConfig(CodecConfig):
    """Fields every view-context codec has: prototypes, payload budget, the fit."""

    num_images: int | None = Field(
        default=None,
        ge=2,
        le=10_000_000,
        description="M: images the context indexes (prototypes stored); "
        "default: the fit context's",
    )
    payload_budget_bytes: int | None = Field(
        default=None,
        ge=0,
        description="payload the fit may spend on the labels it is told of "
        "(set by rate control; the fit makes its coded labels fit)",
    )
    prototype_bits: Literal[4, 8, 16] = Field(
        default=8,
        description="8: uint8 prototypes on one shared affine grid (half the bytes "
        "of 16, same label fidelity: KL(T=4) 0.0234 both, quickstart set); 4: two "
        "levels per byte on one grid (KL(T=4) of the prior 0.0298 vs 0.0292, IPC 50 "
        "RDED set; rate control picks it when the bytes it frees buy >= "
        "PROTOTYPE_SWITCH_BITS per label); 16: fp16",
    )
    prototype_coding: Literal["packed", "ans"] = Field(
        default="packed",
        description="packed: fixed-width levels; ans: levels entropy-coded with a "
        "stored table (rate control picks it with 4-bit prototypes: 1.5-2 KB "
        "instead of 2.5 KB for 500 x 10); the fit falls back to packed if smaller",
    )
    prototype_delta: bool = Field(
        default=False,
        description="ans only: code each image's levels as differences (mod "
        "2**bits) from the previous image's; set by the fit when smaller "
        "(distilled sets store images class by class)",
    )
    temperatures: tuple[float, ...] = Field(
        default=(1.0, 4.0), min_length=1, description="KD temperatures of the loss"
    )
    prior_steps: int = Field(
        default=200, ge=0, le=100_000, description="Adam steps fitting P alone"
    )
    learning_rate: float = Field(default=0.03, gt=0.0, le=10.0, description="Adam LR")
    max_train_labels: int = Field(
        default=65536, ge=1, le=4_000_000, description="labels kept for fitting"
    )
    fit_threads: int | None = Field(
        default=1, ge=1, le=256, description="torch CPU threads while fitting"
    )
    seed: int = Field(default=0, ge=0, description="seed of sampling and init")

    @model_validator(mode="after")
    def _check_temperatures(self) -> ViewContextConfig:
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, got {self.temperatures}")
        return self


class ViewMixConfig(ViewContextConfig):
    """Configuration of :class:`ViewMixCodec`."""

    kind: Literal["vqae-ctx"] = "vqae-ctx"
    codebook_size: int = Field(
        default=8,
        ge=1,
        le=MAX_CODEBOOK,
        description="K: residual codewords (1: no per-label bits); the fit lowers "
        "it until the coded codes fit payload_budget_bytes",
    )
    rate_penalty: float = Field(
        default=0.0,
        ge=0.0,
        description="lambda of the rate-distortion assignment: a label takes the "
        "codeword minimising KL + lambda * its code length in bits (set by the fit "
        "to meet payload_budget_bytes)",
    )
    mix: Literal["logit", "prob"] = Field(
        default="logit", description="mix prototypes' logits or probabilities"
    )
    rounds: int = Field(
        default=6, ge=0, le=1000, description="assign/update rounds with the codebook"
    )
    round_steps: int = Field(
        default=50, ge=1, le=100_000, description="Adam steps per round"
    )


def view_mix_prior(
    prototypes: torch.Tensor, context: LabelContext, mix: str = "logit"
) -> torch.Tensor:
    """(N, C) prior logits of views from (M, C) prototypes and their context.

    ``logit``: lambda * P[i] + (1 - lambda) * P[j]; ``prob``: the log of the
    same mix of the prototypes' softmaxes. Unmixed views (partner -1) get P[i].
    """
    image = context.image.to(prototypes.device)
    partner = context.partner.to(prototypes.device)
    partner = torch.where(partner >= 0, partner, image)
    lam = context.weight.to(prototypes.device, prototypes.dtype).unsqueeze(1)
    if mix == "logit":
        return lam * prototypes[image] + (1.0 - lam) * prototypes[partner]
    logp = torch.log_softmax(prototypes, dim=1)
    own = logp[image] + torch.log(lam.clamp(min=1e-12))
    other = logp[partner] + torch.log((1.0 - lam).clamp(min=1e-12))
    return torch.logaddexp(own, other)


def prototype_bytes(num_images: int, num_classes: int, bits: int) -> int:
    """Stored bytes of (M, C) prototypes at ``bits`` (grid included)."""
    if bits == 16:
        return 2 * num_images * num_classes
    return packed_size(num_images * num_classes, bits) + _GRID_BYTES


def quantize_prototypes(
    prototypes: torch.Tensor, bits: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Stored tensors of (M, C) prototypes and the float32 values they decode to.

    16 bits: fp16. 8 or 4 bits: integer levels on one grid ``low + step *
    level`` (``prototype_grid`` = [low, step], float32), with the grid's range
    the prototypes' own, so the error is at most step / 2. 8 bits store an
    (M, C) uint8 tensor; 4 bits the levels packed two per byte, row-major, low
    nibble first (:func:`labelzip.ops.bitpack.pack_bits`), an (ceil(M C / 2),)
    uint8 tensor.
    """
    if bits == 16:
        stored = prototypes.detach().to("cpu", torch.float16).contiguous()
        return {"prototypes": stored}, stored.float()
    top = (1 << bits) - 1
    flat = prototypes.detach().to("cpu", torch.float32)
    low, high = float(flat.min()), float(flat.max())
    step = max((high - low) / top, 1e-6)
    grid = torch.tensor([low, step], dtype=torch.float32)
    levels = torch.round((flat - grid[0]) / grid[1]).clamp(0, top).to(torch.uint8)
    if bits < 8:
        levels = pack_bits(levels, bits)
    tensors = {"prototypes": levels.contiguous(), "prototype_grid": grid}
    shape = (int(flat.shape[0]), int(flat.shape[1]))
    return tensors, dequantize_prototypes(tensors, shape, bits)


def store_prototypes(
    prototypes: torch.Tensor, bits: int, coding: str = "packed"
) -> tuple[dict[str, torch.Tensor], torch.Tensor, str, bool]:
    """Stored tensors of (M, C) prototypes, their decoded values, coding and delta.

    ``coding="ans"`` (4 or 8 bits) entropy-codes the levels of
    :func:`quantize_prototypes` with one stored frequency table
    (``prototype_freq``, (1, 2**bits) int16; ``prototypes`` becomes the ANS
    stream), either as they are or as differences from the previous image's
    levels (mod 2**bits; ``delta``), whichever is smaller, and falls back to
    ``packed`` when that is smaller still. The decoded values do not depend on
    the coding.
    """
    tensors, decoded = quantize_prototypes(prototypes, bits)
    if coding != "ans" or bits >= 16:
        return tensors, decoded, "packed", False
    if bits not in (4, 8):
        raise ConfigError(f"ans prototype coding needs 4 or 8 bits, got {bits}")
    shape = (int(decoded.shape[0]), int(decoded.shape[1]))
    levels = _prototype_levels(tensors, shape, bits)
    best = (stored_bytes(tensors), tensors, "packed", False)
    for delta in (False, True):
        symbols = _delta_levels(levels, bits) if delta else levels
        coder = CategoricalStreamCoder.fit(symbols, 1 << bits, [0] * symbols.shape[1])
        coded = {
            "prototypes": coder.encode(symbols),
            "prototype_grid": tensors["prototype_grid"],
            "prototype_freq": coder.tables,
        }
        if stored_bytes(coded) < best[0]:
            best = (stored_bytes(coded), coded, "ans", delta)
    return best[1], decoded, best[2], best[3]


def _prototype_levels(
    stored: dict[str, torch.Tensor], shape: tuple[int, int], bits: int
) -> torch.Tensor:
    """(M, C) int64 levels of packed 4/8-bit prototypes."""
    protos = stored["prototypes"].cpu()
    if bits < 8:
        return unpack_bits(protos, bits, shape[0] * shape[1]).reshape(shape)
    return protos.to(torch.int64).reshape(shape)


def _delta_levels(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """Each row minus the previous row (the first minus 0), mod 2**bits."""
    previous = torch.cat([torch.zeros_like(levels[:1]), levels[:-1]])
    return (levels - previous) % (1 << bits)


def decode_prototypes(
    stored: dict[str, torch.Tensor],
    shape: tuple[int, int],
    bits: int,
    coding: str = "packed",
    delta: bool = False,
) -> torch.Tensor:
    """(M, C) float32 CPU prototypes from :func:`store_prototypes`' tensors.

    Raises:
        ArchiveFormatError: an ANS stream that does not hold M x C levels.
    """
    if coding != "ans":
        return dequantize_prototypes(stored, shape, bits)
    try:
        coder = CategoricalStreamCoder(stored["prototype_freq"], [0] * shape[1])
        symbols = coder.decode(stored["prototypes"].cpu(), shape[0])
    except Exception as exc:
        raise ArchiveFormatError(f"corrupt vqae-ctx prototype stream: {exc}") from exc
    levels = torch.cumsum(symbols, dim=0) % (1 << bits) if delta else symbols
    grid = stored["prototype_grid"].to("cpu", torch.float32)
    return grid[0] + grid[1] * levels.to(torch.float32)


def dequantize_prototypes(
    stored: dict[str, torch.Tensor],
    shape: tuple[int, int] | None = None,
    bits: int = 8,
) -> torch.Tensor:
    """(M, C) float32 CPU prototypes from their stored tensors (bit-exact on CPU).

    ``shape`` (M, C) is needed for packed (4-bit) levels.
    """
    protos = stored["prototypes"]
    if protos.dtype == torch.float16:
        return protos.to("cpu", torch.float32)
    grid = stored["prototype_grid"].to("cpu", torch.float32)
    if bits < 8:
        if shape is None:
            raise InputError("packed prototypes need their (M, C) shape")
        count = shape[0] * shape[1]
        protos = unpack_bits(protos.cpu(), bits, count).reshape(shape)
    return grid[0] + grid[1] * protos.to("cpu", torch.float32)


def kl_sum(
    teacher: torch.Tensor, decoded: torch.Tensor, temps: tuple[float, ...]
) -> torch.Tensor:
    """Sum over temperatures of KL(teacher_T || decoded_T); decoded may be (N, K, C)."""
    out: torch.Tensor | float = 0.0
    for t in temps:
        pt = torch.log_softmax(teacher / t, dim=-1)
        pd = torch.log_softmax(decoded / t, dim=-1)
        if decoded.dim() == 3:
            pt = pt.unsqueeze(1)
        out = out + (pt.exp() * (pt - pd)).sum(-1)
    assert isinstance(out, torch.Tensor)
    return out


def _entropy_bits(counts: torch.Tensor) -> float:
    p = counts.double() / counts.sum().clamp(min=1)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def stored_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of a dict of stored tensors."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def fit_view_mix_prior(
    teacher: torch.Tensor,
    context: LabelContext,
    *,
    mix: str,
    temperatures: tuple[float, ...],
    steps: int,
    learning_rate: float,
) -> torch.Tensor:
    """(M, C) prototypes: weighted mean of own-image logits, then Adam on KL."""
    m = context.num_images
    weight = context.weight.float()
    sums = torch.zeros(m, teacher.shape[1]).index_add_(
        0, context.image, teacher * weight.unsqueeze(1)
    )
    mass = torch.zeros(m).index_add_(0, context.image, weight).clamp(min=1e-6)
    protos = (sums / mass.unsqueeze(1)).requires_grad_(True)
    opt = torch.optim.Adam([protos], lr=learning_rate)
    for _ in range(steps):
        loss = kl_sum(teacher, view_mix_prior(protos, context, mix), temperatures)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return protos.detach()


def payload_need_bytes(bits: float, num_fit: int, total: int) -> int:
    """Payload bytes of ``total`` labels whose ``num_fit`` fit labels code in ``bits``.

    The fit labels are among the stored ones (the fit sees a sample of the
    labels it will encode) and encode to the codes measured here, so only
    the labels it did not see get :data:`RATE_MARGIN`; the seen ones
    :data:`SEEN_RATE_MARGIN`.
    """
    n = max(1, num_fit)
    if total < n:
        scaled = bits * (1.0 + RATE_MARGIN) * total / n
    else:
        unseen = bits / n * (total - n) * (1.0 + RATE_MARGIN)
        scaled = bits * (1.0 + SEEN_RATE_MARGIN) + unseen
    blocks = max(1, math.ceil(total / ASSUMED_BLOCK_LABELS))
    return math.ceil(scaled / 8) + blocks * BLOCK_OVERHEAD_BYTES


def no_context_error(kind: str, action: str) -> InputError:
    """The error of a view-context codec called without a context."""
    return InputError(
        f"the {kind} codec {action}s labels from their view context (image, "
        f"mix partner, weight) and got none; use {action}_in_context(..., "
        "LabelContext) or an archive written by `labelzip relabel`, which "
        "rebuilds it from the stored view recipe"
    )


def check_label_context(
    kind: str, context: LabelContext | None, n: int, num_images: int
) -> LabelContext:
    """``context`` if it has one entry per label and addresses ``num_images`` images."""
    if context is None:
        raise no_context_error(kind, "decode")
    if len(context) != n:
        raise InputError(f"{n} labels but a context of {len(context)} entries")
    if context.num_images != num_images:
        raise InputError(
            f"the context addresses {context.num_images} images but the codec "
            f"stores prototypes of {num_images}; use the archive's own "
            "view recipe and image set"
        )
    return context


def fit_sample(
    kind: str,
    source: LogitSource,
    context: LabelContext,
    *,
    num_images: int | None,
    max_train_labels: int,
    seed: int,
) -> tuple[torch.Tensor, LabelContext, torch.Generator]:
    """(N, C) float32 CPU logits with their context, at most ``max_train_labels``.

    Also returns the seeded generator the subsample drew from (fits go on
    drawing from it). Raises InputError on no logits or mismatched lengths.
    """
    batches = [
        check_logits(b).detach().to("cpu", torch.float32)
        for b in iterate_source(source)
    ]
    if not batches:
        raise InputError(f"{kind} fit got no logits")
    data = torch.cat(batches)
    if data.shape[0] != len(context):
        raise InputError(
            f"{kind} fit got {data.shape[0]} labels but a context of "
            f"{len(context)}; give one context entry per label"
        )
    if num_images is not None and context.num_images != num_images:
        raise InputError(
            f"the context addresses {context.num_images} images, the config "
            f"says num_images={num_images}"
        )
    context = context.to("cpu")
    gen = torch.Generator().manual_seed(seed)
    if data.shape[0] > max_train_labels:
        pick = torch.randperm(data.shape[0], generator=gen)[:max_train_labels]
        pick = pick.sort().values
        data, context = data[pick], context.select(pick)
    return data, context, gen


def stored_context_config(
    config: CodecConfig,
    defaults: CodecConfig,
    omitted: frozenset[str],
    num_images: int,
    num_classes: int,
) -> dict[str, Any]:
    """A context codec's stored config: fields in ``omitted`` only when not default."""
    dumped = config.model_dump(mode="json")
    return {
        **{
            name: value
            for name, value in dumped.items()
            if name not in omitted or getattr(config, name) != getattr(defaults, name)
        },
        "num_images": num_images,
        "num_classes": num_classes,
        "context": CONTEXT_KIND,
    }


def prototype_shapes(
    num_images: int,
    num_classes: int,
    bits: int,
    coding: str,
    tensors: dict[str, torch.Tensor],
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Expected (shape, dtype) of the stored prototype tensors (ANS: any length)."""
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "prototypes": ((num_images, num_classes), torch.float16)
    }
    if bits == 8:
        shapes["prototypes"] = ((num_images, num_classes), torch.uint8)
    elif bits < 8:
        packed = packed_size(num_images * num_classes, bits)
        shapes["prototypes"] = ((packed,), torch.uint8)
    if bits < 16:
        shapes["prototype_grid"] = ((2,), torch.float32)
    if coding == "ans" and bits < 16:  # a stream of any length
        stream = tensors.get("prototypes")
        length = stream.numel() if stream is not None else 0
        shapes["prototypes"] = ((length,), torch.uint8)
        shapes["prototype_freq"] = ((1, 1 << bits), torch.int16)
    return shapes


def restore_prototypes(
    tensors: dict[str, torch.Tensor],
    num_images: int,
    num_classes: int,
    bits: int,
    coding: str,
    delta: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The stored prototype tensors (CPU) and the (M, C) float32 values they decode to."""
    ans = coding == "ans" and bits < 16
    names: tuple[str, ...] = ("prototypes", "prototype_grid", "prototype_freq")
    stored = {
        name: tensors[name].cpu().contiguous() for name in names if name in tensors
    }
    decoded = decode_prototypes(
        stored, (num_images, num_classes), bits, coding if ans else "packed", delta
    )
    return stored, decoded


class ViewContextCodec(Codec):
    """What the view-context codecs (vqae-ctx, ctx-transform) share.

    They refuse the plain contract (no context, no labels), fit on a limited
    number of torch threads, check a context against their M prototypes, and
    store a config with the context kind and the prototypes plus a residual
    model. Subclasses implement :meth:`_fit`, :meth:`residual_shapes` and
    :meth:`load_residual`, and name their :attr:`omitted_when_default`; their
    config has ``num_images``, ``fit_threads`` and the prototype fields.
    """

    needs_context: ClassVar[bool] = True
    # Config fields to_config leaves out while they hold their default.
    omitted_when_default: ClassVar[frozenset[str]] = frozenset()
    config: ViewContextConfig

    def __init__(self, config: ViewContextConfig) -> None:
        super().__init__(config)
        self._prototypes: torch.Tensor | None = None  # (M, C) float32, as decoded
        self._proto_stored: dict[str, torch.Tensor] = {}  # what the archive stores
        self.fit_report: dict[str, float] = {}

    def _no_context(self, action: str) -> InputError:
        return no_context_error(self.kind, action)

    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> Codec:
        raise self._no_context("fit")

    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        raise self._no_context("encode")

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        raise self._no_context("decode")

    @property
    def num_images(self) -> int:
        if self._prototypes is not None:
            return int(self._prototypes.shape[0])
        if self.config.num_images is None:
            raise ConfigError(
                f"{self.kind} needs num_images (the images its context indexes)"
            )
        return self.config.num_images

    def fit_in_context(
        self,
        source: LogitSource,
        context: LabelContext | None,
        *,
        num_labels: int | None = None,
    ) -> Codec:
        """Fit on (N, C) logits whose context is ``context``, on ``fit_threads``.

        Args:
            source: (B, C) logit batches (or a factory); their rows, in order,
                are the labels of ``context``.
            context: one entry per source row.
            num_labels: labels that will be encoded (default: the rows seen);
                with ``payload_budget_bytes`` the fit makes their payload fit.

        Raises:
            InputError: no context, rows and context of different lengths, bad
                logits.
            UnreachableTargetError: ctx-transform: even its coarsest step does
                not fit the payload budget.
        """
        if context is None:
            raise self._no_context("fit")
        threads = torch.get_num_threads()
        if self.config.fit_threads is not None:
            torch.set_num_threads(self.config.fit_threads)
        try:
            return self._fit(source, context, num_labels)
        finally:
            torch.set_num_threads(threads)

    def _fit(
        self, source: LogitSource, context: LabelContext, num_labels: int | None
    ) -> Codec:
        raise NotImplementedError

    def fit_teacher(
        self, source: LogitSource, context: LabelContext, num_labels: int | None
    ) -> tuple[torch.Tensor, LabelContext, torch.Generator, int]:
        """What a fit starts from: :func:`fit_sample` with the config's limits.

        Returns the sample's (n, C) logits centred per row, their context, the
        seeded generator, and the labels that will be encoded (``num_labels``,
        default n).
        """
        cfg = self.config
        data, context, gen = fit_sample(
            self.kind,
            source,
            context,
            num_images=cfg.num_images,
            max_train_labels=cfg.max_train_labels,
            seed=cfg.seed,
        )
        total = num_labels if num_labels is not None else int(data.shape[0])
        return data - data.mean(dim=1, keepdim=True), context, gen, total

    def _check_context(self, context: LabelContext | None, n: int) -> LabelContext:
        return check_label_context(self.kind, context, n, self.num_images)

    # -- stored once -------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The stored config: every field that decoding or encoding reads.

        Fields in :attr:`omitted_when_default` are left out while they hold
        their default (:meth:`from_stored` restores the same config); at 100x
        on a 500-image set each header byte is 0.01% of the budget.
        """
        num_classes = self._require_fitted("to_config")
        return self.stored_config(self.config, self.num_images, num_classes)

    @classmethod
    def target_config(
        cls, options: Mapping[str, Any], no_images_advice: str = ""
    ) -> tuple[Any, int]:
        """The config rate control sizes from ``options``, and its ``num_images``.

        Raises:
            ConfigError: invalid options, or no ``num_images`` (the prototypes
                are stored per image and count in the budget).
        """
        fixed = {k: v for k, v in options.items() if k != "kind"}
        try:
            base = cls.config_class(**fixed)
        except Exception as exc:
            raise ConfigError(f"invalid {cls.kind} options: {exc}") from exc
        num_images = getattr(base, "num_images", None)
        if num_images is None:
            raise ConfigError(
                f"{cls.kind} rate control needs num_images (the prototypes are "
                "stored per image and count in the budget), and the codec needs each "
                "label's view context: use it through `labelzip relabel` / the "
                f"relabel pipeline, which pass both{no_images_advice}"
            )
        return base, int(num_images)

    @classmethod
    def stored_config(
        cls, config: ViewContextConfig, num_images: int, num_classes: int
    ) -> dict[str, Any]:
        """:meth:`to_config` of a codec with ``config`` (also for planned configs)."""
        return stored_context_config(
            config,
            cls.config_class.model_validate({}),
            cls.omitted_when_default,
            num_images,
            num_classes,
        )

    def residual_shapes(
        self, num_classes: int
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of the stored tensors besides the prototypes."""
        raise NotImplementedError

    def load_residual(self, tensors: dict[str, torch.Tensor], num_classes: int) -> None:
        """Take the tensors of :meth:`residual_shapes` (checked) from ``tensors``.

        Raises:
            ArchiveFormatError: their values are invalid (shapes are checked).
        """
        raise NotImplementedError

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> Self:
        """Rebuild a fitted codec (it can encode too: nothing is left out).

        Raises:
            ArchiveFormatError: bad config, missing or misshapen tensors.
        """
        options = dict(config)
        context = options.pop("context", None)
        if context != CONTEXT_KIND:
            raise ArchiveFormatError(
                f"{cls.kind} config needs context={CONTEXT_KIND!r}, got {context!r}"
            )
        codec, num_classes = cls._unfitted_from_stored(options)
        assert isinstance(codec, cls)
        cfg = codec.config
        m, bits, coding = cfg.num_images or 0, cfg.prototype_bits, cfg.prototype_coding
        shapes = prototype_shapes(m, num_classes, bits, coding, tensors)
        shapes.update(codec.residual_shapes(num_classes))
        check_model_tensors(codec.kind, shapes, tensors, exact=True)
        codec._proto_stored, codec._prototypes = restore_prototypes(
            tensors, m, num_classes, bits, coding, cfg.prototype_delta
        )
        codec.load_residual(tensors, num_classes)
        codec.num_classes = num_classes
        return codec


class ViewMixCodec(ViewContextCodec):
    """Context prior (per-image prototypes mixed like the view) + VQ residual code."""

    kind: ClassVar[str] = "vqae-ctx"
    codec_id: ClassVar[int] = 6
    config_class: ClassVar[type[CodecConfig]] = ViewMixConfig
    omitted_when_default: ClassVar[frozenset[str]] = OMITTED_WHEN_DEFAULT

    config: ViewMixConfig

    def __init__(self, config: ViewMixConfig | None = None) -> None:
        super().__init__(config if config is not None else ViewMixConfig())
        self._codebook: torch.Tensor | None = None  # (K, C) fp16
        self._coder: CategoricalStreamCoder | None = None
        self._float: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- sizes -------------------------------------------------------------------------
    @staticmethod
    def model_bytes_for(
        num_images: int,
        num_classes: int,
        codebook_size: int,
        prototype_bits: int = 8,
        prototype_coding: str = "packed",
    ) -> int:
        """Prototypes, fp16 codebook and the int16 frequency table (K > 1).

        ANS-coded prototypes are planned at their packed size plus their table
        (an upper bound: the fit falls back to packed when coding does not pay).
        """
        table = 2 * codebook_size if codebook_size > 1 else 0
        protos = prototype_bytes(num_images, num_classes, prototype_bits)
        if prototype_coding == "ans" and prototype_bits < 16:
            protos += 2 << prototype_bits
        return protos + 2 * codebook_size * num_classes + table

    @staticmethod
    def payload_bytes_for(num_labels: int, codebook_size: int) -> int:
        """Rate control's planned payload of ``num_labels`` labels at codebook K.

        log2(K) - :data:`RD_SLACK_BITS` bits per label (plus the margin and
        block overhead): the fit's rate-distortion assignment spends at most
        ``payload_budget_bytes``, so K may exceed what uniform codes would allow.
        """
        if codebook_size <= 1:
            return 0
        blocks = max(1, math.ceil(num_labels / ASSUMED_BLOCK_LABELS))
        per_label = max(math.log2(codebook_size) - RD_SLACK_BITS, MIN_PLANNED_BITS)
        bits = num_labels * per_label * (1.0 + RATE_MARGIN)
        return math.ceil(bits / 8) + blocks * BLOCK_OVERHEAD_BYTES

    def planned_model_tensors(self, num_classes: int) -> dict[str, torch.Tensor] | None:
        if self.config.num_images is None:
            return None
        k = self.config.codebook_size
        bits = self.config.prototype_bits
        protos, _ = quantize_prototypes(
            torch.zeros(self.config.num_images, num_classes), bits
        )
        if self.config.prototype_coding == "ans" and bits < 16:
            protos["prototypes"] = protos["prototypes"].reshape(-1)
            protos["prototype_freq"] = torch.zeros(1, 1 << bits, dtype=torch.int16)
        out = {
            "codebook": torch.zeros(k, num_classes, dtype=torch.float16),
            **protos,
        }
        if k > 1:
            out["code_freq"] = torch.zeros(1, k, dtype=torch.int16)
        return out

    # -- fitting -------------------------------------------------------------------------
    def _fit(
        self, source: LogitSource, context: LabelContext, num_labels: int | None
    ) -> ViewMixCodec:
        cfg = self.config
        teacher, context, gen, total = self.fit_teacher(source, context, num_labels)
        num_classes = int(teacher.shape[1])
        prototypes = self._fit_prior(teacher, context)
        k = min(cfg.codebook_size, max(1, teacher.shape[0]))  # codewords are labels
        penalty = 0.0
        planned = self.model_bytes_for(
            context.num_images, num_classes, 0, cfg.prototype_bits, cfg.prototype_coding
        )
        while True:
            codebook, codes = self._fit_codebook(teacher, context, prototypes, k, gen)
            stored, rounded, coding, delta = store_prototypes(
                prototypes, cfg.prototype_bits, cfg.prototype_coding
            )
            prototypes.copy_(rounded)  # exactly what the decoder will see
            # Bytes the prototypes leave of their plan go to the codes.
            spare = max(0, planned - stored_bytes(stored))
            costs = self._costs(teacher, self._prior(prototypes, context), codebook)
            found = self._rate_search(costs, k, total, spare)
            if found is not None or k == 1:
                coder, codes, penalty = found or (None, codes, 0.0)
                break
            logger.info("vqae-ctx: K=%d codes cannot meet the budget; K-1", k)
            k -= 1
        coded = coder.cost_bits(codes.reshape(-1, 1)) if coder is not None else 0.0
        update: dict[str, Any] = {
            "codebook_size": k,
            "rate_penalty": penalty,
            "prototype_coding": coding,
            "prototype_delta": delta,
        }
        if cfg.payload_budget_bytes is not None:
            update["payload_budget_bytes"] = cfg.payload_budget_bytes + spare
        self.config = cfg.model_copy(update=update)
        self.num_classes = num_classes
        self._proto_stored, self._prototypes = stored, rounded
        self._codebook = codebook.detach().to(torch.float16).contiguous()
        self._coder = coder
        self._float = {}
        with torch.no_grad():
            decoded = self._decode_codes(codes, context, torch.device("cpu"))
            kl = kl_sum(teacher, decoded, cfg.temperatures).mean()
        self.fit_report = {
            "labels": float(len(codes)),
            "codebook_size": float(k),
            "code_bits": coded / max(1, len(codes)),
            "kl_sum": float(kl),
        }
        logger.info("vqae-ctx fit: %s", self.fit_report)
        return self

    def _prior(self, prototypes: torch.Tensor, context: LabelContext) -> torch.Tensor:
        return view_mix_prior(prototypes, context, self.config.mix)

    def _fit_prior(self, teacher: torch.Tensor, context: LabelContext) -> torch.Tensor:
        cfg = self.config
        return fit_view_mix_prior(
            teacher,
            context,
            mix=cfg.mix,
            temperatures=cfg.temperatures,
            steps=cfg.prior_steps,
            learning_rate=cfg.learning_rate,
        )

    def _costs(
        self, teacher: torch.Tensor, prior: torch.Tensor, codebook: torch.Tensor
    ) -> torch.Tensor:
        """(N, K) summed KL of every label under every codeword."""
        out = []
        rows = max(1, min(_ASSIGN_CHUNK, _ASSIGN_VALUES // codebook.numel()))
        for s in range(0, teacher.shape[0], rows):
            cand = prior[s : s + rows].unsqueeze(1) + codebook.unsqueeze(0)
            out.append(kl_sum(teacher[s : s + rows], cand, self.config.temperatures))
        return torch.cat(out) if out else torch.zeros(0, codebook.shape[0])

    def _assign(
        self,
        teacher: torch.Tensor,
        prior: torch.Tensor,
        codebook: torch.Tensor,
        lengths: torch.Tensor | None = None,
        penalty: float = 0.0,
    ) -> torch.Tensor:
        """(N,) int64 codeword with the least KL (+ penalty x code length in bits)."""
        if codebook.shape[0] == 1:
            return torch.zeros(teacher.shape[0], dtype=torch.int64)
        costs = self._costs(teacher, prior, codebook)
        if lengths is not None and penalty > 0:
            costs = costs + penalty * lengths
        return costs.argmin(dim=1)

    def _fit_codebook(
        self,
        teacher: torch.Tensor,
        context: LabelContext,
        prototypes: torch.Tensor,
        k: int,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Jointly refine (M, C) prototypes in place and fit a (K, C) codebook.

        Returns the fp16-rounded codebook (float32) and the (N,) codes assigned
        with the fp16-rounded model, exactly what encode will produce.
        """
        cfg = self.config
        protos = prototypes.clone().requires_grad_(True)
        with torch.no_grad():
            residual = teacher - self._prior(prototypes, context)
        pick = torch.randperm(teacher.shape[0], generator=gen)[:k]
        book = residual[pick].clone()
        if k < 2:
            book = residual.mean(dim=0, keepdim=True)
        else:
            book[0] = 0.0
        book.requires_grad_(True)
        opt = torch.optim.Adam([protos, book], lr=cfg.learning_rate)
        for _ in range(cfg.rounds):
            with torch.no_grad():
                codes = self._assign(teacher, self._prior(protos, context), book)
            for _ in range(cfg.round_steps):
                decoded = self._prior(protos, context) + book[codes]
                loss = kl_sum(teacher, decoded, cfg.temperatures).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        _, rounded = quantize_prototypes(protos.detach(), cfg.prototype_bits)
        prototypes.copy_(rounded)
        frozen = book.detach().half().float()
        with torch.no_grad():
            codes = self._assign(teacher, self._prior(prototypes, context), frozen)
        return frozen, codes

    def _payload_need(self, bits: float, num_fit: int, total: int) -> int:
        return payload_need_bytes(bits, num_fit, total)

    def _coded(
        self, costs: torch.Tensor, k: int, penalty: float
    ) -> tuple[CategoricalStreamCoder, torch.Tensor, float]:
        """Rate-distortion codes at ``penalty``: (coder, (N,) codes, coded bits).

        Alternates assignment under the current code lengths and refitting the
        table (3 times); the codes are then re-assigned under the final table,
        exactly as :meth:`encode_in_context` will.
        """
        lengths = torch.full((k,), math.log2(k))
        coder: CategoricalStreamCoder | None = None
        codes = costs.argmin(dim=1)
        for _ in range(3):
            codes = (costs + penalty * lengths).argmin(dim=1)
            counts = torch.bincount(codes, minlength=k).reshape(1, k)
            coder = CategoricalStreamCoder(quantize_counts(counts), [0])
            freq = coder.tables[0].to(torch.float64)
            lengths = (-torch.log2(freq / freq.sum())).float()
            if penalty == 0:
                break
        assert coder is not None
        codes = (costs + penalty * lengths).argmin(dim=1) if penalty > 0 else codes
        return coder, codes, coder.cost_bits(codes.reshape(-1, 1))

    def _rate_search(
        self, costs: torch.Tensor, k: int, total: int, spare: int = 0
    ) -> tuple[CategoricalStreamCoder | None, torch.Tensor, float] | None:
        """The smallest rate penalty whose codes fit the payload budget.

        Returns (coder, codes, penalty), or None when no penalty fits. Without
        a budget the penalty is 0 (plain least-KL codes). ``spare``: bytes the
        model left of its plan, added to the budget.
        """
        if k == 1:
            return None, torch.zeros(costs.shape[0], dtype=torch.int64), 0.0
        budget = self.config.payload_budget_bytes
        if budget is not None:
            budget += spare
        n = costs.shape[0]
        coder, codes, bits = self._coded(costs, k, 0.0)
        if budget is None or self._payload_need(bits, n, total) <= budget:
            return coder, codes, 0.0
        lo, hi = 0.0, 1e-3
        while True:
            coder, codes, bits = self._coded(costs, k, hi)
            if self._payload_need(bits, n, total) <= budget:
                break
            lo, hi = hi, hi * 4
            if hi > 1e3:
                return None
        best = (coder, codes, hi)
        for _ in range(10):  # bisection in log space
            mid = math.sqrt(max(lo, hi * 1e-3) * hi)
            coder, codes, bits = self._coded(costs, k, mid)
            if self._payload_need(bits, n, total) <= budget:
                hi, best = mid, (coder, codes, mid)
            else:
                lo = mid
        return best

    # -- byte path -------------------------------------------------------------------------
    def encode_in_context(
        self, logits: torch.Tensor, context: LabelContext | None
    ) -> EncodedBlock:
        """(N, C) logits -> the ANS-coded (N,) codeword indices (no bytes if K = 1)."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        if context is None:
            raise self._no_context("encode")
        n = int(logits.shape[0])
        ctx = self._check_context(context, n).to("cpu")
        protos, book = self._float_state(torch.device("cpu"))
        teacher = logits.detach().to("cpu", torch.float32)
        teacher = teacher - teacher.mean(dim=1, keepdim=True)
        with torch.no_grad():
            codes = self._assign(
                teacher,
                self._prior(protos, ctx),
                book,
                self._lengths(),
                self.config.rate_penalty,
            )
        if self._coder is None or n == 0:
            data = torch.zeros(0, dtype=torch.uint8)
        else:
            data = self._coder.encode(codes.reshape(-1, 1))
        return EncodedBlock(num_labels=n, data=data)

    def _lengths(self) -> torch.Tensor | None:
        """(K,) code lengths in bits under the stored table (None when K = 1)."""
        if self._coder is None:
            return None
        freq = self._coder.tables[0].to(torch.float64)
        return (-torch.log2(freq / freq.sum())).float()

    def decode_codes(self, block: EncodedBlock) -> torch.Tensor:
        """A block's (N,) int64 codeword indices (CPU)."""
        self._require_fitted("decode")
        if self._coder is None:
            if block.nbytes:
                raise ArchiveFormatError(
                    f"vqae-ctx block with K=1 must be empty, has {block.nbytes} bytes"
                )
            return torch.zeros(block.num_labels, dtype=torch.int64)
        try:
            # A block of only very likely codes can code to zero words.
            codes = self._coder.decode(block.data.cpu(), block.num_labels)
        except Exception as exc:
            raise ArchiveFormatError(
                f"corrupt vqae-ctx block of {block.num_labels} labels: {exc}"
            ) from exc
        return codes.reshape(-1)

    def decode_in_context(
        self,
        block: EncodedBlock,
        context: LabelContext | None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Block + context -> (N, C) float32 logits on ``device``."""
        self._require_fitted("decode")
        ctx = self._check_context(context, block.num_labels)
        dev = torch.device(device if device is not None else "cpu")
        codes = self.decode_codes(block).to(dev)
        return self._decode_codes(codes, ctx, dev)

    def _decode_codes(
        self, codes: torch.Tensor, context: LabelContext, device: torch.device
    ) -> torch.Tensor:
        protos, book = self._float_state(device)
        with torch.no_grad():
            return self._prior(protos, context.to(device)) + book[codes.to(device)]

    def _float_state(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._float:
            assert self._prototypes is not None and self._codebook is not None
            self._float[key] = (
                self._prototypes.to(device, torch.float32),
                self._codebook.to(device, torch.float32),
            )
        return self._float[key]

    # -- stored once -------------------------------------------------------------------------
    def model_tensors(self) -> dict[str, torch.Tensor]:
        self._require_fitted("model_tensors")
        assert self._prototypes is not None and self._codebook is not None
        out = {**self._proto_stored, "codebook": self._codebook}
        if self._coder is not None:
            out["code_freq"] = self._coder.tables
        return out

    def planned_config(self, num_classes: int) -> dict[str, Any] | None:
        """An upper bound of :meth:`to_config` before fit (rate control, labelzip.rate).

        The fit may lower ``codebook_size`` and sets ``rate_penalty``; the
        placeholder penalty has the longest JSON form a non-negative double has.
        """
        if self.config.num_images is None:
            return None
        update: dict[str, Any] = {"rate_penalty": _WIDEST_FLOAT}
        if self.config.prototype_coding == "ans":  # the widest the fit may store
            update["prototype_delta"] = True
        widest = self.config.model_copy(update=update)
        return self.stored_config(widest, self.config.num_images, num_classes)

    def residual_shapes(
        self, num_classes: int
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The fp16 codebook and, when K > 1, its int16 frequency table."""
        k = self.config.codebook_size
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "codebook": ((k, num_classes), torch.float16)
        }
        if k > 1:
            shapes["code_freq"] = ((1, k), torch.int16)
        return shapes

    def load_residual(self, tensors: dict[str, torch.Tensor], num_classes: int) -> None:
        self._codebook = tensors["codebook"].cpu().contiguous()
        if self.config.codebook_size > 1:
            try:
                self._coder = CategoricalStreamCoder(tensors["code_freq"], [0])
            except InputError as exc:
                raise ArchiveFormatError(f"invalid vqae-ctx code table: {exc}") from exc

    # -- rate control ------------------------------------------------------------------------
    @staticmethod
    def _auto_prototype_bits(num_images: int, num_classes: int, num_labels: int) -> int:
        """4 when 4-bit prototypes free >= PROTOTYPE_SWITCH_BITS per label, else 8."""
        freed = prototype_bytes(num_images, num_classes, 8) - prototype_bytes(
            num_images, num_classes, 4
        )
        return 4 if 8 * freed >= PROTOTYPE_SWITCH_BITS * max(1, num_labels) else 8

    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> ViewMixCodec:
        """The largest codebook whose payload bound + model bytes fit the budget.

        The prototypes (M x C levels) count in the model bytes, so
        ``num_images`` must be given. Unless ``prototype_bits`` is fixed they
        are 4-bit when that frees at least :data:`PROTOTYPE_SWITCH_BITS` per
        label (or when only 4-bit fits), else 8-bit. The payload bound is
        :meth:`payload_bytes_for`; the fit re-checks the coded size and lowers K
        if its measured codes would not fit ``payload_budget_bytes``.

        Raises:
            ConfigError: no num_images, or invalid options.
            UnreachableTargetError: even K = 1 (no per-label bits) is over.
        """
        fixed = {k: v for k, v in options.items() if k != "kind"}
        base: ViewMixConfig
        base, m = cls.target_config(
            options,
            "; plain logits (`labelzip compress`) have no view context, so choose "
            "vqae or another codec there",
        )
        if "prototype_bits" not in fixed:
            base = base.model_copy(
                update={
                    "prototype_bits": cls._auto_prototype_bits(
                        m, num_classes, num_labels
                    )
                }
            )
        bits = base.prototype_bits
        if "prototype_coding" not in fixed:
            base = base.model_copy(
                update={"prototype_coding": "ans" if bits == 4 else "packed"}
            )
        coding = base.prototype_coding
        top = base.codebook_size if "codebook_size" in fixed else MAX_CODEBOOK
        best = None
        for k in range(top, 0, -1):
            model = cls.model_bytes_for(m, num_classes, k, bits, coding)
            if model + cls.payload_bytes_for(num_labels, k) <= budget_bytes:
                best = k
                break
        if best is None and "prototype_bits" not in fixed and bits != 4:
            return cls.for_target(
                num_labels=num_labels,
                num_classes=num_classes,
                budget_bytes=budget_bytes,
                **{**fixed, "prototype_bits": 4},
            )
        if best is None:
            smallest = cls.model_bytes_for(m, num_classes, 1, bits, coding)
            if "codebook_size" in fixed:
                smallest = cls.model_bytes_for(
                    m, num_classes, base.codebook_size, bits, coding
                ) + cls.payload_bytes_for(num_labels, base.codebook_size)
            dense = 2 * num_labels * num_classes
            raise UnreachableTargetError(
                f"no vqae-ctx configuration fits {budget_bytes} bytes for {num_labels} "
                f"labels: the prototypes of {m} images alone take "
                f"{cls.model_bytes_for(m, num_classes, 0, bits, coding)} "
                f"bytes ({bits}-bit) and the smallest configuration {smallest} (best "
                f"reachable ratio {dense / max(1, smallest):.1f}x vs fp16 before the "
                "header); lower the ratio"
            )
        model = cls.model_bytes_for(m, num_classes, best, bits, coding)
        return cls(
            base.model_copy(
                update={
                    "codebook_size": best,
                    "payload_budget_bytes": budget_bytes - model,
                }
            )
        )
