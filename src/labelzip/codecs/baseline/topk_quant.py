"""Top-K support as a set with quantised levels: a lossy top-k that keeps MR's zeros.

For labels whose consumer renormalises over the kept classes (LPQLD's MR loss:
``softmax`` over the K stored logits, exactly zero elsewhere), the classes kept
and roughly how far each lies below the top are all that matter: a decoded
label must put no mass outside the K classes, and the order within the K is
only needed to the precision the temperature blurs. So per label this codec
stores:

- **the support**: the K class ids as a set, sorted ascending, each coded by its
  gap to the previous one with a Rice code of parameter ``m`` (``gap_bits``):
  the quotient ``gap >> m`` in unary, the ``m`` low bits raw. ImageNet-like
  supports cluster (similar classes have near ids), so a gap costs far less than
  the ``ceil(log2 C)`` bits of a packed id;
- **a level per kept class**: ``round((top - value) / step)``, clamped to
  ``[1, 2 ** value_bits - 1]``, at ``value_bits`` bits; the top class alone is
  at level 0, so the decoded argmax is the stored one (ties: the lowest id).

Decoded: ``-level * step`` at the kept ids (the top class at 0), ``-inf``
elsewhere, so ``softmax(decoded / T)`` is zero outside the support at every T,
as in MR. The error a level makes in the logit is at most ``step / 2`` (up to
``step`` for a runner-up within ``step / 2`` of the top, more for values clamped
at the last level), so at temperature T it scales with ``step / T``.

Size: the gaps of one label sum to less than C, so the unary parts take at most
``K + (C - K) >> m`` bits; a label takes at most
``K * (value_bits + m + 1) + ((C - K) >> m)`` bits, which rate control uses (a
guaranteed fit); the real size is usually a little below.

Block layout for N labels (ids in ascending order within each label): the
N * K levels, ``value_bits`` bits each, one little-endian bit stream padded to a
byte; the N * K low gap bits, ``m`` bits each (absent when m = 0), padded to a
byte; then the unary quotients of the N * K gaps (q ones, then a zero), one bit
stream to the end of the block, padded with zeros.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from labelzip.accounting import reference_bytes
from labelzip.codecs.base import (
    CodecConfig,
    EncodedBlock,
    LogitSource,
    ModelFreeCodec,
    check_logits,
    first_batch_classes,
    iterate_source,
)
from labelzip.codecs.baseline.topk import ASSUMED_BLOCK_LABELS
from labelzip.codecs.idblock import check_class_ids
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    UnreachableTargetError,
)
from labelzip.ops.bitpack import bits_for, pack_bits, packed_size, unpack_bits

__all__ = ["TopKQuantCodec", "TopKQuantConfig", "rice_bits_bound"]

# Labels of the fit source read to choose the Rice parameter.
FIT_LABELS = 16384


class TopKQuantConfig(CodecConfig):
    """Configuration of :class:`TopKQuantCodec`."""

    kind: Literal["topk-q"] = "topk-q"
    k: int = Field(default=10, ge=1, le=1 << 16, description="classes kept per label")
    value_bits: int = Field(
        default=3, ge=1, le=8, description="bits of each kept class's level"
    )
    step: float = Field(
        default=2.0,
        gt=0.0,
        le=64.0,
        description="logits per level (the largest error a level makes is step/2)",
    )
    gap_bits: int | None = Field(
        default=None,
        ge=0,
        le=24,
        description="Rice parameter m of the id gaps; None = the cheapest on the fit data",
    )


def rice_bits_bound(k: int, num_classes: int, value_bits: int, gap_bits: int) -> int:
    """Most payload bits one label can take (see the module docstring)."""
    return k * (value_bits + gap_bits + 1) + ((num_classes - k) >> gap_bits)


def _best_bound_gap_bits(k: int, num_classes: int) -> int:
    """The Rice parameter whose worst case is smallest (what rate control uses)."""
    top = bits_for(num_classes)
    return min(range(top + 1), key=lambda m: rice_bits_bound(k, num_classes, 0, m))


class TopKQuantCodec(ModelFreeCodec):
    """K kept class ids as a Rice-coded set, a quantised level each; no model bytes."""

    kind: ClassVar[str] = "topk-q"
    codec_id: ClassVar[int] = 11
    config_class: ClassVar[type[CodecConfig]] = TopKQuantConfig

    config: TopKQuantConfig

    @property
    def gap_bits(self) -> int:
        return int(self.resolved_option("gap_bits"))

    # -- fitting -----------------------------------------------------------------
    def fit(
        self, source: LogitSource, *, num_labels: int | None = None
    ) -> TopKQuantCodec:
        """Read C; with ``gap_bits=None``, pick the Rice parameter that codes the
        gaps of the first :data:`FIT_LABELS` labels' supports in the fewest bits."""
        num_classes = first_batch_classes(source)
        k = self.config.k
        if k > num_classes:
            raise ConfigError(
                f"topk-q k={k} exceeds the {num_classes} classes; choose k <= "
                f"{num_classes}"
            )
        if self.config.gap_bits is None:
            gaps: list[torch.Tensor] = []
            seen = 0
            for batch in iterate_source(source):
                check_logits(batch, num_classes)
                ids = batch.detach().float().topk(k, dim=1).indices
                gaps.append(_gaps(ids.sort(dim=1).values).reshape(-1).cpu())
                seen += int(batch.shape[0])
                if seen >= FIT_LABELS:
                    break
            every = torch.cat(gaps)
            costs = [
                int((every >> m).sum()) + every.numel() * m
                for m in range(bits_for(num_classes) + 1)
            ]
            best = min(range(len(costs)), key=costs.__getitem__)
            self.config = self.config.model_copy(update={"gap_bits": best})
        self.num_classes = num_classes
        return self

    # -- byte path ---------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> their top-K support and levels (see the module docstring)."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        values, ids = logits.detach().float().topk(self.config.k, dim=1)
        return self.encode_topk(values, ids)

    def encode_topk(self, values: torch.Tensor, ids: torch.Tensor) -> EncodedBlock:
        """(N, K) kept values (any float dtype, any order) at (N, K) distinct class
        ids -> a block; the lossy counterpart of ``TopKCodec.encode_topk``.

        Raises:
            InputError: shapes, non-finite values, ids out of range or repeated
                within a label.
        """
        num_classes = self._require_fitted("encode_topk")
        k, bits, m = self.config.k, self.config.value_bits, self.gap_bits
        if values.dim() != 2 or values.shape[1] != k or not values.is_floating_point():
            raise InputError(
                f"topk-q needs (N, {k}) float values, got {tuple(values.shape)} "
                f"{values.dtype}"
            )
        ids = check_class_ids(ids, num_classes, shape=tuple(values.shape))
        v = values.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(v).all()):
            raise InputError("topk-q values must be finite")
        ids, order = ids.sort(dim=1)
        if k > 1 and bool((ids[:, 1:] == ids[:, :-1]).any()):
            raise InputError("topk-q ids must be distinct within a label")
        v = v.gather(1, order)
        top, first = v.max(dim=1, keepdim=True)
        levels = ((top - v) / self.config.step).round().clamp(1, (1 << bits) - 1)
        levels.scatter_(1, first, 0.0)  # the top class alone at level 0
        gaps = _gaps(ids)
        parts = [pack_bits(levels.long(), bits)]
        if m:
            parts.append(pack_bits(gaps & ((1 << m) - 1), m))
        parts.append(_unary(gaps.reshape(-1) >> m))
        return EncodedBlock(num_labels=int(values.shape[0]), data=torch.cat(parts))

    def decode_topk(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block -> ((N, K) float32 decoded values, (N, K) int64 ids), ids ascending."""
        num_classes = self._require_fitted("decode_topk")
        k, bits, m = self.config.k, self.config.value_bits, self.gap_bits
        n = block.num_labels
        data = block.data.to(dtype=torch.uint8).reshape(-1).cpu()
        level_bytes = packed_size(n * k, bits)
        low_bytes = packed_size(n * k, m) if m else 0
        if data.numel() < level_bytes + low_bytes:
            raise ArchiveFormatError(
                f"topk-q block of {n} labels (k={k}) must hold at least "
                f"{level_bytes + low_bytes} bytes, got {data.numel()}"
            )
        levels = unpack_bits(data[:level_bytes], bits, n * k).reshape(n, k)
        quotients = _read_unary(data[level_bytes + low_bytes :], n * k)
        gaps = quotients << m
        if m:
            low = data[level_bytes : level_bytes + low_bytes]
            gaps = gaps | unpack_bits(low, m, n * k)
        ids = (gaps.reshape(n, k) + 1).cumsum(dim=1) - 1
        if n and int(ids[:, -1].max()) >= num_classes:
            raise ArchiveFormatError(
                f"topk-q block holds class id {int(ids[:, -1].max())} >= "
                f"{num_classes} classes"
            )
        values = levels.float() * -self.config.step
        return values.to(device), ids.to(device)

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Block -> (N, C) float32: ``-level * step`` at the kept ids, ``-inf`` elsewhere."""
        num_classes = self._require_fitted("decode")
        values, ids = self.decode_topk(block, device)
        out = values.new_full((values.shape[0], num_classes), float("-inf"))
        return out.scatter_(1, ids, values)

    # -- what is shipped once ------------------------------------------------------
    def check_stored(self, num_classes: int) -> None:
        if self.config.gap_bits is None:
            raise ArchiveFormatError("stored topk-q config has no resolved gap_bits")
        if self.config.k > num_classes:
            raise ArchiveFormatError(
                f"stored topk-q k={self.config.k} exceeds num_classes={num_classes}"
            )

    def rate_limit(self) -> str:
        return (
            f"topk-q sizes by its worst case (k={self.config.k}, "
            f"value_bits={self.config.value_bits}); real supports code smaller"
        )

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> TopKQuantCodec:
        """The largest configuration whose worst case fits ``budget_bytes``.

        With ``k`` fixed (an import of a top-k store fixes the store's K), the
        most ``value_bits`` that fit; else the largest K at the configured
        ``value_bits``. ``gap_bits`` is set to the Rice parameter of the smallest
        worst case, so the real blocks stay within it.
        """
        try:
            base = TopKQuantConfig(**options)
        except Exception as exc:
            raise ConfigError(f"invalid topk-q codec options: {exc}") from exc
        slack = 3 * math.ceil(num_labels / ASSUMED_BLOCK_LABELS)  # stream padding

        def size(k: int, bits: int) -> int:
            m = (
                base.gap_bits
                if base.gap_bits is not None
                else _best_bound_gap_bits(k, num_classes)
            )
            label_bits = rice_bits_bound(k, num_classes, bits, m)
            return math.ceil(num_labels * label_bits / 8) + slack

        def build(k: int, bits: int) -> TopKQuantCodec:
            m = base.gap_bits
            if m is None:
                m = _best_bound_gap_bits(k, num_classes)
            update = {"k": k, "value_bits": bits, "gap_bits": m}
            return cls(base.model_copy(update=update))

        if base.k > num_classes and "k" in options:
            raise ConfigError(f"topk-q k={base.k} exceeds the {num_classes} classes")
        if "k" in options and "value_bits" not in options:
            fits = [b for b in range(8, 0, -1) if size(base.k, b) <= budget_bytes]
            if fits:
                return build(base.k, fits[0])
            smallest = (base.k, 1)
        elif "k" in options:
            if size(base.k, base.value_bits) <= budget_bytes:
                return build(base.k, base.value_bits)
            smallest = (base.k, base.value_bits)
        else:
            fits = [
                k
                for k in range(num_classes, 0, -1)
                if size(k, base.value_bits) <= budget_bytes
            ][:1]
            if fits:
                return build(fits[0], base.value_bits)
            smallest = (1, base.value_bits)
        need = size(*smallest)
        ref = reference_bytes(num_labels, num_classes, "fp16")
        raise UnreachableTargetError(
            f"topk-q k={smallest[0]} at {smallest[1]} value bits needs up to {need} "
            f"bytes for {num_labels} labels but the budget is {budget_bytes}; the "
            f"best reachable ratio is {ref / need:.2f}x vs fp16; choose a lower "
            "ratio, fewer value bits or a smaller k"
        )


def _gaps(sorted_ids: torch.Tensor) -> torch.Tensor:
    """(N, K) ascending distinct ids -> (N, K) int64 gaps (ids before each one that
    are not kept): the first id itself, then ``id[j] - id[j-1] - 1``."""
    ids = sorted_ids.to(torch.int64)
    prev = torch.cat([ids.new_full((ids.shape[0], 1), -1), ids[:, :-1]], dim=1)
    return ids - prev - 1


def _unary(quotients: torch.Tensor) -> torch.Tensor:
    """Each q as q one bits then a zero, one little-endian bit stream (bytes)."""
    lengths = quotients + 1
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.uint8)
    bits = torch.ones(total, dtype=torch.int64)
    bits[lengths.cumsum(0) - 1] = 0
    return pack_bits(bits, 1)


def _read_unary(stream: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`_unary`: the ``count`` quotients ``stream`` holds.

    Raises:
        ArchiveFormatError: fewer codes, or bytes beyond the padded last one.
    """
    if count == 0:
        if stream.numel():
            raise ArchiveFormatError("topk-q block of no labels holds id bytes")
        return torch.zeros(0, dtype=torch.int64)
    bits = unpack_bits(stream, 1, stream.numel() * 8)
    ends = torch.nonzero(bits == 0).reshape(-1)
    if ends.numel() < count:
        raise ArchiveFormatError(
            f"topk-q block ends after {ends.numel()} of its {count} id gaps"
        )
    ends = ends[:count]
    if packed_size(int(ends[-1]) + 1, 1) != stream.numel():
        raise ArchiveFormatError(
            f"topk-q block holds {stream.numel()} bytes of id gaps; its {count} "
            f"gaps take {packed_size(int(ends[-1]) + 1, 1)}"
        )
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    return ends - starts
