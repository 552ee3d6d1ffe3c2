"""Random-sampling KD labels (RS-KD, "Sparse Logit Sampling", arXiv 2503.16870).

Per label, S class ids are drawn with replacement from the teacher distribution
at the sampling temperature T, ``p_T = softmax(z / T)``; the codec stores the
distinct ids and how often each was drawn. The decoded distribution
``q = counts / S`` is an unbiased estimate of ``p_T`` (unlike top-K, whose
truncation biases every label the same way). Decoded = ``T * log q`` with
``-inf`` off the support, so ``softmax(decoded / T) = q`` exactly; at another
temperature T', ``softmax(decoded / T')`` is proportional to ``q ** (T / T')``.

Random streams. Sampling runs on the CPU in float64 (identical bytes on every
host and device) from a ``torch.Generator`` seeded per ``encode`` call with a
64-bit hash of ``(seed, stream key)``. The stream key is the batch's content
(its float32 bytes and shape) by default, so encoding the same batch twice gives
the same bytes while different blocks draw from different streams, with no
counter to keep in step; pass ``offset=`` (e.g. the index of the block's first
label) to key the stream on position instead.

Block layout for N labels, ``w = ceil(log2 S)`` bits (0 when S = 1),
``b = ceil(log2 C)`` bits, ``d_n`` distinct ids of label n, ``D = sum d_n``;
three little-endian bit streams, each padded to a whole byte:

1. ``d_n - 1`` for every label, ``w`` bits each (N values);
2. the distinct ids of every label in ascending id order, ``b`` bits each (D);
3. ``count - 1`` of every distinct id except each label's last one, whose count
   is implied by the total S, ``w`` bits each (D - N values).

Size: ``ceil(N w / 8) + ceil(D b / 8) + ceil((D - N) w / 8)`` bytes.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from labelzip.accounting import reference_bytes
from labelzip.codecs.base import (
    CodecConfig,
    EncodedBlock,
    LabelContext,
    LogitSource,
    ModelFreeCodec,
    ParsedBlock,
    ParsedDecoding,
    check_logits,
    compact_ints,
    first_batch_classes,
)
from labelzip.codecs.baseline.topk import ASSUMED_BLOCK_LABELS
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    UnreachableTargetError,
)
from labelzip.ops.bitpack import bits_for, pack_bits, packed_size, unpack_bits
from labelzip.ops.reservoir import reservoir_sample
from labelzip.ops.sampling import (
    content_key,
    count_field_bits,
    distinct_with_counts,
    draw_categorical,
    seeded_generator,
    u64_bytes,
)
from labelzip.rate.search import bisect_largest
from labelzip.rate.target import RateValue

__all__ = ["MAX_SAMPLES", "RSKDCodec", "RSKDConfig"]

logger = logging.getLogger(__name__)

# Largest S: keeps the (rows, S) sample matrix of one block in memory.
MAX_SAMPLES = 4096

# Measured sizing keeps the expected mean payload this far (relative) plus this
# many standard errors of the sampled mean under the per-label budget, and
# measures on at most this many fit labels.
_MEASURED_MARGIN = 0.01
_MEASURED_SE = 2.0
_MEASURE_LABELS = 8192


class RSKDConfig(CodecConfig):
    """Configuration of :class:`RSKDCodec`."""

    kind: Literal["rskd"] = "rskd"
    num_samples: int | None = Field(
        default=12,
        ge=1,
        le=MAX_SAMPLES,
        description="S, ids drawn with replacement per label; None = chosen by fit "
        "from target_bits_per_label",
    )
    temperature: float = Field(
        default=1.0,
        gt=0.0,
        le=1000.0,
        description="sampling temperature T: ids are drawn from softmax(z / T)",
    )
    seed: int = Field(
        default=0, ge=0, lt=1 << 63, description="seed of the sampling streams"
    )
    sizing: Literal["worst_case", "measured"] = Field(
        default="worst_case",
        description="rate control: worst_case budgets S distinct ids per label "
        "(guaranteed fit); measured picks S from the fit data's mean size",
    )
    target_bits_per_label: RateValue | None = Field(
        default=None,
        description="measured sizing: mean payload bits per label fit() aims for",
    )

    @model_validator(mode="after")
    def _check_sizing(self) -> RSKDConfig:
        if self.num_samples is None and self.target_bits_per_label is None:
            raise ValueError("num_samples=None needs target_bits_per_label to size S")
        return self


class RSKDCodec(ParsedDecoding, ModelFreeCodec):
    """S sampled ids per label, stored as distinct ids with counts; no model bytes."""

    kind: ClassVar[str] = "rskd"
    codec_id: ClassVar[int] = 3
    config_class: ClassVar[type[CodecConfig]] = RSKDConfig

    config: RSKDConfig

    @property
    def num_samples(self) -> int:
        return int(self.resolved_option("num_samples"))

    # -- the mean of the draws (labelzip.codecs.base.SampledCodec) -----------------
    @property
    def sampling_temperature(self) -> float:
        return float(self.config.temperature)

    def expected_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The mean decoded label: ``counts / S`` is unbiased for ``p_T``, so the
        mean is the teacher itself at T (as ``T * log p_T``, like a decoded
        label)."""
        check_logits(logits, self._require_fitted("expected_logits"))
        t = self.sampling_temperature
        return t * torch.log_softmax(logits.float() / t, dim=1)

    # -- fitting -----------------------------------------------------------------
    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> RSKDCodec:
        """Read C; with ``num_samples=None``, pick S from the fit data's sizes.

        The sizes are measured on a uniform sample of the whole stream (a
        reservoir), not its first labels: label streams are often sorted by image
        or class, and the first images need not be typical.
        """
        if self.config.num_samples is None:
            sample, seen = reservoir_sample(source, _MEASURE_LABELS, self.config.seed)
            num_classes = int(sample.shape[1])
            chosen = self._measure_num_samples(sample, num_classes, seen)
            self.config = self.config.model_copy(update={"num_samples": chosen})
        else:
            num_classes = first_batch_classes(source)
        self.num_classes = num_classes
        return self

    def _measure_num_samples(
        self, logits: torch.Tensor, num_classes: int, seen: int
    ) -> int:
        """Largest S whose mean payload on ``logits`` meets the per-label target.

        The expected distinct count of a label with sampling distribution p is
        ``sum_c 1 - (1 - p_c) ** S`` (exact, no draws), so the only estimation
        error is that of the sample mean over ``logits`` (a uniform sample of
        ``seen`` labels): the margin is :data:`_MEASURED_MARGIN` plus
        :data:`_MEASURED_SE` standard errors of that mean, so the encoded
        payload stays under the target yet close to it. S = 1 needs no margin:
        every label then stores exactly one id, so its size is exact, and it
        fits whenever :meth:`for_target` accepted the budget (both compare the
        same :func:`_worst_bits` of S = 1 with the target).
        """
        target = self.config.target_bits_per_label
        assert target is not None
        id_bits = bits_for(num_classes)
        log_miss = torch.log1p(
            -torch.softmax(logits.double() / self.config.temperature, dim=1)
        )
        n = logits.shape[0]
        finite = max(0.0, 1.0 - n / max(seen, n))  # finite-population correction

        def label_bits(s: int) -> torch.Tensor:
            distinct = (1.0 - torch.exp(s * log_miss)).sum(dim=1)
            return (id_bits + count_field_bits(s)) * distinct

        def fits(s: int) -> bool:
            bits = label_bits(s)
            spread = float(bits.std()) if n > 1 else 0.0
            error = _MEASURED_SE * spread * math.sqrt(finite / n)
            return float(bits.mean()) * (1.0 + _MEASURED_MARGIN) + error <= target

        if _worst_bits(1, num_classes) > target:
            raise UnreachableTargetError(
                f"rskd needs at least {id_bits} bits per label (S=1), "
                f"the target is {target:.2f}; choose a lower ratio"
            )
        lo = bisect_largest(fits, 1, MAX_SAMPLES)  # bits grow with S
        logger.info(
            "rskd measured sizing: S=%d, %.1f expected bits per label of %.1f",
            lo,
            float(label_bits(lo).mean()),
            target,
        )
        return lo

    # -- byte path ---------------------------------------------------------------
    def encode(
        self, logits: torch.Tensor, *, offset: int | None = None
    ) -> EncodedBlock:
        """Sample S ids per label of (N, C) logits and store distinct ids + counts.

        Args:
            logits: (N, C) teacher logits, any device.
            offset: optional stream key (e.g. the first label's index); by default
                the batch content keys the random stream.
        """
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        s = self.num_samples
        x = logits.detach().to(device="cpu", dtype=torch.float32)
        key = content_key(x) if offset is None else b"offset" + u64_bytes(offset)
        gen = seeded_generator(self.config.seed, key, x.shape[0])
        draws = draw_categorical(x, s, self.config.temperature, gen)  # (N, S)
        n = draws.shape[0]
        values, counts, distinct = distinct_with_counts(draws)
        is_last = torch.zeros_like(counts, dtype=torch.bool)
        is_last[distinct.cumsum(0) - 1] = True  # each row's last distinct id
        width = count_field_bits(s)
        parts = [
            _pack(distinct - 1, width),
            pack_bits(values, bits_for(num_classes)),
            _pack(counts[~is_last] - 1, width),
        ]
        return EncodedBlock(num_labels=n, data=torch.cat(parts))

    def parse_block(
        self,
        block: EncodedBlock,
        context: LabelContext | None = None,
        device: torch.device | str | None = None,
    ) -> ParsedBlock:
        """Block -> (N, min(S, C)) support ids and ``T * log(counts / S)`` per label.

        Rows with fewer distinct ids repeat their first (id, value) pair, which
        writes the same value again when densified.
        """
        num_classes = self._require_fitted("decode")
        s, n = self.num_samples, block.num_labels
        width, id_bits = count_field_bits(s), bits_for(num_classes)
        data = block.data.to(device=device, dtype=torch.uint8).reshape(-1)
        head = packed_size(n, width) if width else 0
        if data.numel() < head:
            raise ArchiveFormatError(
                f"rskd block of {n} labels needs {head} header bytes, got {data.numel()}"
            )
        if width:
            distinct = unpack_bits(data[:head], width, n) + 1
        else:
            distinct = torch.ones(n, dtype=torch.int64, device=data.device)
        total = int(distinct.sum())
        id_bytes = packed_size(total, id_bits)
        expected = head + id_bytes + (packed_size(total - n, width) if width else 0)
        if data.numel() != expected or (n and int(distinct.max()) > s):
            raise ArchiveFormatError(
                f"rskd block of {n} labels with {total} distinct ids must hold "
                f"{expected} bytes, got {data.numel()}"
            )
        ids = unpack_bits(data[head : head + id_bytes], id_bits, total)
        rows = torch.repeat_interleave(torch.arange(n, device=data.device), distinct)
        last = distinct.cumsum(0) - 1
        is_last = torch.zeros(total, dtype=torch.bool, device=data.device)
        is_last[last] = True
        counts = torch.zeros(total, dtype=torch.int64, device=data.device)
        if width:
            counts[~is_last] = (
                unpack_bits(data[head + id_bytes :], width, total - n) + 1
            )
        partial = torch.zeros(n, dtype=torch.int64, device=data.device)
        partial.index_add_(0, rows, counts)
        counts[last] = s - partial
        if total and (int(counts.min()) < 1 or int(ids.max()) >= num_classes):
            raise ArchiveFormatError("rskd block holds invalid counts or class ids")
        logq = (counts.float() / s).log() * self.config.temperature
        # A label has at most min(S, C) distinct ids: one width for every chunk,
        # so parsed rows of different chunks concatenate.
        slots = min(s, num_classes)
        starts = distinct.cumsum(0) - distinct  # each row's first entry
        slot = torch.arange(slots, device=data.device)
        pick = starts[:, None] + torch.where(slot < distinct[:, None], slot, 0)
        parts = {"ids": compact_ints(ids[pick], num_classes), "logq": logq[pick]}
        return ParsedBlock(n, parts)

    def decode_parsed(
        self, parsed: ParsedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Parsed rows -> (n, C) float32 ``T * log(counts / S)``, ``-inf`` off support."""
        num_classes = self._require_fitted("decode")
        logq = parsed.parts["logq"].to(device)
        ids = parsed.parts["ids"].to(device).long()
        out = torch.full(
            (parsed.num_labels, num_classes),
            float("-inf"),
            device=device or logq.device,
        )
        return out.scatter_(1, ids, logq)

    # -- what is shipped once ------------------------------------------------------
    def check_stored(self, num_classes: int) -> None:
        if self.config.num_samples is None:
            raise ArchiveFormatError("stored rskd config has no resolved num_samples")

    def worst_case_payload_bits(self) -> float:
        """Payload bits of a label whose S draws are all distinct (the maximum)."""
        num_classes = self._require_fitted("worst_case_payload_bits")
        return float(_worst_bits(self.num_samples, num_classes))

    def rate_limit(self) -> str:
        num_classes = self._require_fitted("rate_limit")
        s = self.num_samples
        id_bits = bits_for(num_classes)
        if s >= MAX_SAMPLES:
            return f"S is capped at {MAX_SAMPLES} samples per label"
        if self.config.sizing == "worst_case":
            return (
                f"worst_case sizing budgets S={s} distinct ids per label, but the "
                "teacher repeats ids; sizing=measured spends the budget"
            )
        if s == 1:
            return f"S=1 is the smallest rskd: one {id_bits}-bit class id per label"
        return (
            f"S is a whole number of samples: S={s} fits the budget and S={s + 1} "
            "would exceed it"
        )

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> RSKDCodec:
        """Choose S for a byte budget (``sizing`` option: measured or worst_case).

        ``measured`` (the default here, unless ``num_samples`` is fixed) defers S
        to :meth:`fit`, which takes the largest S whose expected mean size on the
        fit data stays just under the budget (see :meth:`_measure_num_samples`):
        the archive spends the budget it is given. ``worst_case`` takes the
        largest S for which a block where every label has S distinct ids still
        fits: guaranteed even for other data, but a peaked teacher repeats ids,
        so its archive is then several times smaller than the target.
        """
        if options.get("num_samples") is None and "sizing" not in options:
            options = {**options, "sizing": "measured"}
        try:
            base = RSKDConfig(**options)
        except Exception as exc:
            raise ConfigError(f"invalid rskd codec options: {exc}") from exc
        slack = 3 * math.ceil(num_labels / ASSUMED_BLOCK_LABELS)
        avail_bits = 8.0 * (budget_bytes - slack) / max(num_labels, 1)
        fixed = options.get("num_samples") is not None
        min_bits = _worst_bits(1, num_classes)  # S = 1: one id, exactly
        if fixed:
            s = base.num_samples
            assert s is not None
            need = _worst_bits(s, num_classes) if base.sizing == "worst_case" else None
            if need is None or need <= avail_bits:
                return cls(base)
            min_bits = need
        elif base.sizing == "measured" and min_bits <= avail_bits:
            update = {"num_samples": None, "target_bits_per_label": avail_bits}
            return cls(RSKDConfig(**{**base.model_dump(), **update}))
        elif _worst_bits(1, num_classes) <= avail_bits:
            s = bisect_largest(
                lambda s: _worst_bits(s, num_classes) <= avail_bits, 1, MAX_SAMPLES
            )
            return cls(base.model_copy(update={"num_samples": s}))
        need_bytes = math.ceil(min_bits * num_labels / 8) + slack
        ref = reference_bytes(num_labels, num_classes, "fp16")
        raise UnreachableTargetError(
            f"rskd needs at least {min_bits} bits per label ({need_bytes} bytes for "
            f"{num_labels} labels) but the budget is {budget_bytes} bytes; the best "
            f"reachable ratio is {ref / need_bytes:.2f}x vs fp16; choose a lower ratio"
        )


def _worst_bits(num_samples: int, num_classes: int) -> int:
    """Payload bits of one label whose draws are all distinct."""
    distinct = min(num_samples, num_classes)
    width = count_field_bits(num_samples)
    return width + distinct * bits_for(num_classes) + (distinct - 1) * width


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 0:
        return torch.zeros(0, dtype=torch.uint8)
    return pack_bits(values, bits)
