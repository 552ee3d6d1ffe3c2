"""ctx-transform: the view-context prior of vqae-ctx plus a transform-coded residual.

Same prior as :mod:`labelzip.codecs.context.viewmix` (per-image prototypes mixed like
the replayed view, known to encoder and decoder for free), but the residual is
coded by a scalar quantiser on its principal axes instead of one VQ codeword::

    y = (teacher - prior - mean) @ basis.T       # min(C - 1, max_axes) per label
    q = round(y / step)                          # integers, ANS-coded per axis
    decoded = prior + mean + (q * step) @ basis

Why (docs/vqae-design.md, "Transform-coded residual"): students of synthetic
(SRe2L) images track KL(T=4) of the labels they see closely, and the VQ residual
tops out at 256 fp16 codewords (~7 bits per label, a 3 KB codebook at C = 10)
while scalar coding scales to any rate with a model of C x C values. So rate
control here spends ``min_label_bits`` or more on each stored label and lets
LPLD-style auto-pruning keep fewer views (the relabel pipeline's
``auto_prune``): fewer views with more bits each kept more of the dense-label
accuracy than every view with few bits (the table in that section).

Each axis is coded under a two-sided geometric model ``P(k) ~ (a / 2**16)**|k|``
whose integer parameter ``a`` is stored (int32); the frequency tables are
rebuilt from it with integer arithmetic, so they are bit-identical on every
machine and cost 4 bytes per axis instead of a stored table.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from labelzip.codecs.base import (
    CodecConfig,
    EncodedBlock,
    LabelContext,
    LogitSource,
    check_logits,
)
from labelzip.codecs.context.viewmix import (
    PROTOTYPE_SWITCH_BITS,
    ViewContextCodec,
    ViewContextConfig,
    fit_view_mix_prior,
    kl_sum,
    payload_need_bytes,
    prototype_bytes,
    quantize_prototypes,
    store_prototypes,
    stored_bytes,
    view_mix_prior,
)
from labelzip.codecs.entropy import CategoricalStreamCoder, quantize_counts
from labelzip.errors import (
    ArchiveFormatError,
    InputError,
    UnreachableTargetError,
)

__all__ = [
    "DEFAULT_MAX_AXES",
    "MIN_LABEL_BITS",
    "ContextTransformCodec",
    "ContextTransformConfig",
    "geometric_tables",
]

logger = logging.getLogger(__name__)

# Rate control's default floor of payload bits per stored label (below it the
# target is "unreachable" for this many labels, so auto-pruning keeps fewer
# views; docs/vqae-design.md, "Transform-coded residual").
MIN_LABEL_BITS = 16.0
# Principal axes coded at most: all C - 1 at small C; at C = 1000 the basis stays
# 128 KB. (Not measured on 1000-class students: the vision bench is C = 10.)
DEFAULT_MAX_AXES = 64
_DECAY_ONE = 1 << 16  # geometric parameter a / 2**16
_DECAY_GRID = 96  # candidate parameters tried per axis
_COUNT_TOP = 1 << 40  # integer count of |k| = 0 before the geometric decay
_MAX_BOUND = 1023  # alphabet 2 * bound + 1 < 2**11: <= 1/8 of a table's mass reserved
_WIDEST_FLOAT = 2.2250738585072014e-308  # the longest JSON repr of a float >= 0
OMITTED_WHEN_DEFAULT = frozenset(
    {
        "fit_threads",
        "learning_rate",
        "max_axes",  # stored when not the default, which therefore never changes
        "max_train_labels",
        "min_label_bits",
        "prior_steps",
        "seed",
        "temperatures",
    }
)


class ContextTransformConfig(ViewContextConfig):
    """Configuration of :class:`ContextTransformCodec`."""

    kind: Literal["ctx-transform"] = "ctx-transform"
    step: float = Field(
        default=1.0,
        gt=0.0,
        le=1e4,
        description="quantiser step on the residual's principal axes (logit "
        "units); with payload_budget_bytes the fit picks the smallest that fits",
    )
    symbol_bound: int = Field(
        default=64,
        ge=1,
        le=_MAX_BOUND,
        description="largest |q| coded (set by the fit: the largest it saw); "
        "larger values are clamped",
    )
    max_axes: int = Field(
        default=DEFAULT_MAX_AXES,
        ge=1,
        le=65536,
        description="principal axes coded: min(C - 1, max_axes); the rest of the "
        "residual is dropped (bounds the fp16 basis at large C: 64 x 1000 x 2 B)",
    )
    min_label_bits: float = Field(
        default=MIN_LABEL_BITS,
        ge=0.0,
        le=1000.0,
        description="rate control: refuse budgets that leave stored labels fewer "
        "payload bits, so auto-pruning keeps fewer views with more bits each",
    )


def geometric_tables(decay: torch.Tensor, bound: int) -> torch.Tensor:
    """(A, 2 bound + 1) int16 tables of two-sided geometric models, bit-exact.

    Row j gives symbol ``s`` (value ``s - bound``) the count
    ``floor(2**40 * (decay[j] / 2**16) ** |s - bound|)``, computed by integer
    multiply-and-shift, then :func:`~labelzip.codecs.entropy.quantize_counts`.
    """
    rows = []
    for a in decay.tolist():  # python ints: no overflow, same result everywhere
        if not 1 <= a < _DECAY_ONE:
            raise ArchiveFormatError(
                f"ctx-transform decay parameter {a} outside [1, {_DECAY_ONE})"
            )
        counts = [_COUNT_TOP]
        for _ in range(bound):
            counts.append((counts[-1] * int(a)) >> 16)
        rows.append(counts[:0:-1] + counts)
    return quantize_counts(torch.tensor(rows, dtype=torch.int64))


def _decay_grid() -> torch.Tensor:
    """The candidate decay parameters (int64), from very flat to very peaked."""
    flat = 1.0 - torch.logspace(-4.5, -0.01, _DECAY_GRID, base=10, dtype=torch.float64)
    grid = torch.round(_DECAY_ONE * flat).clamp(1, _DECAY_ONE - 1)
    return torch.unique(grid).to(torch.int64)


@functools.lru_cache(maxsize=64)
def _grid_bits(bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid decays, (grid, bound + 1) code lengths of |k| = 0..bound) for a bound.

    The step search evaluates many steps whose bounds repeat; the tables depend
    on the bound only.
    """
    grid = _decay_grid()
    tables = geometric_tables(grid, bound).to(torch.float64)
    bits = -torch.log2(tables / tables.sum(dim=1, keepdim=True))[:, bound:]
    return grid, bits


