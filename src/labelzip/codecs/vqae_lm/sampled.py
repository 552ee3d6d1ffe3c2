"""VQAE head + sampled tail: an unbiased VQAE codec for LM vocabularies.

The LM benchmark (docs/lm.md) shows what a student learns from: RS-KD labels,
whose decoded KL to the teacher is large but whose *expectation* is the teacher
distribution, train students within 2-3% of online KD, while every codec that
models the tail (top-K + a prior-shaped tail, ``vqae-sparse``) bakes the same
bias into every label and loses 10-20%. This codec keeps what the VQAE does well
and makes the rest unbiased:

- **head**: the teacher's K most probable ids and their log-probabilities plus
  the tail mass, coded exactly as ``vqae-sparse`` with one K (ids rank-coded
  under a unigram prior, the K + 1 profile through a VQ autoencoder);
- **tail**: ``S_n`` ids drawn with replacement from the teacher's distribution
  restricted to the other V - K tokens, stored as distinct ids (rank-coded like
  the head's) with counts. The decoded tail is ``m̂ * count / S_n`` on the drawn
  ids (``m̂``: the decoded tail mass), ``-inf`` elsewhere: an unbiased estimate
  of the tail's shape, as RS-KD is of the whole distribution, but its variance
  is scaled by ``m²`` (the head carries the rest exactly) instead of 1.
- **per-label S**: ``S_n`` is the level of a fixed grid nearest to
  ``sample_scale * m_n`` (the variance-optimal allocation for a fixed total is
  proportional to the tail mass): peaked labels spend no samples, flat ones
  many. The level is one ANS symbol per label.

- **optional head residual** (``residual_step`` > 0): per head slot the
  stochastic rounding of ``(p_k - q_k) / step`` (``q``: the VQ-decoded head),
  ANS-coded per slot group, makes the decoded head unbiased as well. Off by
  default: on the 200k-token benchmark it did not train better students
  (docs/lm.md).

Rate control (``budget_bytes`` for ``num_labels``; ``fit``): for each candidate
K the head's measured id bits and code bytes come off the per-label budget, the
sampling scale is fitted by bisection so the measured tail bits fill the rest,
and the K with the least predicted tail variance ``mean(m² (1 - Σ r²) / S)``
wins (``r``: the tail distribution; a label with S = 0 scores ``m²``).

Block layout for N labels: u32 byte count of the head block; the head block
(``vqae-sparse``'s layout); u32 byte count of the tail ANS stream; the ANS
stream (the N sample-level symbols, the N x K residual symbols when on, then
the rank buckets of every label's distinct tail ids, labels in order, ids in
ascending rank); one raw bit stream
padded to a byte: for every label ``d_n - 1`` in ``w_n`` bits (``w_n`` =
``ceil(log2 S_n)``, 0 when S_n <= 1), then the low bits of every distinct rank,
then ``count - 1`` of every distinct id but each label's last in ``w_n`` bits.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from labelzip.accounting import reference_bytes
from labelzip.codecs.base import (
    Codec,
    CodecConfig,
    EncodedBlock,
    LogitSource,
    check_logits,
    check_model_tensors,
)
from labelzip.codecs.entropy import (
    CategoricalStreamCoder,
    decode_joint,
    encode_joint,
    quantize_counts,
)
from labelzip.codecs.vqae_lm.fitsample import collect_log_probs
from labelzip.codecs.vqae_lm.idcoding import (
    group_frequencies,
    pack_varbits,
    prior_order,
    rank_alphabet,
    rank_bucket,
    slot_groups,
    unigram_log_prior,
    unpack_varbits,
)
from labelzip.codecs.vqae_lm.sparse import VQAESparseCodec
from labelzip.codecs.vqae_lm.sparse_config import VQAESparseConfig
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)
from labelzip.ops.bitpack import packed_size
from labelzip.ops.sampling import (
    content_key,
    count_field_bits,
    distinct_with_counts,
    draw_categorical,
    seeded_generator,
)

__all__ = ["SAMPLE_LEVELS", "VQAESampledCodec", "VQAESampledConfig"]

logger = logging.getLogger(__name__)

# Per-label sample counts S a label may use (a sqrt(2) grid): one ANS symbol each.
SAMPLE_LEVELS: tuple[int, ...] = (
    *(0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256),
    *(362, 512, 724, 1024, 1448, 2048),
)
_K_CANDIDATES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
_MARGIN = 0.02  # measured payload stays this far under the per-label budget
_BLOCK_SLACK = 20  # bytes per block: two u32 lengths, ANS tails, bit padding
_SLACK_LABELS = 256  # labels per block assumed by rate control (LM chunk = 1 window)
_MEASURE_LABELS = 1024  # fit labels the tail rate is measured on
_RESIDUAL_RANGE = 31  # stored residual steps z in [-31, 31]
_PROB_FLOOR = 1e-12


class VQAESampledConfig(CodecConfig):
    """Configuration of :class:`VQAESampledCodec`."""

    kind: Literal["vqae-rs"] = "vqae-rs"
    k: int | None = Field(
        default=None, ge=1, le=512, description="head ids per label (K); None = fitted"
    )
    max_k: int = Field(
        default=16, ge=1, le=512, description="largest K rate control considers"
    )
    sample_scale: float | None = Field(
        default=None,
        gt=0.0,
        le=1e6,
        description="tail samples per label ~ this x the tail mass; None = fitted",
    )
    max_samples: int = Field(
        default=1024,
        ge=1,
        le=SAMPLE_LEVELS[-1],
        description="largest per-label tail sample count",
    )
    residual_step: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="grid step of the dithered head residual (stochastic rounding "
        "makes the decoded head probabilities unbiased); 0 = VQ head only",
    )
    num_chunks: int = Field(
        default=4, ge=1, le=64, description="VQ chunks per label (M), 8 bits each"
    )
    num_stages: int = Field(
        default=2, ge=1, le=8, description="residual VQ stages (R): R x M code bytes"
    )
    chunk_dim: int = Field(default=4, ge=1, le=64, description="dims per chunk (D)")
    hidden: int = Field(
        default=64, ge=4, le=1024, description="hidden width of encoder and decoder"
    )
    steps: int = Field(default=3000, ge=0, le=1 << 20, description="training steps")
    batch_size: int = Field(default=256, ge=1, le=1 << 16, description="training batch")
    lr: float = Field(default=3e-3, gt=0.0, le=1.0, description="Adam learning rate")
    max_fit_labels: int = Field(
        default=4096, ge=1, le=1 << 22, description="labels of the source fitted on"
    )
    budget_bytes: int | None = Field(
        default=None,
        ge=1,
        description="all-in bytes (payload + model) for num_labels; needed when "
        "k or sample_scale is None",
    )
    seed: int = Field(
        default=0, ge=0, lt=1 << 63, description="training and sampling seed"
    )

    @property
    def code_bytes(self) -> int:
        return self.num_chunks * self.num_stages

    def head_config(self, k: int) -> VQAESparseConfig:
        """The ``vqae-sparse`` settings of the head: one K, no modelled tail."""
        return VQAESparseConfig(
            k=k,
            k_levels=1,
            tail_bits=0,
            max_k=max(k, 1),
            num_chunks=self.num_chunks,
            num_stages=self.num_stages,
            chunk_dim=self.chunk_dim,
            hidden=self.hidden,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            max_fit_labels=self.max_fit_labels,
            seed=self.seed,
        )


class VQAESampledCodec(Codec):
    """VQAE-coded top-K head + an unbiased sampled tail (per-label sample count)."""

    kind: ClassVar[str] = "vqae-rs"
    codec_id: ClassVar[int] = 8
    config_class: ClassVar[type[CodecConfig]] = VQAESampledConfig

    config: VQAESampledConfig

    def __init__(self, config: VQAESampledConfig | None = None) -> None:
        super().__init__(config if config is not None else VQAESampledConfig())
        self._head: VQAESparseCodec | None = None
        self._level_table: torch.Tensor | None = None  # (1, L) int16
        self._rank_table: torch.Tensor | None = None  # (1, A) int16
        self._level_coder: CategoricalStreamCoder | None = None
        self._rank_coder: CategoricalStreamCoder | None = None
        self._residual_table: torch.Tensor | None = None  # (G, 2 R + 1) int16
        self._residual_coder: CategoricalStreamCoder | None = None

    # -- sizes -------------------------------------------------------------------
    @property
    def head(self) -> VQAESparseCodec:
        """The fitted ``vqae-sparse`` codec of the top-K head (one K, no tail)."""
        return self._require_head("head")

    @property
    def levels(self) -> tuple[int, ...]:
        """The per-label sample counts this codec may use."""
        return tuple(s for s in SAMPLE_LEVELS if s <= self.config.max_samples)

    @staticmethod
    def model_bytes_for(cfg: VQAESampledConfig, k: int, num_classes: int) -> int:
        """Bytes of every stored tensor for K head ids and C classes."""
        levels = sum(1 for s in SAMPLE_LEVELS if s <= cfg.max_samples)
        head = VQAESparseCodec.model_bytes_for(cfg.head_config(k), k, num_classes)
        return head + 2 * (
            levels + rank_alphabet(num_classes) + _residual_table_size(cfg, k)
        )

    # -- fitting -----------------------------------------------------------------
    def fit(
        self, source: LogitSource, *, num_labels: int | None = None
    ) -> VQAESampledCodec:
        """Choose K and the sampling scale, fit the head's VQAE and the tail tables."""
        cfg = self.config
        log_p = collect_log_probs(source, cfg.max_fit_labels)
        n, num_classes = log_p.shape
        if num_classes < 3:
            raise InputError(f"vqae-rs needs >= 3 classes, got {num_classes}")
        if cfg.k is not None and cfg.k >= num_classes - 1:
            raise ConfigError(
                f"vqae-rs k={cfg.k} must leave >= 2 of the {num_classes} classes "
                "to the tail"
            )
        rank = prior_order(unigram_log_prior(log_p))[1]  # the order the head fits
        # evenly spaced rows: label streams are sorted by sequence and position
        meas = log_p[torch.linspace(0, n - 1, min(n, _MEASURE_LABELS)).long()]
        k, scale = cfg.k, cfg.sample_scale
        fitted_scale = False
        if k is None or scale is None:
            if cfg.budget_bytes is None or num_labels is None:
                raise ConfigError(
                    "vqae-rs without k and sample_scale needs budget_bytes and "
                    "fit(num_labels=...); give a rate target (labelzip.rate.configure_codec) or both"
                )
            k, scale = self._rate_control(log_p, meas, rank, num_labels)
            fitted_scale = True
        self.config = cfg = cfg.model_copy(update={"k": k, "sample_scale": scale})
        head = VQAESparseCodec(cfg.head_config(k)).fit([log_p], num_labels=num_labels)
        self._head = head
        self.num_classes = num_classes
        residual_table = None
        if cfg.residual_step > 0:
            _, ids, log_q = head.encode_support(meas)
            gen = seeded_generator(cfg.seed, b"vqae-rs-res", 0)
            z = self._residuals(meas, ids, log_q, gen)
            counts = torch.zeros(_residual_groups(k), 2 * _RESIDUAL_RANGE + 1)
            cols = torch.tensor(slot_groups(k))
            counts.index_put_((cols[None].expand_as(z), z), torch.ones(z.shape), True)
            residual_table = quantize_counts(counts.long())
            if cfg.sample_scale is not None and scale is not None and fitted_scale:
                # the residual symbols' bits come off the tail's share: refit S
                t = residual_table.double()
                log2p = torch.log2(t / t.sum(1, keepdim=True))
                res_bits = float(-log2p[cols[None], z].sum(1).mean())
                _, scale = self._rate_control(
                    log_p, meas, rank, num_labels or 0, extra_bits=res_bits, ks=[k]
                )
                self.config = cfg = cfg.model_copy(update={"sample_scale": scale})
        # tail tables from the measured rows' real draws
        top, ids = meas.topk(k, dim=1)
        level = self._level_of(1.0 - top.double().exp().sum(dim=1))
        pool = _tail_draws(meas, ids, int(max(self.levels)), cfg.seed)
        buckets = []
        for j, s in enumerate(self.levels):
            rows = level == j
            if s and bool(rows.any()):
                distinct, _, _ = distinct_with_counts(head.token_rank[pool[rows, :s]])
                buckets.append(rank_bucket(distinct))
        alphabet = rank_alphabet(num_classes)
        flat = torch.cat(buckets) if buckets else torch.zeros(0, dtype=torch.int64)
        self._set_tables(
            quantize_counts(torch.bincount(level, minlength=len(self.levels))[None]),
            quantize_counts(torch.bincount(flat, minlength=alphabet)[None]),
            residual_table,
        )
        return self

    def _residuals(
        self,
        log_p: torch.Tensor,
        ids: torch.Tensor,
        log_q: torch.Tensor,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """(n, K) residual symbols of the head ``ids`` with decoded profile ``log_q``.

        Stochastic rounding of ``(p_k - q_k) / step`` (``q``: the VQ-decoded head)
        with uniforms of ``gen``: ``E[q_k + step * z_k] = p_k``, the head becomes
        unbiased. Symbols are offset by the range (0 .. 2 R).
        """
        step = self.config.residual_step
        p = log_p.gather(1, ids).double().exp()
        x = (p - log_q[:, :-1].double().exp()) / step
        u = torch.rand(x.shape, generator=gen, dtype=torch.float64)
        z = torch.floor(x + u).clamp(-_RESIDUAL_RANGE, _RESIDUAL_RANGE).long()
        return z + _RESIDUAL_RANGE

    def _rate_control(
        self,
        log_p: torch.Tensor,
        meas: torch.Tensor,
        rank: torch.Tensor,
        num_labels: int,
        *,
        extra_bits: float = 0.0,
        ks: list[int] | None = None,
    ) -> tuple[int, float]:
        """(K, scale) with the least predicted tail variance whose bits fit.

        ``extra_bits`` per label (the head residual, measured once the head is
        trained) come off the budget; ``ks`` restricts the K candidates.
        """
        cfg = self.config
        assert cfg.budget_bytes is not None
        num_classes = log_p.shape[1]
        alphabet = rank_alphabet(num_classes)
        slack = _BLOCK_SLACK * math.ceil(num_labels / _SLACK_LABELS)
        levels = torch.tensor(self.levels, dtype=torch.float64)
        widths = torch.tensor([count_field_bits(int(s)) for s in self.levels]).double()
        cands = [
            k for k in _K_CANDIDATES if k <= min(cfg.k or cfg.max_k, num_classes - 2)
        ]
        if cfg.k is not None:
            cands = [cfg.k]
        if ks is not None:
            cands = ks
        best: tuple[float, int, float] | None = None
        least_need: float | None = None
        for k in cands:
            model = self.model_bytes_for(cfg, k, num_classes)
            avail = 8 * (cfg.budget_bytes - model - slack) / num_labels
            avail = avail * (1 - _MARGIN)
            _, fit_ids = log_p.topk(k, dim=1)
            head_bits = _mean_id_bits(rank_bucket(rank[fit_ids]), alphabet, k)
            head_bits += 8 * cfg.code_bytes + extra_bits
            if least_need is None or head_bits < least_need:
                least_need = head_bits
            tail_avail = avail - head_bits
            if tail_avail <= 0:
                continue
            top, ids = meas.topk(k, dim=1)
            mass = (1.0 - top.double().exp().sum(dim=1)).clamp_min(0.0)
            # variance factor of one draw: m^2 (1 - sum r^2), r the tail shape
            p = meas.double().exp().scatter(1, ids, 0.0)
            spread = 1.0 - (p / p.sum(1, keepdim=True).clamp_min(1e-300)).square().sum(
                1
            )
            var = mass.square() * spread
            pool = _tail_draws(meas, ids, int(levels[-1]), cfg.seed)
            bits = _tail_bits_by_level(rank[pool], levels, widths, alphabet)
            score_by_level = torch.where(
                levels[None] > 0,
                var[:, None] / levels.clamp_min(1)[None],
                mass[:, None].square(),
            )
            # the level symbol's cost depends on the picks: refit with its entropy
            symbol_bits = math.log2(len(levels))
            for _ in range(3):
                scale = _fit_scale(mass, levels, bits, tail_avail - symbol_bits)
                if scale is None:
                    break
                pick = _nearest_level(scale * mass, levels)
                freq = torch.bincount(pick, minlength=len(levels)).double() + 0.5
                symbol_bits = float(-(freq / freq.sum()).log2()[pick].mean())
            if scale is None:
                continue
            score = float(score_by_level.gather(1, pick[:, None]).mean())
            if best is None or score < best[0]:
                best = (score, k, scale)
        if best is None:
            ref = reference_bytes(num_labels, num_classes, "fp16")
            model = self.model_bytes_for(cfg, 1, num_classes)
            need = model + slack + math.ceil((least_need or 0.0) * num_labels / 8)
            raise UnreachableTargetError(
                f"vqae-rs with K=1 and no tail samples needs ~{need} bytes for "
                f"{num_labels} labels, the budget is {cfg.budget_bytes}; the best "
                f"reachable ratio is ~{ref / need:.1f}x vs fp16; choose a lower ratio "
                "or fewer code bytes (num_chunks, num_stages)"
            )
        logger.info(
            "vqae-rs: K=%d, sample scale %.3g, predicted tail variance %.3g",
            best[1],
            best[2],
            best[0],
        )
        return best[1], best[2]

    def _level_of(self, mass: torch.Tensor) -> torch.Tensor:
        scale = self.config.sample_scale
        assert scale is not None
        levels = torch.tensor(self.levels, dtype=torch.float64)
        return _nearest_level(scale * mass.double(), levels)

    def _set_tables(
        self,
        level_table: torch.Tensor,
        rank_table: torch.Tensor,
        residual_table: torch.Tensor | None,
    ) -> None:
        self._level_table, self._rank_table = level_table, rank_table
        self._level_coder = CategoricalStreamCoder(level_table, [0])
        self._rank_coder = CategoricalStreamCoder(rank_table, [0])
        self._residual_table = residual_table
        self._residual_coder = (
            None
            if residual_table is None
            else CategoricalStreamCoder(residual_table, slot_groups(self.k_fitted))
        )

    @property
    def k_fitted(self) -> int:
        if self.config.k is None:
            raise NotFittedError("vqae-rs K is chosen by fit(); call fit first")
        return self.config.k

    def _require_head(self, action: str) -> VQAESparseCodec:
        self._require_fitted(action)
        if self._head is None or self._level_coder is None:
            raise NotFittedError(
                f"vqae-rs {action} called before fit(); call fit first"
            )
        return self._head

    # -- byte path ---------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> head block + per-label sampled tail ids with counts."""
        head = self._require_head("encode")
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        n = int(logits.shape[0])
        if n == 0:
            return EncodedBlock(num_labels=0, data=torch.zeros(0, dtype=torch.uint8))
        x = logits.detach().to(device="cpu", dtype=torch.float32)
        head_block, ids, log_q = head.encode_support(x)  # what the decoder will see
        log_p = torch.log_softmax(x, dim=1)
        mass = _tail_mass(log_p, ids)
        level = self._level_of(mass.clamp_min(0.0))
        masked = log_p.scatter(1, ids, float("-inf"))
        gen = seeded_generator(self.config.seed, content_key(x), n)
        assert self._level_coder is not None and self._rank_coder is not None
        parts_ans: list[tuple[CategoricalStreamCoder, torch.Tensor]] = [
            (self._level_coder, level[:, None])
        ]
        if self._residual_coder is not None:
            parts_ans.append(
                (self._residual_coder, self._residuals(log_p, ids, log_q, gen))
            )
        rank = head.token_rank
        row_parts, rank_parts, count_parts, distinct = (
            [],
            [],
            [],
            torch.zeros(n, dtype=torch.int64),
        )
        for j, s in enumerate(self.levels):
            rows = torch.nonzero(level == j).reshape(-1)
            if s == 0 or rows.numel() == 0:
                continue
            draws = draw_categorical(masked[rows], s, 1.0, gen)
            ranks, counts, per_row = distinct_with_counts(rank[draws])
            distinct[rows] = per_row
            row_parts.append(torch.repeat_interleave(rows, per_row))
            rank_parts.append(ranks)
            count_parts.append(counts)
        order = torch.argsort(torch.cat(row_parts), stable=True) if row_parts else None
        ranks = _take(rank_parts, order)
        counts = _take(count_parts, order)
        label_rows = _take(row_parts, order)
        widths = _widths(level, self.levels)
        buckets = rank_bucket(ranks)
        is_last = torch.ones_like(label_rows, dtype=torch.bool)
        is_last[:-1] = label_rows[1:] != label_rows[:-1]
        has = distinct > 0
        stream = encode_joint([*parts_ans, (self._rank_coder, buckets[:, None])])
        raw = pack_varbits(
            torch.cat(
                [(distinct - 1)[has], ranks + 1 - (1 << buckets), counts[~is_last] - 1]
            ),
            torch.cat([widths[has], buckets, widths[label_rows[~is_last]]]),
        )
        parts = [
            _u32(head_block.data.numel()),
            head_block.data,
            _u32(stream.numel()),
            stream,
            raw,
        ]
        return EncodedBlock(num_labels=n, data=torch.cat(parts))

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Block -> (N, C) float32 log-probs: head, sampled tail, ``-inf`` elsewhere."""
        head = self._require_head("decode")
        num_classes = self._require_fitted("decode")
        n = block.num_labels
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if n == 0:
            return torch.zeros(0, num_classes, device=dev)
        data = block.data.cpu().reshape(-1)
        head_len, pos = _read_u32(data, 0, "head block")
        ids, log_q = head.decode_support(
            EncodedBlock(num_labels=n, data=data[pos : pos + head_len]), dev
        )
        pos += head_len
        ans_len, pos = _read_u32(data, pos, "tail stream")
        if ans_len % 4 or pos + ans_len > data.numel():
            raise ArchiveFormatError(
                f"vqae-rs block names a tail stream of {ans_len} bytes in "
                f"{data.numel() - pos} bytes"
            )
        ans, raw = data[pos : pos + ans_len], data[pos + ans_len :]
        levels = torch.tensor(self.levels, dtype=torch.int64)
        state: dict[str, torch.Tensor] = {}

        def num_distinct(out: list[torch.Tensor]) -> int:
            level = out[0][:, 0]
            if int(level.max()) >= len(self.levels):
                raise ArchiveFormatError("vqae-rs block holds an invalid sample level")
            widths = _widths(level, self.levels)
            has = levels[level] > 0
            d = torch.zeros(n, dtype=torch.int64)
            field = unpack_varbits(raw, widths[has]) if bool(has.any()) else d[:0]
            d[has] = field + 1
            state["level"], state["distinct"], state["widths"] = level, d, widths
            return int(d.sum())

        assert self._level_coder is not None and self._rank_coder is not None
        plan: list[tuple[CategoricalStreamCoder, Any]] = [(self._level_coder, n)]
        if self._residual_coder is not None:
            plan.append((self._residual_coder, n))
        try:
            *decoded, bucket_rows = decode_joint(
                ans, [*plan, (self._rank_coder, num_distinct)]
            )
        except InputError as exc:
            raise ArchiveFormatError(f"vqae-rs block is corrupt: {exc}") from exc
        level, d, widths = state["level"], state["distinct"], state["widths"]
        s_of = levels[level]
        if bool((d > s_of).any()):
            raise ArchiveFormatError("vqae-rs block holds more distinct ids than draws")
        has = d > 0
        buckets = bucket_rows[:, 0]
        label_rows = torch.repeat_interleave(torch.arange(n), d)
        is_last = torch.ones_like(label_rows, dtype=torch.bool)
        is_last[:-1] = label_rows[1:] != label_rows[:-1]
        all_widths = torch.cat([widths[has], buckets, widths[label_rows[~is_last]]])
        total_bits = int(all_widths.sum())
        if raw.numel() != packed_size(total_bits, 1):
            raise ArchiveFormatError(
                f"vqae-rs block of {n} labels must hold {packed_size(total_bits, 1)} "
                f"raw tail bytes, got {raw.numel()}"
            )
        values = unpack_varbits(raw, all_widths)
        num_has, num_ids = int(has.sum()), buckets.numel()
        ranks = values[num_has : num_has + num_ids] + (1 << buckets) - 1
        counts = torch.ones(num_ids, dtype=torch.int64)
        counts[~is_last] = values[num_has + num_ids :] + 1
        partial = torch.zeros(n, dtype=torch.int64).index_add_(
            0, label_rows[~is_last], counts[~is_last]
        )
        counts[is_last] = s_of[label_rows[is_last]] - partial[label_rows[is_last]]
        if num_ids and (int(counts.min()) < 1 or int(ranks.max()) >= num_classes):
            raise ArchiveFormatError("vqae-rs block holds invalid tail counts or ranks")
        out = torch.full((n, num_classes), float("-inf"), device=dev)
        if self._residual_coder is not None:
            log_q = self._dither(log_q, decoded[1].to(dev) - _RESIDUAL_RANGE)
        out.scatter_(1, ids, log_q[:, :-1].float())
        log_mass = log_q[:, -1].float()
        tokens = head.token_order[ranks].to(dev)
        rows_dev = label_rows.to(dev)
        share = (counts.double() / s_of[label_rows].double()).log().float().to(dev)
        if bool((out[rows_dev, tokens] > float("-inf")).any()):
            raise ArchiveFormatError("vqae-rs block draws a tail id from the head")
        out[rows_dev, tokens] = log_mass[rows_dev] + share
        empty = torch.nonzero(~has).reshape(-1).to(dev)
        if empty.numel():  # no draws: the tail mass follows the unigram prior
            out[empty] = self._prior_tail(ids[empty], log_q[empty])
        return out

    # -- the mean of the draws (labelzip.codecs.base.SampledCodec) -----------------
    @property
    def sampling_temperature(self) -> float:
        """Tail ids are drawn from the teacher at T = 1."""
        return 1.0

    def expected_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The mean decoded label (log-probs): the decoded head, and the decoded
        tail mass spread over the other ids as the teacher spreads it (the
        draws are unbiased for that shape); labels that draw nothing keep
        their unigram-prior tail. With the head residual on, the head's mean is
        the teacher's own head (the stochastic rounding is unbiased; its floors
        at 1e-12 are left out)."""
        head = self._require_head("expected_logits")
        check_logits(logits, self._require_fitted("expected_logits"))
        x = logits.detach().to(device="cpu", dtype=torch.float32)
        _, ids, log_q = head.encode_support(x)
        log_p = torch.log_softmax(x, dim=1)
        mass = _tail_mass(log_p, ids).clamp_min(0.0)
        level = self._level_of(mass)  # as encode draws: the same levels
        log_mass = mass.log()
        if self._residual_coder is not None:
            log_q = torch.cat([log_p.gather(1, ids), log_mass[:, None].float()], dim=1)
        drawn = torch.tensor(self.levels, dtype=torch.int64)[level] > 0
        out = self._prior_tail(ids, log_q)
        if bool(drawn.any()):
            rows = torch.nonzero(drawn).reshape(-1)
            shape = log_p[rows].double() - log_mass[rows, None]  # the tail's shape
            tail = (shape + log_q[rows, -1:].double()).float()
            out[rows] = tail.scatter_(1, ids[rows], log_q[rows, :-1].float())
        return out

    def _dither(self, log_q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(n, K + 1) profile with the stored residual steps added to the head.

        Head ``q_k + step * z_k`` (unbiased for the teacher's ``p_k``), tail mass
        ``1 - sum``; both floored at 1e-12 and renormalised (the floors are the
        only bias left, on probabilities below one step).
        """
        wide = log_q.double().exp()
        head = (wide[:, :-1] + self.config.residual_step * z.double()).clamp_min(
            _PROB_FLOOR
        )
        tail = (1.0 - head.sum(dim=1, keepdim=True)).clamp_min(_PROB_FLOOR)
        both = torch.cat([head, tail], dim=1)
        return (both / both.sum(dim=1, keepdim=True)).log().float()

    def _prior_tail(self, ids: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """(n, C) head log-probs with the tail mass spread by the unigram prior."""
        head = self._require_head("decode")
        prior = head.log_prior.to(ids.device, torch.float64)
        norm = torch.logsumexp(prior, dim=0)
        kept = torch.exp(prior[ids] - norm).sum(dim=1)
        log_rest = torch.log((1.0 - kept).clamp_min(1e-300))
        tail = prior[None] - norm - log_rest[:, None] + log_q[:, -1:].double()
        return tail.float().scatter_(1, ids, log_q[:, :-1].float())

    # -- what is shipped once ------------------------------------------------------
    def model_tensors(self) -> dict[str, torch.Tensor]:
        head = self._require_head("model_tensors")
        assert self._level_table is not None and self._rank_table is not None
        extra = {}
        if self._residual_table is not None:
            extra["residual_table"] = self._residual_table
        return (
            head.model_tensors()
            | extra
            | {
                "sample_level_table": self._level_table,
                "tail_rank_table": self._rank_table,
            }
        )

    def to_config(self) -> dict[str, Any]:
        head = self._require_head("to_config")
        return super().to_config() | {"head": head.to_config()}

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> VQAESampledCodec:
        """Rebuild a decode-only codec (the head's encoder is not stored)."""
        options = dict(config)
        # archives written before the head residual existed have none
        options.setdefault("residual_step", 0.0)
        head_config = options.pop("head", None)
        if not isinstance(head_config, dict):
            raise ArchiveFormatError("stored vqae-rs config needs its head config")
        codec, num_classes = cls._unfitted_from_stored(options)
        assert isinstance(codec, cls)
        cfg = codec.config
        if cfg.k is None or cfg.sample_scale is None:
            raise ArchiveFormatError(
                f"stored vqae-rs config needs a fitted k and sample_scale, got "
                f"k={cfg.k}, sample_scale={cfg.sample_scale}"
            )
        ours = {
            "sample_level_table": ((1, len(codec.levels)), torch.int16),
            "tail_rank_table": ((1, rank_alphabet(num_classes)), torch.int16),
        }
        if cfg.residual_step > 0:
            groups = _residual_groups(cfg.k)
            ours["residual_table"] = ((groups, 2 * _RESIDUAL_RANGE + 1), torch.int16)
        check_model_tensors(cls.kind, ours, tensors)
        head_tensors = {k: v for k, v in tensors.items() if k not in ours}
        head = VQAESparseCodec.from_stored(head_config, head_tensors)
        if head.k != cfg.k or head.num_classes != num_classes:
            raise ArchiveFormatError(
                f"vqae-rs head config (k={head.k}, {head.num_classes} classes) does "
                f"not match the codec (k={cfg.k}, {num_classes} classes)"
            )
        codec._head = head
        codec.num_classes = num_classes
        residual = tensors.get("residual_table") if cfg.residual_step > 0 else None
        codec._set_tables(
            tensors["sample_level_table"].cpu(),
            tensors["tail_rank_table"].cpu(),
            None if residual is None else residual.cpu(),
        )
        return codec

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> VQAESampledCodec:
        """Fix the all-in budget; :meth:`fit` picks K and the sampling scale.

        Raises UnreachableTargetError when even K = 1 without tail samples cannot
        fit next to the stored tensors (the exact check happens in ``fit``).
        """
        try:
            base = VQAESampledConfig(**options)
        except Exception as exc:
            raise ConfigError(f"invalid vqae-rs codec options: {exc}") from exc
        k = base.k or 1
        model = cls.model_bytes_for(base, k, num_classes)
        slack = _BLOCK_SLACK * math.ceil(num_labels / _SLACK_LABELS)
        least = math.ceil(num_labels * (8 * base.code_bytes + k) / 8)
        need = model + slack + least
        if need > budget_bytes:
            ref = reference_bytes(num_labels, num_classes, "fp16")
            raise UnreachableTargetError(
                f"vqae-rs needs more than {need} bytes for {num_labels} labels "
                f"({model} of them stored tensors) but the budget is {budget_bytes}; "
                f"the best reachable ratio is below {ref / need:.1f}x vs fp16; choose "
                "a lower ratio or fewer code bytes (num_chunks, num_stages)"
            )
        return cls(base.model_copy(update={"budget_bytes": budget_bytes}))


# -- helpers --------------------------------------------------------------------------
def _residual_groups(k: int) -> int:
    """Residual tables: one per slot group 0 | 1-2 | 3-6 | ... (as the id tables)."""
    return max(slot_groups(k)) + 1


def _residual_table_size(cfg: VQAESampledConfig, k: int) -> int:
    if cfg.residual_step <= 0:
        return 0
    return _residual_groups(k) * (2 * _RESIDUAL_RANGE + 1)


def _widths(level: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    table = torch.tensor([count_field_bits(s) for s in levels], dtype=torch.int64)
    return table[level]


def _nearest_level(target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(n,) index of the level nearest each target sample count."""
    return (target.double()[:, None] - levels[None]).abs().argmin(dim=1)


def _tail_mass(log_p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(n,) float64 teacher mass outside the head ``ids`` (may round below 0)."""
    return 1.0 - log_p.gather(1, ids).double().exp().sum(dim=1)


def _tail_draws(
    log_p: torch.Tensor, ids: torch.Tensor, num_samples: int, seed: int
) -> torch.Tensor:
    """(n, S) draws from each row's distribution with the head ids removed."""
    masked = log_p.scatter(1, ids, float("-inf"))
    gen = seeded_generator(seed, b"vqae-rs-fit", log_p.shape[0])
    return draw_categorical(masked, num_samples, 1.0, gen)


def _take(parts: list[torch.Tensor], order: torch.Tensor | None) -> torch.Tensor:
    if order is None:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat(parts)[order]


def _mean_id_bits(buckets: torch.Tensor, alphabet: int, k: int) -> float:
    """Mean bits of K rank-coded head ids per label under tables fitted on them."""
    cols = slot_groups(k)
    tables = group_frequencies(buckets, alphabet, cols)
    log2p = torch.log2(tables.double() / tables.double().sum(1, keepdim=True))
    col = torch.tensor(cols)
    return float((-log2p[col[None], buckets] + buckets.double()).sum(1).mean())


def _tail_bits_by_level(
    ranks: torch.Tensor, levels: torch.Tensor, widths: torch.Tensor, alphabet: int
) -> torch.Tensor:
    """(n, L) tail bits of every label at every sample level, from one pool of draws.

    The first S draws of a row are its draws at level S; distinct ids cost their
    bucket's entropy (one table fitted on all levels' distinct ids) plus the raw
    low bits; a label that draws stores ``d - 1`` and every count but the last
    in ``w`` bits.
    """
    n, s_max = ranks.shape
    ordered, perm = ranks.sort(dim=1, stable=True)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    is_new = torch.zeros_like(first).scatter_(1, perm, first)  # first draws of an id
    buckets = rank_bucket(ranks)
    table = torch.bincount(buckets[is_new], minlength=alphabet).double() + 0.5
    cost = -torch.log2(table / table.sum())[buckets] + buckets.double()
    cum_ids = torch.cat(
        [torch.zeros(n, 1, dtype=torch.float64), (cost * is_new).cumsum(dim=1)], 1
    )
    cum_distinct = torch.cat(
        [torch.zeros(n, 1, dtype=torch.float64), is_new.double().cumsum(dim=1)], 1
    )
    at = levels.long().clamp_max(s_max)
    d = cum_distinct[:, at]
    # one (d - 1) field per label that draws, a count per distinct id but the last
    counted = (d > 0).double() + (d - 1).clamp_min(0)
    return cum_ids[:, at] + widths[None] * counted


def _fit_scale(
    mass: torch.Tensor, levels: torch.Tensor, bits: torch.Tensor, avail: float
) -> float | None:
    """Largest sampling scale whose mean tail bits stay within ``avail``."""

    def mean_bits(scale: float) -> float:
        pick = _nearest_level(scale * mass, levels)
        return float(bits.gather(1, pick[:, None]).mean())

    lo, hi = -3.0, 5.0  # log10 scale
    if mean_bits(10**lo) > avail:
        return None
    if mean_bits(10**hi) <= avail:
        return float(10**hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_bits(10**mid) <= avail else (lo, mid)
    return float(10**lo)


def _u32(value: int) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int32).view(torch.uint8)


def _read_u32(data: torch.Tensor, pos: int, what: str) -> tuple[int, int]:
    if data.numel() < pos + 4:
        raise ArchiveFormatError(f"vqae-rs block is too short to hold its {what}")
    value = int(data[pos : pos + 4].clone().view(torch.int32)[0])
    if value < 0 or pos + 4 + value > data.numel():
        raise ArchiveFormatError(
            f"vqae-rs block names a {what} of {value} bytes in {data.numel()} bytes"
        )
    return value, pos + 4
