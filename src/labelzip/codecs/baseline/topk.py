"""Top-K logits per label: the LPQLD / FKD / LLM-KD sparse baseline.

Each label keeps its K largest values (fp16, fp32 or bf16) and their class ids
(bit-packed at ``ceil(log2 C)`` bits), sorted by value, descending. Three
decoders rebuild a dense label from them (LPQLD's names):

- ``mr``: softmax over the kept logits only. Decoded = kept logits, ``-inf``
  elsewhere, so ``softmax(decoded / T)`` is the kept-only distribution at any T.
- ``mrs``: the missing logits are filled with the smallest kept logit, so
  ``softmax(decoded / T)`` is that filled distribution at any T.
- ``ms``: the stored values are log-probabilities ``log softmax(z / T_s)`` of the
  FULL distribution at the storage temperature ``T_s`` (config ``temperature``);
  the missing mass ``1 - sum`` is spread uniformly over the C - K other classes.
  Decoded = ``T_s * log q``, so ``softmax(decoded / T_s) = q`` exactly and, at
  another temperature T, ``softmax(decoded / T)`` is proportional to
  ``q ** (T_s / T)``. Where the missing mass is spread matters: spread at
  T_s = 1 and softened afterwards, the tail gets ``(m / (C - K)) ** (1 / T)``,
  far from the teacher's tail at T = 4. ``T_s`` defaults to 4
  (:data:`DEFAULT_MS_TEMPERATURE`), the best KL at both T = 4 and T = 20 on
  ImageNet labels; students trained at T = 1 should store with T_s = 1
  (docs/vqae-design.md, "Top-k design choices").

Relative values (``relative=True``, the default for ``mr``/``mrs``): logits only
matter up to a per-label constant, so the top value is dropped and the other
K - 1 are stored as differences to it, saving one value per label at no loss
of fidelity.
``ms`` needs absolute log-probabilities (for the missing mass) and stores all K.

Block layout for N labels (``K' = K - 1`` if relative else ``K``):
``N * K'`` little-endian values of ``value_dtype``, row-major, then the ``N * K``
class ids as one little-endian bit stream of ``ceil(log2 C)`` bits each
(:func:`labelzip.ops.bitpack.pack_bits`), padded to a whole byte:
``N * K' * value_bytes + ceil(N * K * bits / 8)`` bytes.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from labelzip.codecs.base import (
    CodecConfig,
    EncodedBlock,
    LabelContext,
    LogitSource,
    ParsedBlock,
    ParsedDecoding,
    PlannedConfig,
    check_logits,
    compact_ints,
    first_batch_classes,
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
)
from labelzip.ops.bitpack import bits_for
from labelzip.rate.search import largest_fitting

__all__ = [
    "ASSUMED_BLOCK_LABELS",
    "DEFAULT_MS_TEMPERATURE",
    "TopKCodec",
    "TopKConfig",
]

# MS storage temperature when none is given: the best KL at T=4 and T=20
# (docs/vqae-design.md, "Top-k design choices").
DEFAULT_MS_TEMPERATURE = 4.0

# Rate control reserves one byte of bit-stream padding per this many labels: the
# archive encodes blocks of thousands of labels, each padding its streams once.
ASSUMED_BLOCK_LABELS = 1024

# Smallest missing mass per class an MS decoder assigns (keeps log finite).
_MS_MASS_FLOOR = 1e-12

_VALUE_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
}


class TopKConfig(CodecConfig):
    """Configuration of :class:`TopKCodec`."""

    kind: Literal["topk"] = "topk"
    k: int = Field(
        default=10, ge=1, le=1 << 20, description="entries kept per label (K)"
    )
    decoder: Literal["mr", "ms", "mrs"] = Field(
        default="ms",
        description="how missing classes are rebuilt: mr (no mass), ms (uniform "
        "missing mass), mrs (fill with the minimum kept logit)",
    )
    value_dtype: Literal["fp16", "fp32", "bf16"] = Field(
        default="fp16",
        description="storage dtype of the kept values (bf16: Megatron captures)",
    )
    relative: bool = Field(
        default=False,
        description="store values as differences to the top one and drop it "
        "(mr/mrs only; default on for them)",
    )
    temperature: float = Field(
        default=DEFAULT_MS_TEMPERATURE,
        gt=0.0,
        le=1000.0,
        description="ms only: temperature the kept log-probabilities and the "
        "uniform missing mass are computed at; set it to the KD temperature",
    )

    @model_validator(mode="before")
    @classmethod
    def _decoder_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            decoder = data.get("decoder", "ms")
            if data.get("relative") is None:
                data["relative"] = decoder != "ms"
            if data.get("temperature") is None:
                data["temperature"] = DEFAULT_MS_TEMPERATURE if decoder == "ms" else 1.0
        return data

    @model_validator(mode="after")
    def _check_decoder_options(self) -> TopKConfig:
        if self.decoder == "ms" and self.relative:
            raise ValueError(
                "relative=True needs decoder mr or mrs; ms stores absolute "
                "log-probabilities to know the missing mass"
            )
        if self.decoder != "ms" and self.temperature != 1.0:
            raise ValueError(
                f"temperature={self.temperature} only applies to decoder ms; "
                "mr/mrs store raw logits that work at every temperature"
            )
        return self


class TopKCodec(ParsedDecoding, PlannedConfig):
    """K largest values + bit-packed class ids per label; no model bytes."""

    kind: ClassVar[str] = "topk"
    codec_id: ClassVar[int] = 2
    config_class: ClassVar[type[CodecConfig]] = TopKConfig

    config: TopKConfig

    # -- layout --------------------------------------------------------------------
    @property
    def stored_values(self) -> int:
        """Values stored per label (K, or K - 1 when relative)."""
        return self.config.k - int(self.config.relative)

    @property
    def value_bytes(self) -> int:
        return 4 if self.config.value_dtype == "fp32" else 2

    def block_bytes(self, num_labels: int) -> int:
        """Exact size of a block of ``num_labels`` labels."""
        num_classes = self._require_fitted("block_bytes")
        return _block_bytes(self.config, num_labels, num_classes)

    # -- fitting -----------------------------------------------------------------
    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> TopKCodec:
        """Read the class count from the first (B, C) batch; checks K <= C."""
        num_classes = first_batch_classes(source)
        if self.config.k > num_classes:
            raise ConfigError(
                f"topk k={self.config.k} exceeds the {num_classes} classes; "
                f"choose k <= {num_classes}"
            )
        self.num_classes = num_classes
        return self

    # -- byte path ---------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> top-K values and ids, on the logits' device."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        cfg = self.config
        x = logits.detach().float()
        if cfg.decoder == "ms":
            x = torch.log_softmax(x / cfg.temperature, dim=1)
        values, ids = x.topk(cfg.k, dim=1)  # (N, K), sorted descending
        if cfg.relative:
            values = values[:, 1:] - values[:, :1]
        stored = values.to(_VALUE_DTYPES[cfg.value_dtype])
        if not bool(torch.isfinite(stored).all()):
            raise InputError(
                f"kept values up to |{float(values.abs().max()):.4g}| overflow "
                f"{cfg.value_dtype}; use value_dtype='fp32'"
            )
        value_bytes = stored.cpu().contiguous().view(torch.uint8)
        return join_id_block(value_bytes, ids, num_classes)

    def encode_topk(self, values: torch.Tensor, ids: torch.Tensor) -> EncodedBlock:
        """Already-sparse labels -> a block, kept exactly as given.

        For stores that hold top-k values themselves (LPQLD, FKD, LM captures):
        ``values`` (N, K) in the configured ``value_dtype`` and ``ids`` (N, K)
        class ids are stored in the given order, unsorted and unconverted, so
        :meth:`decode_topk` gives both back bit for bit. Same block layout as
        :meth:`encode`; absolute values only (``relative=False``).

        Raises:
            ConfigError: a relative config.
            InputError: shapes, dtype or ids that do not fit the codec.
        """
        num_classes = self._require_fitted("encode_topk")
        cfg = self.config
        if cfg.relative:
            raise ConfigError(
                "encode_topk() stores absolute values; use relative=False"
            )
        want = _VALUE_DTYPES[cfg.value_dtype]
        if values.dim() != 2 or values.shape[1] != cfg.k or values.dtype != want:
            raise InputError(
                f"encode_topk() needs (N, {cfg.k}) {want} values, got "
                f"{tuple(values.shape)} {values.dtype}"
            )
        ids = check_class_ids(ids, num_classes, shape=tuple(values.shape))
        value_bytes = values.detach().cpu().contiguous().view(torch.uint8)
        return join_id_block(value_bytes, ids, num_classes)

    def decode_topk(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block -> ((N, K') values in ``value_dtype``, (N, K) int64 ids), as stored.

        ``K' = K - 1`` for a relative config (differences to the dropped top
        value). The inverse of :meth:`encode_topk`.
        """
        num_classes = self._require_fitted("decode_topk")
        cfg = self.config
        raw, ids = split_id_block(
            block,
            row_bytes=self.stored_values * self.value_bytes,
            k=cfg.k,
            num_classes=num_classes,
            what=f"topk block (k={cfg.k})",
        )
        raw = raw.to(device).clone()  # aligned copy for the dtype view
        values = raw.view(_VALUE_DTYPES[cfg.value_dtype])
        return values.reshape(block.num_labels, self.stored_values), ids.to(device)

    def parse_block(
        self,
        block: EncodedBlock,
        context: LabelContext | None = None,
        device: torch.device | str | None = None,
    ) -> ParsedBlock:
        """Block -> the stored values and the class ids (narrow ints), per label."""
        num_classes = self._require_fitted("decode")
        stored, ids = self.decode_topk(block, device)
        parts = {"values": stored, "ids": compact_ints(ids, num_classes)}
        return ParsedBlock(block.num_labels, parts)

    def decode_parsed(
        self, parsed: ParsedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Parsed rows -> (n, C) float32 logits (mr, mrs) or T_s * log-probs (ms).

        The densify step, on those rows only.
        """
        num_classes = self._require_fitted("decode")
        values = parsed.parts["values"].to(device).float()
        ids = parsed.parts["ids"].to(device).long()
        if self.config.relative:
            values = torch.cat([values.new_zeros(values.shape[0], 1), values], dim=1)
        return _densify(values, ids, num_classes, self.config)

    # -- what is shipped once ------------------------------------------------------
    def check_stored(self, num_classes: int) -> None:
        if self.config.k > num_classes:
            raise ArchiveFormatError(
                f"stored topk k={self.config.k} exceeds num_classes={num_classes}"
            )

    def expected_payload_bits(self) -> float | None:
        num_classes = self._require_fitted("expected_payload_bits")
        return float(
            8 * self.stored_values * self.value_bytes
            + self.config.k * bits_for(num_classes)
        )

    def rate_limit(self) -> str:
        num_classes = self._require_fitted("rate_limit")
        k = self.config.k
        if k >= num_classes:
            return f"k={k} already keeps every class"
        bigger = TopKCodec(self.config.model_copy(update={"k": k + 1}))
        bigger.num_classes = num_classes
        now = self.expected_payload_bits() or 0.0
        more = bigger.expected_payload_bits() or 0.0
        floor = "k=1 is the smallest topk; " if k == 1 else ""
        return (
            f"{floor}K is a whole number of entries: k={k} takes {now:g} payload bits "
            f"per label and k={k + 1} would take {more:g}, over the budget"
        )

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> TopKCodec:
        """The largest K (<= C) whose blocks fit ``budget_bytes``.

        A ``k`` fixed in ``options`` is kept if it fits, else rejected. The size
        counts one byte of stream padding per :data:`ASSUMED_BLOCK_LABELS` labels.
        """
        try:
            base = TopKConfig(**options)
        except Exception as exc:
            raise ConfigError(f"invalid topk codec options: {exc}") from exc

        def size(k: int) -> int:
            cfg = base.model_copy(update={"k": k})
            slack = math.ceil(num_labels / ASSUMED_BLOCK_LABELS)
            return _block_bytes(cfg, num_labels, num_classes) + slack

        if "k" in options and base.k > num_classes:
            raise ConfigError(f"topk k={base.k} exceeds the {num_classes} classes")
        k = largest_fitting(
            size,
            budget_bytes,
            lo=1,
            hi=num_classes,
            fixed=base.k if "k" in options else None,
            num_labels=num_labels,
            num_classes=num_classes,
            subject=lambda k: f"topk k={k} ({base.decoder}, {base.value_dtype})",
            advice="choose a lower ratio or a codec with a learned model (vqae)",
        )
        return cls(base.model_copy(update={"k": k}))


def _block_bytes(cfg: TopKConfig, num_labels: int, num_classes: int) -> int:
    value_bytes = 4 if cfg.value_dtype == "fp32" else 2
    stored = cfg.k - int(cfg.relative)
    return id_block_bytes(num_labels, stored * value_bytes, cfg.k, num_classes)


def _densify(
    values: torch.Tensor, ids: torch.Tensor, num_classes: int, cfg: TopKConfig
) -> torch.Tensor:
    """(N, K) kept values at (N, K) ids -> (N, C) decoded logits of ``cfg.decoder``."""
    n, k = values.shape
    if cfg.decoder == "mr":
        fill = values.new_full((n, 1), float("-inf"))
    elif cfg.decoder == "mrs":
        fill = values.min(dim=1, keepdim=True).values
    else:  # ms: values are log q at T_s; spread the missing mass uniformly
        missing = 1.0 - values.exp().sum(dim=1, keepdim=True)
        per_class = missing.clamp_min(_MS_MASS_FLOOR) / max(num_classes - k, 1)
        fill = per_class.log()
    out = fill.expand(n, num_classes).contiguous()
    out.scatter_(1, ids, values)
    if cfg.decoder == "ms" and cfg.temperature != 1.0:
        out.mul_(cfg.temperature)
    return out
