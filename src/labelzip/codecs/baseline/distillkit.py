"""DistillKit's own storage as a codec: per-token quantised log-probabilities + ids.

What a DistillKit capture holds per token (see :mod:`.distillkit_quant`): the
top-k log-probabilities as one row of quantised bytes (``exact_k`` floats,
polynomial coefficients, residual bins) and the k ids. This codec stores exactly
those bytes, so an import keeps every stored bit and an export re-emits them
(:meth:`DistillKitCodec.encode_topk` / :meth:`~DistillKitCodec.decode_topk`), and
decodes them with DistillKit's reader arithmetic. It also encodes teacher logits
itself (:meth:`~DistillKitCodec.encode`: log-softmax, top-k, DistillKit's
quantiser), which makes DistillKit's settings a baseline inside labelzip.

Decoded labels are log-probabilities: the k kept values at their ids and, for the
other ``C - k`` classes, either DistillKit's ``SYMMETRIC_UNIFORM`` fill (the
missing mass ``1 - sum exp(kept)`` spread evenly, at least 1e-8 per class; the
default, finite) or its ``ZERO`` handling (``-inf``: the kept values only).

Schemes: ``quantized`` (DistillKit's ``DistributionQuantizationConfig``, the
current format; ``quant`` holds it, or ``preset`` picks DistillKit's
recommended / budget settings with d = C at fit) and ``legacy`` (its
``LegacyLogitCompressionConfig``: exact values and coefficients kept as float32;
read and re-emitted only, not encoded from logits).

Block layout for N labels: ``N * R`` bytes of per-token rows (R =
``row_bytes``: DistillKit's ``compressed_logprobs`` row, or for ``legacy`` the
exact values then the coefficients as little-endian float32), then the N * k ids
as one little-endian bit stream of ``ceil(log2 C)`` bits each, padded to a byte.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from labelzip.codecs.base import (
    CodecConfig,
    EncodedBlock,
    LogitSource,
    ModelFreeCodec,
    check_logits,
    first_batch_classes,
)
from labelzip.codecs.baseline.distillkit_quant import (
    DistillKitLegacyConfig,
    DistillKitQuantConfig,
    compress_logprobs,
    decompress_logprobs,
    legacy_decompress,
)
from labelzip.codecs.idblock import (
    check_class_ids,
    id_block_bytes,
    join_id_block,
    split_id_block,
)
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    UnreachableTargetError,
)
from labelzip.ops.bitpack import bits_for

__all__ = [
    "MISSING_FLOOR",
    "PRESETS",
    "DistillKitCodec",
    "DistillKitCodecConfig",
    "preset_config",
    "spread_missing_mass",
]

# DistillKit's SYMMETRIC_UNIFORM floor on the mass of one missing class.
MISSING_FLOOR = 1e-8

# DistillKit's README settings (d is set to the vocabulary at fit).
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {
        "k": 128,
        "exact_k": 16,
        "exact_dtype": "bfloat16",
        "polynomial_terms": [0, 1, 2, 3, 4, "sqrt"],
        "term_dtype": "float32",
        "residual_bins": [],
        "delta_encoding": False,
        "error_diffusion": False,
    },
    "budget": {
        "k": 50,
        "exact_k": 1,
        "exact_dtype": "bfloat16",
        "polynomial_terms": [0, 1, "sqrt"],
        "term_dtype": "float32",
        "residual_bins": [],
        "delta_encoding": False,
        "error_diffusion": False,
    },
}


def spread_missing_mass(
    values: torch.Tensor,
    ids: torch.Tensor,
    num_classes: int,
    *,
    floor: float = MISSING_FLOOR,
) -> torch.Tensor:
    """(N, k) kept log-probabilities at (N, k) ids -> (N, C) float32 log-probabilities.

    The classes outside the k get the missing mass ``1 - sum exp(kept)`` in equal
    shares, each at least ``floor`` (DistillKit's ``SYMMETRIC_UNIFORM``; Megatron's
    "ghost token" of the residual mass, spread over the tokens it stands for).
    """
    values = values.float()
    n, k = values.shape
    missing = 1.0 - torch.logsumexp(values, dim=1, keepdim=True).exp()
    fill = (missing / max(num_classes - k, 1)).clamp(min=floor).log()
    out = fill.expand(n, num_classes).contiguous()
    return out.scatter_(1, ids.to(out.device, torch.int64), values)


def preset_config(name: str, vocab: int) -> DistillKitQuantConfig:
    """DistillKit's ``name`` preset (``recommended`` or ``budget``) for ``vocab`` ids."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown DistillKit preset {name!r}; choose {sorted(PRESETS)}"
        )
    return DistillKitQuantConfig(d=vocab, **PRESETS[name])


