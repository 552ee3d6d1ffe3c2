"""Top-K log-probabilities plus a modelled tail (DistillKit style), for LM vocabularies.

Plain top-K renormalisation (``topk`` with decoder ``mr``) drops the tail, whose
mass is large for language models (docs/lm.md, "Design choices of
``topk-tail``"). Spreading it uniformly
(decoder ``ms``) ignores that tail tokens differ by orders of magnitude. This codec
keeps the K largest log-probabilities (fp16, absolute, so the tail mass
``m = 1 - sum exp(kept)`` is implied) with bit-packed ids, and models the tail as a
power law of the token's rank in a global order:

    log q_v = log m - s * log(rank_v + o) - log Z_n(s)      for v outside the top K,

where ``rank_v`` (0 = most frequent) is v's rank in the fitted unigram prior (the
mean teacher probability of each token over the fit sample, stored once as
``log_prior``: C fp16 values; ties keep id order), ``o >= 1`` is a rank offset
(fitted among 1 + K x {0, 1/2, 1, 2, 4, 8, 16, 32}: an LM's kept tokens usually
include the most frequent ones, and a large offset makes the decay close to
exponential in rank), ``Z_n(s)`` sums the power law over the label's tail ids (so
the tail holds exactly m), and the decay ``s`` is chosen per label from a grid of
``2 ** decay_bits`` values (range fitted; 4 bits by default).

The decay is exact on its grid: the tail's part of ``sum_v p_v log q_v`` is
``-s A - P log Z_n(s)`` + const, with ``A = sum_tail p_v log(rank_v + o)``, P
the teacher's tail mass, and ``Z_n(s) = Z(s) - sum_kept (rank_v + o) ** -s``
(``Z(s)`` over all C ids), so every grid value costs O(K) per label after one
O(C) pass. Decoding gathers one precomputed (C,) row per label.

The per-label decay, the fitted offset and the global rank each lower the KL
against the simpler choice (docs/lm.md, "Design choices of ``topk-tail``").
Fitting reads the sample ~10 times (prior, 8 offsets on up to 1024 labels, the
decay range).

Decoded = ``log q`` (log-probabilities at T = 1, finite everywhere), so
``softmax(decoded / T)`` is ``q ** (1 / T)`` renormalised.

Block layout for N labels (``b = ceil(log2 C)``, ``d = decay_bits``):
``N * K`` little-endian fp16 log-probabilities, row-major, sorted descending per
label; then the N * K ids as one bit stream of b bits each, padded to a byte;
then the N decay indices, d bits each, padded to a byte (absent when d = 0):
``2 N K + ceil(N K b / 8) + ceil(N d / 8)`` bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
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
    check_logits,
    check_model_tensors,
    compact_ints,
    iterate_source,
)
from labelzip.codecs.baseline.topk import ASSUMED_BLOCK_LABELS
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
)
from labelzip.ops.bitpack import bits_for, pack_bits, packed_size, unpack_bits
from labelzip.rate.search import largest_fitting

__all__ = ["ROW_BLOCK", "TopKTailCodec", "TopKTailConfig"]

# Rows processed at once in encode/decode/fit: bounds the (rows, C) temporaries
# (a few of them, 4-8 bytes per value) at C = 49,152 to tens of MB.
ROW_BLOCK = 256

# Smallest tail mass a decoder assigns (keeps log m finite when the kept fp16
# probabilities round up to a sum of 1).
_TAIL_MASS_FLOOR = 1e-12
# Fine grid the per-label optimum is located on when fitting the grid's range.
_FIT_GRID = torch.linspace(0.0, 8.0, 321, dtype=torch.float64)
# Quantiles of the fitted per-label optimum that bound the stored grid.
_RANGE_QUANTILES = (0.02, 0.98)
_LOG_PRIOR_FLOOR = -1e4  # tokens never seen in the fit sample (fp16-safe)
# Rank offsets tried by fit: 1 + K x these (the tail's power law starts after them).
_OFFSET_FRACTIONS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
_OFFSET_FIT_LABELS = 1024


class TopKTailConfig(CodecConfig):
    """Configuration of :class:`TopKTailCodec`."""

    kind: Literal["topk-tail"] = "topk-tail"
    k: int = Field(
        default=32, ge=1, le=1 << 20, description="top log-probabilities kept (K)"
    )
    decay_bits: int = Field(
        default=4,
        ge=0,
        le=8,
        description="bits of the per-label tail decay index (0 = one decay for all)",
    )
    decay_min: float | None = Field(
        default=None,
        ge=0.0,
        le=16.0,
        description="smallest tail decay s of the grid; None = fitted",
    )
    decay_max: float | None = Field(
        default=None,
        ge=0.0,
        le=16.0,
        description="largest tail decay s of the grid; None = fitted",
    )
    rank_offset: float | None = Field(
        default=None,
        ge=1.0,
        le=1e6,
        description="o in log(rank + o) of the tail's power law; None = fitted",
    )
    max_fit_labels: int = Field(
        default=16384,
        ge=1,
        le=1 << 24,
        description="labels of the fit source read to fit the prior and decay range",
    )

    @model_validator(mode="after")
    def _check_range(self) -> TopKTailConfig:
        lo, hi = self.decay_min, self.decay_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"decay_min {lo} exceeds decay_max {hi}")
        if self.decay_bits == 0 and (lo, hi) != (None, None) and lo != hi:
            raise ValueError(
                "decay_bits=0 stores one decay: give decay_min == decay_max or neither"
            )
        return self


class TopKTailCodec(ParsedDecoding):
    """K fp16 log-probs + bit-packed ids + a power-law tail in a fitted token order."""

    kind: ClassVar[str] = "topk-tail"
    codec_id: ClassVar[int] = 5
    config_class: ClassVar[type[CodecConfig]] = TopKTailConfig

    config: TopKTailConfig

    def __init__(self, config: TopKTailConfig | None = None) -> None:
        super().__init__(config)
        self._log_prior: torch.Tensor | None = None  # (C,) fp16, as stored
        self._rank: torch.Tensor | None = None  # (C,) prior rank of each id
        self._grid: torch.Tensor | None = None  # (G,) float64 decays
        self._log_z: torch.Tensor | None = None  # (G,) float64 log Z(s) over all ids
        self._table: torch.Tensor | None = None  # (G, C) float32 tail log-weights

    # -- layout --------------------------------------------------------------------
    def block_bytes(self, num_labels: int) -> int:
        """Exact size of a block of ``num_labels`` labels."""
        num_classes = self._require_fitted("block_bytes")
        return _block_bytes(self.config, num_labels, num_classes)

    @property
    def decay_grid(self) -> torch.Tensor:
        """(2 ** decay_bits,) float64 decays s a label can choose from."""
        self._require_fitted("decay_grid")
        assert self._grid is not None
        return self._grid

    # -- fitting -----------------------------------------------------------------
    def fit(
        self, source: LogitSource, *, num_labels: int | None = None
    ) -> TopKTailCodec:
        """Fit the unigram prior, rank offset and decay grid on the fit labels.

        Reads up to ``max_fit_labels`` labels of ``source`` in three passes (so it
        must be re-iterable: a list or a zero-argument callable): the mean
        probability of each token; the rank offset whose per-label best decays
        give the highest tail likelihood (first 1024 labels, unless
        ``rank_offset`` is given); each label's best decay on a fine grid, whose
        2nd-98th percentile range becomes the stored grid (unless
        ``decay_min``/``decay_max`` are given).
        """
        cfg = self.config
        log_prior = self._fit_prior(source)
        self._set_prior(log_prior)
        offset = cfg.rank_offset
        if offset is None:
            candidates = sorted({1.0 + round(cfg.k * f) for f in _OFFSET_FRACTIONS})
            totals = [
                float(self._best_scores(source, c, _OFFSET_FIT_LABELS)[1].sum())
                for c in candidates
            ]
            offset = candidates[max(range(len(totals)), key=totals.__getitem__)]
        lo, hi = cfg.decay_min, cfg.decay_max
        if lo is None or hi is None:
            best, _ = self._best_scores(source, offset, cfg.max_fit_labels)
            if cfg.decay_bits == 0:
                fitted_lo = fitted_hi = float(best.median())
            else:
                q = torch.tensor(_RANGE_QUANTILES, dtype=torch.float64)
                fitted_lo, fitted_hi = (float(v) for v in best.quantile(q))
            lo = fitted_lo if lo is None else lo
            hi = max(lo, fitted_hi if hi is None else hi)
            lo = min(lo, hi)
        self.config = cfg.model_copy(
            update={"decay_min": lo, "decay_max": hi, "rank_offset": offset}
        )
        self.num_classes = log_prior.numel()
        self._set_grid()
        return self

    def _fit_prior(self, source: LogitSource) -> torch.Tensor:
        """(C,) fp16 log of each token's mean probability over the fit labels."""
        cfg = self.config
        prob_sum: torch.Tensor | None = None
        seen = 0
        for batch in _limited(source, cfg.max_fit_labels):
            check_logits(batch, None if prob_sum is None else prob_sum.numel())
            if prob_sum is None:
                num_classes = int(batch.shape[1])
                if cfg.k > num_classes:
                    raise ConfigError(
                        f"topk-tail k={cfg.k} exceeds the {num_classes} classes; "
                        f"choose k <= {num_classes}"
                    )
                prob_sum = torch.zeros(num_classes, dtype=torch.float64)
            for rows in batch.detach().split(ROW_BLOCK):
                probs = torch.softmax(rows.float(), dim=1)
                prob_sum += probs.sum(dim=0, dtype=torch.float64).cpu()
            seen += batch.shape[0]
        if prob_sum is None:
            raise InputError(
                "fit() got an empty source; pass at least one (B, C) batch"
            )
        mean = (prob_sum / seen).log().clamp_min(_LOG_PRIOR_FLOOR)
        return mean.to(torch.float16)

    def _best_scores(
        self, source: LogitSource, offset: float, limit: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) best decay of each fit label on the fine grid and its (n,) score."""
        log_rank = self._log_rank(offset=offset)
        log_z = _log_partition(_FIT_GRID, log_rank)
        decays: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        for batch in _limited(source, limit):
            for rows in batch.detach().split(ROW_BLOCK):
                log_p = torch.log_softmax(rows.float().cpu(), dim=1)
                _, ids = log_p.topk(self.config.k, dim=1)
                score = _tail_scores(log_p, ids, log_rank, _FIT_GRID, log_z)
                best = score.max(dim=1)
                decays.append(_FIT_GRID[best.indices])
                scores.append(best.values)
        return torch.cat(decays), torch.cat(scores)

    def _set_prior(self, log_prior: torch.Tensor) -> None:
        self._log_prior = log_prior
        order = torch.argsort(log_prior.float(), descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        self._rank = rank

    def _set_grid(self) -> None:
        cfg = self.config
        assert cfg.decay_min is not None and cfg.decay_max is not None
        size = 1 << cfg.decay_bits
        grid = torch.linspace(cfg.decay_min, cfg.decay_max, size, dtype=torch.float64)
        log_rank = self._log_rank()
        self._grid = grid
        self._log_z = _log_partition(grid, log_rank)
        # (G, C) -s log(rank_v + o) in id order: decoding gathers one row per label
        self._table = (-grid[:, None] * log_rank[None]).float()

    def _log_rank(
        self, device: torch.device | str | None = None, offset: float | None = None
    ) -> torch.Tensor:
        """(C,) float64 ``log(rank_v + o)`` of every id v (rank 0 = most frequent)."""
        assert self._rank is not None
        offset = self.config.rank_offset if offset is None else offset
        assert offset is not None
        rank = self._rank.to(device=device, dtype=_wide(device))
        return (rank + offset).log()

    # -- byte path ---------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> top-K log-probs, ids and per-label decay index."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        assert self._grid is not None and self._log_z is not None
        cfg = self.config
        n = int(logits.shape[0])
        if n == 0:
            return EncodedBlock(num_labels=0, data=torch.zeros(0, dtype=torch.uint8))
        values, ids, decays = [], [], []
        for rows in logits.detach().split(ROW_BLOCK):
            log_p = torch.log_softmax(rows.float(), dim=1)
            top, top_ids = log_p.topk(cfg.k, dim=1)  # (n, K), sorted descending
            stored = top.to(torch.float16)
            values.append(stored.cpu())
            ids.append(top_ids.cpu())
            if cfg.decay_bits:
                log_rank = self._log_rank(log_p.device)
                score = _tail_scores(log_p, top_ids, log_rank, self._grid, self._log_z)
                decays.append(score.argmax(dim=1).cpu())
        parts = [
            torch.cat(values).contiguous().view(torch.uint8).reshape(-1),
            pack_bits(torch.cat(ids), bits_for(num_classes)),
        ]
        if cfg.decay_bits:
            parts.append(pack_bits(torch.cat(decays), cfg.decay_bits))
        return EncodedBlock(num_labels=n, data=torch.cat(parts))

    def parse_block(
        self,
        block: EncodedBlock,
        context: LabelContext | None = None,
        device: torch.device | str | None = None,
    ) -> ParsedBlock:
        """Block -> kept log-probs (fp16), class ids and decay index, per label."""
        num_classes = self._require_fitted("decode")
        cfg = self.config
        n, k = block.num_labels, cfg.k
        expected = self.block_bytes(n)
        if block.nbytes != expected:
            raise ArchiveFormatError(
                f"topk-tail block of {n} labels (k={k}, {num_classes} classes) must "
                f"hold {expected} bytes, got {block.nbytes}"
            )
        data = block.data.to(device=device, dtype=torch.uint8).reshape(-1)
        split = n * k * 2
        id_end = split + packed_size(n * k, bits_for(num_classes))
        values = data[:split].clone().view(torch.float16).reshape(n, k)
        ids = unpack_bits(data[split:id_end], bits_for(num_classes), n * k)
        ids = ids.reshape(n, k)
        if n and int(ids.max()) >= num_classes:
            raise ArchiveFormatError(
                f"topk-tail block holds class id {int(ids.max())} >= {num_classes}"
            )
        if cfg.decay_bits:
            which = unpack_bits(data[id_end:], cfg.decay_bits, n)
        else:
            which = torch.zeros(n, dtype=torch.int64, device=data.device)
        parts = {
            "values": values,
            "ids": compact_ints(ids, num_classes),
            "which": compact_ints(which, 1 << cfg.decay_bits),
        }
        return ParsedBlock(n, parts)

    def decode_parsed(
        self, parsed: ParsedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Parsed rows -> (n, C) float32 log q: the tail model on those rows only."""
        num_classes = self._require_fitted("decode")
        n = parsed.num_labels
        values = parsed.parts["values"].to(device).float()
        ids = parsed.parts["ids"].to(device).long()
        which = parsed.parts["which"].to(device).long()
        out = torch.empty(n, num_classes, device=values.device)
        for start in range(0, n, ROW_BLOCK):
            stop = min(start + ROW_BLOCK, n)
            out[start:stop] = self._densify(
                values[start:stop], ids[start:stop], which[start:stop]
            )
        return out

    def _densify(
        self, values: torch.Tensor, ids: torch.Tensor, which: torch.Tensor
    ) -> torch.Tensor:
        """(n, K) kept log-probs at (n, K) ids + (n,) decay index -> (n, C) log q."""
        assert self._grid is not None and self._log_z is not None
        assert self._table is not None
        dev = values.device
        kept_mass = values.to(_wide(dev)).exp().sum(dim=1)
        mass = (1.0 - kept_mass).clamp_min(_TAIL_MASS_FLOOR)
        log_rank = self._log_rank(dev)
        log_zn = _tail_log_partition(ids, log_rank, self._grid, self._log_z)
        offset = mass.log() - log_zn.gather(1, which[:, None])[:, 0]  # (n,)
        out = self._table.to(dev)[which]  # (n, C): -s log(rank + o)
        out += offset.float()[:, None]
        return out.scatter_(1, ids, values)

    # -- what is shipped once ------------------------------------------------------
    def planned_model_tensors(self, num_classes: int) -> dict[str, torch.Tensor] | None:
        """The (C,) fp16 log prior: known before fit, so rate control sizes the
        header exactly instead of reserving a 2 KiB allowance for it."""
        return {"log_prior": torch.zeros(num_classes, dtype=torch.float16)}

    def model_tensors(self) -> dict[str, torch.Tensor]:
        if self._log_prior is None:
            raise NotFittedError(
                "TopKTailCodec.model_tensors called before fit(); call "
                "codec.fit(batches) first"
            )
        return {"log_prior": self._log_prior}

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> TopKTailCodec:
        codec, num_classes = cls._unfitted_from_stored(config)
        assert isinstance(codec, cls)
        if num_classes < 2:
            raise ArchiveFormatError(
                "topk-tail codec config needs an integer num_classes >= 2, got "
                f"{num_classes!r}"
            )
        cfg = codec.config
        fitted = (cfg.decay_min, cfg.decay_max, cfg.rank_offset)
        if None in fitted or cfg.k > num_classes:
            raise ArchiveFormatError(
                "stored topk-tail config needs a fitted decay range and rank offset "
                f"and k <= num_classes, got {fitted}, k={cfg.k}"
            )
        shapes = {"log_prior": ((num_classes,), torch.float16)}
        check_model_tensors(cls.kind, shapes, tensors, exact=True)
        codec._set_prior(tensors["log_prior"].cpu())
        codec.num_classes = num_classes
        codec._set_grid()
        return codec

    def expected_payload_bits(self) -> float | None:
        num_classes = self._require_fitted("expected_payload_bits")
        cfg = self.config
        return float(16 * cfg.k + cfg.k * bits_for(num_classes) + cfg.decay_bits)

    def rate_limit(self) -> str:
        num_classes = self._require_fitted("rate_limit")
        k = self.config.k
        if k >= num_classes:
            return f"k={k} already keeps every class"
        now = self.expected_payload_bits() or 0.0
        step = 16 + bits_for(num_classes)  # one more fp16 value and id per label
        floor = "k=1 is the smallest topk-tail; " if k == 1 else ""
        return (
            f"{floor}K is a whole number of entries: k={k} takes {now:g} payload bits "
            f"per label and k={k + 1} would take {now + step:g}, over the budget"
        )

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> TopKTailCodec:
        """The largest K whose blocks plus the stored prior (2 C bytes) fit the budget.

        A ``k`` fixed in ``options`` is kept if it fits, else rejected. One byte of
        padding per stream is reserved per :data:`ASSUMED_BLOCK_LABELS` labels.
        """
        try:
            base = TopKTailConfig(**options)
        except Exception as exc:
            raise ConfigError(f"invalid topk-tail codec options: {exc}") from exc
        model = 2 * num_classes

        def size(k: int) -> int:
            cfg = base.model_copy(update={"k": k})
            slack = 2 * math.ceil(num_labels / ASSUMED_BLOCK_LABELS)
            return _block_bytes(cfg, num_labels, num_classes) + slack + model

        if "k" in options and base.k > num_classes:
            raise ConfigError(f"topk-tail k={base.k} exceeds the {num_classes} classes")
        k = largest_fitting(
            size,
            budget_bytes,
            lo=1,
            hi=num_classes,
            fixed=base.k if "k" in options else None,
            num_labels=num_labels,
            num_classes=num_classes,
            subject=lambda k: f"topk-tail k={k}",
            detail=f" ({model} of them the token prior)",
        )
        return cls(base.model_copy(update={"k": k}))


