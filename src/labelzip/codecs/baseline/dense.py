"""Dense logits, stored as they are: the SRe2L / CDA baseline.

Every label keeps all C values in fp32, fp16 or bf16. There is nothing to learn
and no model to ship; the rate is fixed by the dtype (fp16 and bf16 are the 1x
reference, fp32 is 0.5x). fp32 round-trips exactly, fp16/bf16 round to the
nearest representable value.

Block layout: the N x C values, row-major, each as a little-endian number of
the configured dtype (``N * C * bytes_per_value`` bytes, no header).
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from labelzip.accounting import reference_bytes
from labelzip.codecs.base import (
    CodecConfig,
    EncodedBlock,
    LabelContext,
    LogitSource,
    ParsedBlock,
    ParsedDecoding,
    PlannedConfig,
    check_logits,
    first_batch_classes,
)
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    UnreachableTargetError,
)

__all__ = ["DTYPES", "DenseCodec", "DenseConfig"]

DenseDtype = Literal["fp32", "fp16", "bf16"]

# Storage dtype of each option, most precise first (rate control walks this order).
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


class DenseConfig(CodecConfig):
    """Configuration of :class:`DenseCodec`."""

    kind: Literal["dense"] = "dense"
    dtype: DenseDtype = Field(
        default="fp16",
        description="storage dtype of every value: fp32 (exact), fp16 or bf16",
    )


class DenseCodec(ParsedDecoding, PlannedConfig):
    """All C logits per label in a fixed float dtype; no model bytes."""

    kind: ClassVar[str] = "dense"
    codec_id: ClassVar[int] = 1
    config_class: ClassVar[type[CodecConfig]] = DenseConfig

    config: DenseConfig

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.config.dtype]

    @property
    def bytes_per_value(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    # -- fitting -----------------------------------------------------------------
    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> DenseCodec:
        """Read the class count from the first (B, C) batch; nothing else to learn."""
        self.num_classes = first_batch_classes(source)
        return self

    # -- byte path ---------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> N*C little-endian values of the configured dtype."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        values = logits.detach().to(device="cpu", dtype=self.torch_dtype)
        if not bool(torch.isfinite(values).all()):
            peak = float(logits.detach().abs().max())
            raise InputError(
                f"logits up to |{peak:.4g}| overflow {self.config.dtype}; "
                "use dtype='fp32' or 'bf16'"
            )
        data = values.contiguous().view(torch.uint8).reshape(-1)
        if sys.byteorder == "big":  # pragma: no cover - all supported hosts are LE
            data = data.reshape(-1, self.bytes_per_value).flip(1).reshape(-1)
        return EncodedBlock(num_labels=int(logits.shape[0]), data=data.clone())

    def parse_block(
        self,
        block: EncodedBlock,
        context: LabelContext | None = None,
        device: torch.device | str | None = None,
    ) -> ParsedBlock:
        """Block -> its (N, C) values in the stored dtype (widened on decode)."""
        num_classes = self._require_fitted("decode")
        expected = block.num_labels * num_classes * self.bytes_per_value
        if block.nbytes != expected:
            raise ArchiveFormatError(
                f"dense block of {block.num_labels} labels x {num_classes} classes "
                f"in {self.config.dtype} must hold {expected} bytes, got {block.nbytes}"
            )
        data = block.data.to(device=device, dtype=torch.uint8).reshape(-1)
        if sys.byteorder == "big":  # pragma: no cover
            data = data.reshape(-1, self.bytes_per_value).flip(1).reshape(-1)
        if data.storage_offset() % self.bytes_per_value:  # a view into a larger buffer
            data = data.clone()
        values = data.contiguous().view(self.torch_dtype)
        values = values.reshape(block.num_labels, num_classes)
        return ParsedBlock(block.num_labels, {"values": values})

    def decode_parsed(
        self, parsed: ParsedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Parsed rows -> (n, C) float32 logits on ``device``."""
        values = parsed.parts["values"]
        return values.to(device=device or values.device, dtype=torch.float32)

    def expected_payload_bits(self) -> float | None:
        num_classes = self._require_fitted("expected_payload_bits")
        return float(8 * self.bytes_per_value * num_classes)

    def rate_limit(self) -> str:
        num_classes = self._require_fitted("rate_limit")
        bits = 8 * self.bytes_per_value * num_classes
        if self.bytes_per_value >= 4:
            return f"fp32 ({bits} bits per label) is the widest dense dtype"
        return (
            f"dense stores all {num_classes} values of every label, {bits} bits per "
            f"label in {self.config.dtype}; fp32 takes twice that, over the budget, "
            "and no dense dtype lies between fp16 and fp32"
        )

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> DenseCodec:
        """The most precise dtype whose N*C values fit ``budget_bytes``.

        Dense has a fixed rate, so the only choice is the dtype: fp32 if it fits,
        else fp16. A dtype fixed in ``options`` is kept or rejected.
        """
        try:
            fixed = DenseConfig(**options)
        except Exception as exc:
            raise ConfigError(f"invalid dense codec options: {exc}") from exc
        choices = [fixed.dtype] if "dtype" in options else ["fp32", "fp16"]
        for name in choices:
            size = torch.empty((), dtype=DTYPES[name]).element_size()
            if num_labels * num_classes * size <= budget_bytes:
                return cls(fixed.model_copy(update={"dtype": name}))
        ref = reference_bytes(num_labels, num_classes, "fp16")
        best = "fp16" if "dtype" not in options else fixed.dtype
        best_size = torch.empty((), dtype=DTYPES[best]).element_size()
        need = num_labels * num_classes * best_size
        raise UnreachableTargetError(
            f"dense {best} needs {need} bytes for {num_labels} labels x {num_classes} "
            f"classes but the budget is {budget_bytes}; the best reachable ratio is "
            f"{ref / need:.2f}x vs fp16 ({8 * best_size * num_classes} bits per label); "
            "use a lower ratio or a compressing codec (topk, rskd, vqae)"
        )