class DistillKitCodecConfig(CodecConfig):
    """Configuration of :class:`DistillKitCodec`."""

    kind: Literal["distillkit"] = "distillkit"
    scheme: Literal["quantized", "legacy"] = Field(
        default="quantized", description="DistillKit's current format or its legacy one"
    )
    quant: DistillKitQuantConfig | None = Field(
        default=None, description="quantized: DistillKit's compression config"
    )
    preset: Literal["recommended", "budget"] = Field(
        default="recommended",
        description="quantized without quant: DistillKit's README setting to use",
    )
    legacy: DistillKitLegacyConfig | None = Field(
        default=None, description="legacy: DistillKit's legacy compression config"
    )
    missing: Literal["symmetric_uniform", "zero"] = Field(
        default="symmetric_uniform",
        description="decoded mass of the classes outside the top k (DistillKit's "
        "missing-probability handling)",
    )

    @model_validator(mode="after")
    def _check(self) -> DistillKitCodecConfig:
        if self.scheme == "legacy" and self.legacy is None:
            raise ValueError("scheme 'legacy' needs the legacy config")
        if self.scheme == "quantized" and self.legacy is not None:
            raise ValueError("a legacy config needs scheme 'legacy'")
        if self.scheme == "legacy" and self.quant is not None:
            raise ValueError("scheme 'legacy' takes no quant config")
        return self