def _block_bytes(cfg: TopKTailConfig, num_labels: int, num_classes: int) -> int:
    ids = packed_size(num_labels * cfg.k, bits_for(num_classes))
    decays = packed_size(num_labels, cfg.decay_bits)
    return 2 * num_labels * cfg.k + ids + decays


def _wide(device: torch.device | str | None) -> torch.dtype:
    """float64 for the small per-label sums, float32 where a device lacks float64."""
    return (
        torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    )


def _log_partition(grid: torch.Tensor, log_rank: torch.Tensor) -> torch.Tensor:
    """(G,) float64 ``log sum_v (rank_v + o) ** -s`` over all C ids, per decay s."""
    return torch.stack([torch.logsumexp(-s * log_rank.double(), dim=0) for s in grid])


def _tail_log_partition(
    ids: torch.Tensor, log_rank: torch.Tensor, grid: torch.Tensor, log_z: torch.Tensor
) -> torch.Tensor:
    """(n, G) ``log Z_n(s)``: the power law summed over the tail of each label.

    ``Z_n(s) = Z(s) - sum_{kept v} (rank_v + o) ** -s``, where ``Z(s)`` sums over
    all C ids (``log_z``); O(K G) per label instead of O(C G).
    """
    dtype = _wide(ids.device)
    kept = log_rank.to(dtype)[ids]  # (n, K)
    g = grid.to(ids.device, dtype)
    kept_sum = torch.exp(-kept[:, :, None] * g[None, None]).sum(dim=1)  # (n, G)
    z = log_z.to(ids.device, dtype).exp()[None] - kept_sum
    return z.clamp_min(torch.finfo(dtype).tiny).log()