def _best_decays(hists: torch.Tensor, bound: int) -> tuple[torch.Tensor, float]:
    """Per axis the grid decay coding its |q| histogram (A, bound + 1) in the fewest bits.

    Returns the (A,) int32 decays and the total coded bits.
    """
    grid, bits = _grid_bits(bound)
    # |k| = 0 is the middle symbol; +k and -k cost the same.
    costs = hists.to(torch.float64) @ bits.T  # (A, grid)
    best = costs.argmin(dim=1)
    total = float(costs.gather(1, best.unsqueeze(1)).sum())
    return grid[best].to(torch.int32), total


def _num_axes(num_classes: int, max_axes: int) -> int:
    return max(1, min(num_classes - 1, max_axes))


def _residual_model_bytes(num_classes: int, max_axes: int) -> int:
    """fp16 basis (A x C) and mean (C), int32 decays (A)."""
    axes = _num_axes(num_classes, max_axes)
    return 2 * axes * num_classes + 2 * num_classes + 4 * axes


class ContextTransformCodec(ViewContextCodec):
    """Context prior (prototypes mixed like the view) + scalar-quantised PCA residual."""

    kind: ClassVar[str] = "ctx-transform"
    codec_id: ClassVar[int] = 9
    config_class: ClassVar[type[CodecConfig]] = ContextTransformConfig
    omitted_when_default: ClassVar[frozenset[str]] = OMITTED_WHEN_DEFAULT

    config: ContextTransformConfig

    def __init__(self, config: ContextTransformConfig | None = None) -> None:
        super().__init__(config if config is not None else ContextTransformConfig())
        self._basis: torch.Tensor | None = None  # (C - 1, C) fp16
        self._mean: torch.Tensor | None = None  # (C,) fp16
        self._decay: torch.Tensor | None = None  # (C - 1,) int32
        self._coder: CategoricalStreamCoder | None = None

    # -- sizes -------------------------------------------------------------------------
    @staticmethod
    def model_bytes_for(
        num_images: int,
        num_classes: int,
        prototype_bits: int = 8,
        prototype_coding: str = "packed",
        max_axes: int = DEFAULT_MAX_AXES,
    ) -> int:
        """Prototypes (packed-size bound when ANS), fp16 basis and mean, decays."""
        protos = prototype_bytes(num_images, num_classes, prototype_bits)
        if prototype_coding == "ans" and prototype_bits < 16:
            protos += 2 << prototype_bits
        return protos + _residual_model_bytes(num_classes, max_axes)

    def planned_model_tensors(self, num_classes: int) -> dict[str, torch.Tensor] | None:
        if self.config.num_images is None:
            return None
        bits = self.config.prototype_bits
        protos, _ = quantize_prototypes(
            torch.zeros(self.config.num_images, num_classes), bits
        )
        if bits < 16:
            # Rate control may switch to ANS-coded levels after this estimate
            # (a stream plus a frequency table): plan the table's entry always.
            protos["prototypes"] = protos["prototypes"].reshape(-1)
            protos["prototype_freq"] = torch.zeros(1, 1 << bits, dtype=torch.int16)
        axes = _num_axes(num_classes, self.config.max_axes)
        return {
            **protos,
            "basis": torch.zeros(axes, num_classes, dtype=torch.float16),
            "residual_mean": torch.zeros(num_classes, dtype=torch.float16),
            "decay": torch.zeros(axes, dtype=torch.int32),
        }

    # -- fitting -------------------------------------------------------------------------
    def _fit(
        self, source: LogitSource, context: LabelContext, num_labels: int | None
    ) -> ContextTransformCodec:
        cfg = self.config
        teacher, context, _, total = self.fit_teacher(source, context, num_labels)
        num_classes = int(teacher.shape[1])
        if num_classes < 2:
            raise InputError("ctx-transform needs at least 2 classes")
        prototypes = fit_view_mix_prior(
            teacher,
            context,
            mix="logit",
            temperatures=cfg.temperatures,
            steps=cfg.prior_steps,
            learning_rate=cfg.learning_rate,
        )
        stored, rounded, coding, delta = store_prototypes(
            prototypes, cfg.prototype_bits, cfg.prototype_coding
        )
        planned = self.model_bytes_for(
            context.num_images,
            num_classes,
            cfg.prototype_bits,
            cfg.prototype_coding,
            cfg.max_axes,
        )
        residual_bytes = _residual_model_bytes(num_classes, cfg.max_axes)
        spare = max(0, planned - stored_bytes(stored) - residual_bytes)
        axes = _num_axes(num_classes, cfg.max_axes)
        with torch.no_grad():
            residual = teacher - view_mix_prior(rounded, context)
            residual = residual - residual.mean(dim=1, keepdim=True)
            mean = residual.mean(dim=0).half()
            centred = residual - mean.float()
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            basis = vh[:axes]
            if basis.shape[0] < axes:  # fewer labels than axes: pad unused axes
                basis = torch.cat(
                    [basis, basis.new_zeros(axes - basis.shape[0], num_classes)]
                )
            basis = basis.contiguous().half()
            coords = centred @ basis.float().T
        budget = cfg.payload_budget_bytes
        step, bound, decay, bits = self._search_step(
            coords, total, None if budget is None else budget + spare
        )
        update: dict[str, Any] = {
            "step": step,
            "symbol_bound": bound,
            "prototype_coding": coding,
            "prototype_delta": delta,
        }
        if budget is not None:
            update["payload_budget_bytes"] = budget + spare
        self.config = cfg.model_copy(update=update)
        self.num_classes = num_classes
        self._proto_stored, self._prototypes = stored, rounded
        self._basis, self._mean = basis, mean
        self._decay = decay
        self._coder = CategoricalStreamCoder(
            geometric_tables(decay, bound), list(range(axes))
        )
        with torch.no_grad():
            q = self._quantise(coords)
            decoded = view_mix_prior(rounded, context) + self._residual(q)
            kl = kl_sum(teacher, decoded, cfg.temperatures).mean()
        self.fit_report = {
            "labels": float(teacher.shape[0]),
            "step": step,
            "code_bits": bits / max(1, teacher.shape[0]),
            "kl_sum": float(kl),
        }
        logger.info("ctx-transform fit: %s", self.fit_report)
        return self

    def _coded_bits(
        self, coords: torch.Tensor, step: float
    ) -> tuple[int, torch.Tensor, float]:
        """(bound, (A,) int32 decays, coded bits) of coordinates at ``step``."""
        q = torch.round(coords / step).abs().to(torch.int64)
        bound = int(min(max(1, int(q.max()) if q.numel() else 1), _MAX_BOUND))
        q = q.clamp(max=bound)
        hists = torch.stack(
            [
                torch.bincount(q[:, axis], minlength=bound + 1)
                for axis in range(q.shape[1])
            ]
        )
        decay, bits = _best_decays(hists, bound)
        return bound, decay, bits

    def _search_step(
        self, coords: torch.Tensor, total: int, budget: int | None
    ) -> tuple[float, int, torch.Tensor, float]:
        """The smallest step whose coded payload fits ``budget`` (bisection, log scale).

        Returns (step, bound, decays, coded bits of the fit labels).
        """
        n = coords.shape[0]
        if budget is None:
            bound, decay, bits = self._coded_bits(coords, self.config.step)
            return self.config.step, bound, decay, bits

        def attempt(step: float) -> tuple[float, int, torch.Tensor, float] | None:
            bound, decay, bits = self._coded_bits(coords, step)
            if payload_need_bytes(bits, n, total) > budget:
                return None
            return step, bound, decay, bits

        spread = float(coords.abs().max()) if coords.numel() else 1.0
        hi = max(spread, 1e-3) * 4.0  # every coordinate rounds to 0
        best = attempt(hi)
        if best is None:
            raise UnreachableTargetError(
                f"ctx-transform cannot code {total} labels in {budget} payload bytes "
                "even with every residual coordinate zero; lower the ratio"
            )
        lo = hi * 1e-4
        for _ in range(24):  # bisection in log space, to ~0.1% of the step
            mid = math.sqrt(lo * hi)
            found = attempt(mid)
            if found is not None:
                hi, best = mid, found
            else:
                lo = mid
        short = attempt(float(f"{best[0]:.6g}"))  # a short JSON repr in the header
        return short if short is not None else best

    def _quantise(self, coords: torch.Tensor) -> torch.Tensor:
        bound = self.config.symbol_bound
        q = torch.round(coords / self.config.step).clamp(-bound, bound)
        return q.to(torch.int64)

    def _residual(self, q: torch.Tensor) -> torch.Tensor:
        assert self._basis is not None and self._mean is not None
        basis = self._basis.to(q.device, torch.float32)
        mean = self._mean.to(q.device, torch.float32)
        return mean + (q.to(torch.float32) * self.config.step) @ basis

    # -- byte path -------------------------------------------------------------------------
    def encode_in_context(
        self, logits: torch.Tensor, context: LabelContext | None
    ) -> EncodedBlock:
        """(N, C) logits -> the ANS-coded (N, C - 1) quantised residual coordinates."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        if context is None:
            raise self._no_context("encode")
        n = int(logits.shape[0])
        ctx = self._check_context(context, n).to("cpu")
        assert self._prototypes is not None and self._basis is not None
        assert self._mean is not None and self._coder is not None
        teacher = logits.detach().to("cpu", torch.float32)
        with torch.no_grad():
            residual = teacher - view_mix_prior(self._prototypes, ctx)
            residual = residual - residual.mean(dim=1, keepdim=True)
            coords = (residual - self._mean.float()) @ self._basis.float().T
        if n == 0:
            return EncodedBlock(num_labels=0, data=torch.zeros(0, dtype=torch.uint8))
        symbols = self._quantise(coords) + self.config.symbol_bound
        return EncodedBlock(num_labels=n, data=self._coder.encode(symbols))

    def decode_symbols(self, block: EncodedBlock) -> torch.Tensor:
        """A block's (N, C - 1) int64 quantised coordinates (CPU)."""
        self._require_fitted("decode")
        assert self._coder is not None
        if block.num_labels == 0:
            return torch.zeros(0, self._coder.num_columns, dtype=torch.int64)
        try:
            symbols = self._coder.decode(block.data.cpu(), block.num_labels)
        except Exception as exc:
            raise ArchiveFormatError(
                f"corrupt ctx-transform block of {block.num_labels} labels: {exc}"
            ) from exc
        return symbols - self.config.symbol_bound

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
        q = self.decode_symbols(block).to(dev)
        assert self._prototypes is not None
        with torch.no_grad():
            prior = view_mix_prior(self._prototypes.to(dev), ctx.to(dev))
            return prior + self._residual(q)

    # -- stored once -------------------------------------------------------------------------
    def model_tensors(self) -> dict[str, torch.Tensor]:
        self._require_fitted("model_tensors")
        assert self._basis is not None and self._mean is not None
        assert self._decay is not None
        return {
            **self._proto_stored,
            "basis": self._basis,
            "residual_mean": self._mean,
            "decay": self._decay,
        }

    def planned_config(self, num_classes: int) -> dict[str, Any] | None:
        """An upper bound of :meth:`to_config` before fit (rate control, labelzip.rate)."""
        if self.config.num_images is None:
            return None
        update: dict[str, Any] = {"step": _WIDEST_FLOAT, "symbol_bound": _MAX_BOUND}
        if self.config.prototype_coding == "ans":
            update["prototype_delta"] = True
        # Rate control sets the budget after this estimate and the fit adds the
        # bytes the prototypes leave: stand in with 15 digits.
        update["payload_budget_bytes"] = 10**15 - 1
        widest = self.config.model_copy(update=update)
        return self.stored_config(widest, self.config.num_images, num_classes)

    def residual_shapes(
        self, num_classes: int
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The fp16 basis and mean, and the int32 geometric decay of each axis."""
        axes = _num_axes(num_classes, self.config.max_axes)
        return {
            "basis": ((axes, num_classes), torch.float16),
            "residual_mean": ((num_classes,), torch.float16),
            "decay": ((axes,), torch.int32),
        }

    def load_residual(self, tensors: dict[str, torch.Tensor], num_classes: int) -> None:
        axes = _num_axes(num_classes, self.config.max_axes)
        self._basis = tensors["basis"].cpu().contiguous()
        self._mean = tensors["residual_mean"].cpu().contiguous()
        self._decay = tensors["decay"].cpu().contiguous()
        try:
            self._coder = CategoricalStreamCoder(
                geometric_tables(self._decay, self.config.symbol_bound),
                list(range(axes)),
            )
        except InputError as exc:
            raise ArchiveFormatError(f"invalid ctx-transform model: {exc}") from exc

    # -- rate control ------------------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> ContextTransformCodec:
        """Prototype precision and payload budget for ``budget_bytes`` in all.

        Unless fixed, prototypes are 4-bit (ANS-coded) when that frees at least
        :data:`~labelzip.codecs.context.viewmix.PROTOTYPE_SWITCH_BITS` per label, else
        8-bit. The fit then picks the quantiser step that fits the payload.

        Raises:
            ConfigError: no num_images, or invalid options.
            UnreachableTargetError: the model alone is over budget, or the payload
                leaves stored labels fewer than ``min_label_bits`` bits each
                (auto-pruning then keeps fewer views).
        """
        fixed = {k: v for k, v in options.items() if k != "kind"}
        base: ContextTransformConfig
        base, m = cls.target_config(options)
        if "prototype_bits" not in fixed:
            freed = prototype_bytes(m, num_classes, 8) - prototype_bytes(
                m, num_classes, 4
            )
            four = 8 * freed >= PROTOTYPE_SWITCH_BITS * max(1, num_labels)
            base = base.model_copy(update={"prototype_bits": 4 if four else 8})
        if "prototype_coding" not in fixed:
            coding = "ans" if base.prototype_bits == 4 else "packed"
            base = base.model_copy(update={"prototype_coding": coding})
        model = cls.model_bytes_for(
            m, num_classes, base.prototype_bits, base.prototype_coding, base.max_axes
        )
        payload = budget_bytes - model
        need = math.ceil(base.min_label_bits * num_labels / 8)
        if payload <= 0 or payload < need:
            dense = 2 * num_labels * num_classes
            raise UnreachableTargetError(
                f"ctx-transform: {budget_bytes} bytes leave {max(0, payload)} for the "
                f"payload of {num_labels} labels after a {model}-byte model "
                f"({m} images' prototypes, residual axes), fewer than "
                f"min_label_bits={base.min_label_bits:g} bits each (best ratio with "
                f"that floor {dense / max(1, model + need):.1f}x vs fp16 before the "
                "header); keep fewer views (auto-prune), lower min_label_bits or "
                "lower the ratio"
            )
        return cls(base.model_copy(update={"payload_budget_bytes": payload}))