class DistillKitCodec(ModelFreeCodec):
    """DistillKit's quantised top-k rows and ids; no model bytes."""

    kind: ClassVar[str] = "distillkit"
    codec_id: ClassVar[int] = 10
    config_class: ClassVar[type[CodecConfig]] = DistillKitCodecConfig

    config: DistillKitCodecConfig

    # -- layout ----------------------------------------------------------------------
    @property
    def k(self) -> int:
        cfg = self.config
        if cfg.legacy is not None:
            return cfg.legacy.k
        return cfg.quant.k if cfg.quant is not None else int(PRESETS[cfg.preset]["k"])

    @property
    def row_bytes(self) -> int:
        """Bytes of one label's value row (R)."""
        cfg = self.config
        if cfg.legacy is not None:
            return cfg.legacy.row_bytes()
        if cfg.quant is None:
            raise ConfigError("the distillkit codec has no quant config before fit()")
        return cfg.quant.row_bytes()

    def block_bytes(self, num_labels: int) -> int:
        num_classes = self._require_fitted("block_bytes")
        return id_block_bytes(num_labels, self.row_bytes, self.k, num_classes)

    # -- fitting -----------------------------------------------------------------
    def fit(
        self, source: LogitSource, *, num_labels: int | None = None
    ) -> DistillKitCodec:
        """Read C from the first (B, C) batch; a preset gets d = C."""
        num_classes = first_batch_classes(source)
        cfg = self.config
        vocab = cfg.legacy.vocab_size if cfg.legacy is not None else None
        if cfg.scheme == "quantized":
            if cfg.quant is None:
                quant = preset_config(cfg.preset, num_classes)
                self.config = cfg.model_copy(update={"quant": quant})
            vocab = self.config.quant.d if self.config.quant is not None else None
        if vocab is None or vocab < num_classes or self.k > num_classes:
            raise ConfigError(
                f"distillkit config (vocabulary {vocab}, k={self.k}) does not fit "
                f"{num_classes} classes"
            )
        self.num_classes = num_classes
        return self

    # -- byte path ---------------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> DistillKit's rows of their top-k log-probabilities."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        quant = self.config.quant
        if quant is None:
            raise ConfigError(
                "the legacy DistillKit scheme is read and re-emitted only; encode "
                "with scheme 'quantized'"
            )
        logprobs = torch.log_softmax(logits.detach().float().cpu(), dim=1)
        values, ids = logprobs.topk(quant.k, dim=1)
        return self.encode_topk(compress_logprobs(values, quant), ids)

    def encode_topk(self, rows: torch.Tensor, ids: torch.Tensor) -> EncodedBlock:
        """Stored rows (N, R) uint8 and ids (N, k) -> a block, kept bit for bit."""
        num_classes = self._require_fitted("encode_topk")
        n = int(rows.shape[0]) if rows.dim() == 2 else -1
        if rows.dtype != torch.uint8 or n < 0 or rows.shape[1] != self.row_bytes:
            raise InputError(
                f"distillkit rows must be (N, {self.row_bytes}) uint8, got "
                f"{tuple(rows.shape)} {rows.dtype}"
            )
        ids = check_class_ids(ids, num_classes, shape=(n, self.k), what="token ids")
        return join_id_block(rows, ids, num_classes)

    def decode_topk(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block -> ((N, R) uint8 rows, (N, k) int64 ids), exactly as stored."""
        num_classes = self._require_fitted("decode_topk")
        data, ids = split_id_block(
            block,
            row_bytes=self.row_bytes,
            k=self.k,
            num_classes=num_classes,
            what=f"distillkit block (k={self.k})",
        )
        rows = data.reshape(block.num_labels, self.row_bytes)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return rows.to(dev), ids.to(dev)

    def values(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, R) stored rows -> (N, k) log-probabilities as DistillKit's reader
        gets them (its dtype: float32 for most configs, bf16 with delta encoding)."""
        cfg = self.config
        if cfg.legacy is not None:
            n = rows.shape[0]
            width = cfg.legacy.row_bytes() // 4
            floats = rows.reshape(-1).clone().view(torch.float32).reshape(n, width)
            exact, coeffs = (
                floats[:, : cfg.legacy.exact_k],
                floats[:, cfg.legacy.exact_k :],
            )
            return legacy_decompress(exact, coeffs, cfg.legacy)
        if cfg.quant is None:
            raise ConfigError("the distillkit codec has no quant config before fit()")
        return decompress_logprobs(rows.cpu(), cfg.quant)

    def densify(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(N, k) kept log-probabilities at (N, k) ids -> (N, C) float32 labels."""
        num_classes = self._require_fitted("densify")
        if self.config.missing == "symmetric_uniform":
            return spread_missing_mass(values, ids, num_classes)
        values = values.float()
        out = values.new_full((values.shape[0], num_classes), float("-inf"))
        return out.scatter_(1, ids.to(out.device, torch.int64), values)

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Block -> (N, C) float32 log-probabilities (see the module docstring)."""
        rows, ids = self.decode_topk(block)
        out = self.densify(self.values(rows), ids)
        return out.to(device) if device is not None else out

    # -- what is shipped once ------------------------------------------------------------
    def check_stored(self, num_classes: int) -> None:
        if self.config.scheme == "quantized" and self.config.quant is None:
            raise ArchiveFormatError("stored distillkit codec has no quant config")
        if self.k > num_classes:
            raise ArchiveFormatError(
                f"stored distillkit k={self.k} exceeds num_classes={num_classes}"
            )

    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> DistillKitCodec:
        """DistillKit's settings are fixed-rate: the configured ones if they fit.

        Raises:
            UnreachableTargetError: they need more than ``budget_bytes``.
        """
        try:
            codec = cls(DistillKitCodecConfig(**options))
        except Exception as exc:
            raise ConfigError(f"invalid distillkit codec options: {exc}") from exc
        codec.fit([torch.zeros(1, num_classes)])
        need = codec.block_bytes(num_labels)
        if need > budget_bytes:
            raise UnreachableTargetError(
                f"distillkit (k={codec.k}, {codec.row_bytes} value bytes a label) "
                f"needs {need} bytes for {num_labels} labels, the budget is "
                f"{budget_bytes}; DistillKit's settings set its rate (choose a smaller "
                "preset, or a lower ratio)"
            )
        return cls(DistillKitCodecConfig(**options))

    def expected_payload_bits(self) -> float | None:
        num_classes = self._require_fitted("expected_payload_bits")
        return float(8 * self.row_bytes + self.k * bits_for(num_classes))