def _tail_scores(
    log_p: torch.Tensor,
    ids: torch.Tensor,
    log_rank: torch.Tensor,
    grid: torch.Tensor,
    log_z: torch.Tensor,
) -> torch.Tensor:
    """(n, G) float64 CPU tail part of ``sum_v p_v log q_v`` for each grid decay.

    With ``A = sum_tail p_v log(rank_v + o)`` and tail mass ``P`` it is
    ``-s A - P log Z_n(s)`` (plus a term that does not depend on s).
    """
    dtype = _wide(log_p.device)
    log_rank = log_rank.to(log_p.device, dtype)
    p = log_p.exp()
    p_kept = p.gather(1, ids).to(dtype)
    a = (p @ log_rank.float()).to(dtype) - (p_kept * log_rank[ids]).sum(dim=1)
    mass = (1.0 - p_kept.sum(dim=1)).clamp_min(0.0)
    log_zn = _tail_log_partition(ids, log_rank, grid, log_z)
    g = grid.to(log_p.device, dtype)
    return (-g[None] * a[:, None] - mass[:, None] * log_zn).double().cpu()


def _limited(source: LogitSource, limit: int) -> Iterator[torch.Tensor]:
    """The batches of a fresh pass over ``source``, cut after ``limit`` labels."""
    seen = 0
    for batch in iterate_source(source):
        if seen >= limit:
            return
        take = batch[: limit - seen]
        seen += int(take.shape[0])
        yield take
