"""VQ autoencoder on the teacher's top-K support: a VQAE codec for LM vocabularies.

At V = 49,152 a VQAE whose decoder emits all V logits from a hidden state of
size H stores a V x H output layer (6 MB at H = 64 in fp16: 31 B per token of a
200k-token set) and spends most of its decode time there. This codec keeps the
decoder's output at K + 1 values instead:

- **support**: the teacher's K most probable ids per label, stored explicitly and
  entropy-coded by their *rank* r in a fitted unigram order (0 = the token with
  the largest mean teacher probability): the symbol ``b = floor(log2(r + 1))`` is
  ANS-coded with one frequency table per slot group (slots 0 | 1-2 | 3-6 | ...),
  the ``b`` low bits of ``r + 1 - 2**b`` are stored raw. An LM's likely next
  tokens are mostly frequent tokens: ~10-12 bits per id instead of 16.
- **values**: the K sorted head log-probabilities and the log tail mass (a
  (K + 1) vector, not V) go through a small MLP encoder into M chunks of a
  residual product VQ (R stages, 256 codewords: 8 bits each); a small MLP decoder
  maps the codewords back to K + 1 logits whose log-softmax is the decoded head
  and tail mass. It is trained on exactly the KL over those K + 1 groups.
- **tail**: the decoded tail mass is spread over the other V - K tokens as
  ``q_v ∝ prior_v ** a``, with the stored fp16 log unigram prior (2 V bytes) and
  an exponent ``a`` chosen per label from ``2 ** tail_bits`` grid values
  (range fitted); the optimum is exact on the grid in O(K) per value, as in
  ``topk-tail``.

- **per-label K** (``k_levels`` = L, default 4): a label keeps the first
  ``K / 2**i`` of its K ids (i < L), the level that minimises
  ``KL_oracle + lambda * id bits`` (``KL_oracle``: the KL with the exact head
  values and the modelled tail, so the choice depends on the teacher only); the
  level is one more ANS symbol, and the decoder's slots past a label's level
  merge into its tail. Peaked labels spend few ids, flat ones many.

Rate control fixes the all-in budget (``budget_bytes`` for ``num_labels``);
``fit`` measures the id cost on the fit sample and picks K (and lambda, fitted
by bisection so the mean payload, plus every stored tensor, lands 2% under the
budget; with L = 1, the largest K that fits). With a fixed ``k`` and no budget,
lambda is ``rate_lambda`` or 0.

Measured on SmolLM2-135M labels (fit on 2048 positions of
``lm_smollm2_logits``, 512 test positions, budgets of a 200k-token archive),
KL(teacher || decoded) at T = 1 in nats, 500x / 2000x all-in vs fp16:
this codec 0.227 / 0.432 (L = 4), 0.240 / 0.464 (L = 1); topk-tail 0.381 /
0.711; topk (mr) 1.69 / 3.36; rskd 2.25 / 4.24 (see docs/lm.md).

Stored once (``model_tensors``): ``log_prior`` (V fp16), the decoder's two
linear layers (fp16), the codebooks (R x M x 256 x D fp16) and the id frequency
tables (int16). The encoder is only needed to encode and is not stored, so a
codec rebuilt with :meth:`from_stored` decodes but does not encode.

Block layout (:mod:`sparse_block`) for N labels: a little-endian u32 byte count of the ANS stream;
the ANS stream (the N level symbols when L > 1, then the rank buckets of the
labels of each level in turn, level by level, labels in order); the raw low bits
of those ranks in the same order, one bit stream padded to a byte; the N x R x M code bytes; the N tail
exponent indices, ``tail_bits`` bits each, padded to a byte.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch
from torch import nn

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
    quantize_counts,
)
from labelzip.codecs.vqae.quantizer import ResidualProductQuantizer
from labelzip.codecs.vqae_lm.fitsample import ROW_BLOCK, collect_log_probs
from labelzip.codecs.vqae_lm.idcoding import (
    group_frequencies,
    num_slot_groups,
    prior_order,
    rank_alphabet,
    rank_bucket,
    slot_groups,
    unigram_log_prior,
)
from labelzip.codecs.vqae_lm.levels import K_GRID, fit_lambda, level_ks
from labelzip.codecs.vqae_lm.network import (
    FEATURE_SCALE,
    TAIL_FLOOR,
    HeadDecoder,
    SparseAutoencoder,
    head_features,
    quantize_codes,
)
from labelzip.codecs.vqae_lm.sparse_block import BlockCoders, pack_block, parse_block
from labelzip.codecs.vqae_lm.sparse_config import VQAESparseConfig
from labelzip.codecs.vqae_lm.sparse_sizing import (
    CODEBOOK_SIZE,
    MARGIN,
    block_slack,
    budget_config,
    choose_k,
    model_bytes,
)
from labelzip.codecs.vqae_lm.tail import tail_scores, tail_terms, wide_dtype
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)

__all__ = ["VQAESparseCodec", "VQAESparseConfig"]

logger = logging.getLogger(__name__)

_FIT_GRID = torch.linspace(0.0, 3.0, 121, dtype=torch.float64)
_RANGE_QUANTILES = (0.02, 0.98)


class VQAESparseCodec(Codec):
    """Entropy-coded top-K ids + VQAE code of the head profile + prior-shaped tail."""

    kind: ClassVar[str] = "vqae-sparse"
    codec_id: ClassVar[int] = 7
    config_class: ClassVar[type[CodecConfig]] = VQAESparseConfig

    config: VQAESparseConfig

    def __init__(self, config: VQAESparseConfig | None = None) -> None:
        super().__init__(config if config is not None else VQAESparseConfig())
        self._log_prior: torch.Tensor | None = None  # (C,) fp16
        self._order: torch.Tensor | None = None  # rank -> id
        self._rank: torch.Tensor | None = None  # id -> rank
        self._encoder: nn.Module | None = None
        self._decoder: HeadDecoder | None = None
        self._codebooks: torch.Tensor | None = None  # (R, M, 256, D) fp16
        self._id_tables = torch.zeros(0, 0, dtype=torch.int16)
        self._level_table: torch.Tensor | None = None
        self._id_coders: list[CategoricalStreamCoder] = []
        self._level_coder: CategoricalStreamCoder | None = None
        self._grid: torch.Tensor | None = None
        self._log_z: torch.Tensor | None = None

    # -- sizes -------------------------------------------------------------------
    @property
    def k(self) -> int:
        if self.config.k is None:
            raise NotFittedError("vqae-sparse K is chosen by fit(); call fit first")
        return self.config.k

    @property
    def log_prior(self) -> torch.Tensor:
        """(C,) fp16 log unigram prior the ids are ranked by (stored)."""
        if self._log_prior is None:
            raise NotFittedError(
                "vqae-sparse has no prior before fit(); call fit first"
            )
        return self._log_prior

    @property
    def token_rank(self) -> torch.Tensor:
        """(C,) int64: token id -> its rank in the prior order (0 = most frequent)."""
        if self._rank is None:
            raise NotFittedError(
                "vqae-sparse has no prior before fit(); call fit first"
            )
        return self._rank

    @property
    def token_order(self) -> torch.Tensor:
        """(C,) int64: rank -> token id (the inverse of :attr:`token_rank`)."""
        if self._order is None:
            raise NotFittedError(
                "vqae-sparse has no prior before fit(); call fit first"
            )
        return self._order

    @staticmethod
    def model_bytes_for(cfg: VQAESparseConfig, k: int, num_classes: int) -> int:
        """Bytes of every stored tensor for K kept ids and C classes."""
        return model_bytes(cfg, k, num_classes)

    # -- fitting -----------------------------------------------------------------
    def fit(
        self, source: LogitSource, *, num_labels: int | None = None
    ) -> VQAESparseCodec:
        """Fit the prior, choose K (and the per-label rule), the tables, the AE."""
        cfg = self.config
        log_p = collect_log_probs(source, cfg.max_fit_labels)
        n, num_classes = log_p.shape
        if num_classes < 2:
            raise InputError(f"vqae-sparse needs >= 2 classes, got {num_classes}")
        if cfg.k is not None and cfg.k >= num_classes:
            raise ConfigError(
                f"vqae-sparse k={cfg.k} must be below the {num_classes} classes"
            )
        self._set_prior(unigram_log_prior(log_p))
        k_cap = min(cfg.k or cfg.max_k, num_classes - 1)
        top, ids = log_p.topk(k_cap, dim=1)
        assert self._rank is not None
        buckets = rank_bucket(self._rank[ids])
        lo, hi = cfg.tail_min, cfg.tail_max
        if lo is None or hi is None:
            ks = sorted({max(1, k_cap // (1 << (cfg.k_levels - 1))), k_cap})
            best = torch.cat([self._best_alpha(log_p, ids[:, :k]) for k in ks])
            q = torch.tensor(_RANGE_QUANTILES, dtype=torch.float64)
            fit_lo, fit_hi = (float(v) for v in _FIT_GRID[best].quantile(q))
            lo = fit_lo if lo is None else lo
            hi = max(lo, fit_hi if hi is None else hi)
            if cfg.tail_bits == 0:
                lo = hi = float(_FIT_GRID[best].median())
        self.config = cfg = cfg.model_copy(update={"tail_min": lo, "tail_max": hi})
        self._set_grid()
        lam = cfg.rate_lambda
        if cfg.k_levels == 1:
            k = cfg.k or choose_k(cfg, buckets, num_classes, num_labels)
        else:
            k, lam = self._choose_levels(log_p, top, ids, buckets, num_labels)
        top, ids, buckets = top[:, :k], ids[:, :k], buckets[:, :k]
        self.config = cfg.model_copy(update={"k": k, "rate_lambda": lam})
        self.num_classes = num_classes
        levels = level_ks(k, cfg.k_levels)
        tables = group_frequencies(buckets, rank_alphabet(num_classes), slot_groups(k))
        self._set_coders(tables, None)
        if len(levels) > 1:
            assert lam is not None
            kl, _ = self._level_kl(self._row_stats(log_p), top, ids)
            which = (kl + lam * self._level_bits(ids)).argmin(1)
            budgeted = cfg.rate_lambda is None and cfg.budget_bytes is not None
            for attempt in range(3):
                chosen = torch.tensor(levels)[which]
                kept = torch.arange(k)[None] < chosen[:, None]
                tables = group_frequencies(
                    buckets.masked_fill(~kept, -1),
                    rank_alphabet(num_classes),
                    slot_groups(k),
                )
                level_counts = torch.bincount(which, minlength=len(levels))[None]
                self._set_coders(tables, quantize_counts(level_counts))
                if not budgeted or num_labels is None or attempt == 2:
                    break
                # re-fit lam with the real tables: spend the budget, not an estimate
                assert cfg.budget_bytes is not None
                slack = block_slack(num_labels)
                model = self.model_bytes_for(cfg, k, num_classes)
                avail = 8 * (cfg.budget_bytes - model - slack) / num_labels
                avail = avail * (1 - MARGIN) - 8 * cfg.code_bytes - cfg.tail_bits
                bits = self._level_bits(ids)
                lam = fit_lambda(kl, bits, avail)
                which = (kl + lam * bits).argmin(1)
            self.config = self.config.model_copy(update={"rate_lambda": lam})
        self._train(head_features(top), k)
        return self

    def _best_alpha(self, log_p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(n,) index on the fine fit grid of each label's best tail exponent."""
        assert self._log_prior is not None
        prior = self._log_prior.double()
        return torch.cat(
            [
                tail_scores(rows, rid, prior, _FIT_GRID).argmax(dim=1)
                for rows, rid in zip(
                    log_p.split(ROW_BLOCK), ids.split(ROW_BLOCK), strict=True
                )
            ]
        )

    def _set_coders(
        self, tables: torch.Tensor, level_table: torch.Tensor | None
    ) -> None:
        k = self.k
        levels = level_ks(k, self.config.k_levels)
        cols = slot_groups(k)
        self._id_tables = tables
        self._level_table = level_table
        self._id_coders = [CategoricalStreamCoder(tables, cols[:kk]) for kk in levels]
        self._level_coder = (
            CategoricalStreamCoder(level_table, [0])
            if level_table is not None
            else None
        )

    def _row_stats(self, log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) ``sum_v p_v log p_v`` and (n,) ``sum_v p_v lp_v``: the O(C) pass."""
        prior = self._log_prior_wide(log_p.device).float()
        neg_ent, p_prior = [], []
        for lp in log_p.split(ROW_BLOCK):
            p = lp.exp()
            neg_ent.append((p * lp).sum(dim=1, dtype=torch.float64))
            p_prior.append((p @ prior).double())
        return torch.cat(neg_ent), torch.cat(p_prior)

    def _oracle(
        self,
        stats: tuple[torch.Tensor, torch.Tensor],
        top: torch.Tensor,
        ids: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) KL(p || q) at T=1 for q = the exact top-k values + the modelled
        tail, and the (n,) best tail index on the stored grid.

        Closed form in O(K G) per label given :meth:`_row_stats`: the head
        contributes nothing, and the tail part is
        ``sum_tail p log p - P log P - max_a score(a)`` with
        ``score(a) = a A - P log Z_n(a)`` (see :func:`tail_terms`).
        """
        assert self._grid is not None and self._log_z is not None
        neg_ent, p_prior = stats
        prior = self._log_prior_wide(top.device)
        tk = top[:, :k].double()
        score = tail_terms(p_prior, tk, ids[:, :k], prior, self._grid, self._log_z)
        best = score.max(dim=1)
        pk = tk.exp()
        mass = (1.0 - pk.sum(dim=1)).clamp_min(0.0)
        tail_neg_ent = neg_ent - (pk * tk).sum(dim=1)
        log_mass = mass.clamp_min(TAIL_FLOOR).log()
        kl = (tail_neg_ent - mass * log_mass - best.values).clamp_min(0.0)
        return kl.cpu(), best.indices.cpu()

    def _slot_bits(self, buckets: torch.Tensor) -> torch.Tensor:
        """(n, K) cumulative id bits of the first j + 1 slots under the stored tables."""
        log2p = torch.log2(
            self._id_tables.double() / self._id_tables.double().sum(1, keepdim=True)
        )
        cols = torch.tensor(slot_groups(buckets.shape[1]))
        return (-log2p[cols[None], buckets] + buckets.double()).cumsum(dim=1)

    def _level_kl(
        self,
        stats: tuple[torch.Tensor, torch.Tensor],
        top: torch.Tensor,
        ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, L) oracle KL and (n, L) best tail index of every level."""
        pairs = [self._oracle(stats, top, ids, kk) for kk in self._levels()]
        kl = torch.stack([p[0].double() for p in pairs], 1)
        return kl, torch.stack([p[1] for p in pairs], 1)

    def _level_bits(self, ids: torch.Tensor) -> torch.Tensor:
        """(n, L) id bits (plus the level symbol's) of every level, stored tables."""
        assert self._rank is not None
        cum = self._slot_bits(rank_bucket(self._rank[ids]))
        bits = torch.stack([cum[:, kk - 1] for kk in self._levels()], 1)
        if self._level_table is not None:
            t = self._level_table[0].double()
            bits = bits - torch.log2(t / t.sum())[None]
        return bits

    def _levels(self) -> list[int]:
        return level_ks(self.k, self.config.k_levels)

    def _choose(
        self,
        stats: tuple[torch.Tensor, torch.Tensor],
        top: torch.Tensor,
        ids: torch.Tensor,
        lam: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) level index minimising KL + lam * bits, and its (n,) tail index."""
        kl, tails = self._level_kl(stats, top, ids)
        which = (kl + lam * self._level_bits(ids)).argmin(1)
        return which, tails.gather(1, which[:, None])[:, 0]

    def _choose_levels(
        self,
        log_p: torch.Tensor,
        top: torch.Tensor,
        ids: torch.Tensor,
        buckets: torch.Tensor,
        num_labels: int | None,
    ) -> tuple[int, float]:
        """K and lam: the pair with the least oracle KL whose mean payload fits."""
        cfg = self.config
        n, k_cap = buckets.shape
        num_classes = log_p.shape[1]
        if cfg.k is not None and (
            cfg.rate_lambda is not None or cfg.budget_bytes is None
        ):
            # a fixed K without a budget: lam = 0 keeps K ids wherever that helps
            return cfg.k, cfg.rate_lambda or 0.0
        if cfg.budget_bytes is None or num_labels is None:
            raise ConfigError(
                "vqae-sparse with k=None needs budget_bytes and fit(num_labels=...); "
                "give a rate target (labelzip.rate.configure_codec) or k"
            )
        self._id_tables = group_frequencies(
            buckets, rank_alphabet(num_classes), slot_groups(k_cap)
        )
        cum = self._slot_bits(buckets)
        slack = block_slack(num_labels)
        fixed = 8 * cfg.code_bytes + cfg.tail_bits + math.log2(cfg.k_levels)
        cands = sorted(
            {k for k in K_GRID if k <= k_cap} | {k_cap} if cfg.k is None else {cfg.k}
        )
        kl_cache: dict[int, torch.Tensor] = {}
        stats = self._row_stats(log_p)
        best: tuple[float, int, float] | None = None
        for k in cands:
            levels = level_ks(k, cfg.k_levels)
            model = self.model_bytes_for(cfg, k, num_classes)
            avail = 8 * (cfg.budget_bytes - model - slack) / num_labels
            avail = avail * (1 - MARGIN) - fixed
            # id cost with tables pooled over exactly these K slots
            self._id_tables = group_frequencies(
                buckets[:, :k], rank_alphabet(num_classes), slot_groups(k)
            )
            cum_k = self._slot_bits(buckets[:, :k])
            bits = torch.stack([cum_k[:, kk - 1] for kk in levels], 1)
            if float(bits[:, 0].mean()) > avail:
                continue
            for kk in levels:
                if kk not in kl_cache:
                    kl_cache[kk] = self._oracle(stats, top, ids, kk)[0].double()
            kl = torch.stack([kl_cache[kk] for kk in levels], 1)
            lam = fit_lambda(kl, bits, avail)
            pick = (kl + lam * bits).argmin(1, keepdim=True)
            score = float(kl.gather(1, pick).mean())
            if best is None or score < best[0]:
                best = (score, k, lam)
        if best is None:
            ref = reference_bytes(num_labels, num_classes, "fp16")
            k1 = self.model_bytes_for(cfg, 1, num_classes)
            need = (
                k1
                + slack
                + math.ceil((float(cum[:, 0].mean()) + fixed) * num_labels / 8)
            )
            raise UnreachableTargetError(
                f"vqae-sparse with K=1 needs ~{need} bytes for {num_labels} labels, "
                f"the budget is {cfg.budget_bytes}; the best reachable ratio is "
                f"~{ref / need:.1f}x vs fp16; choose a lower ratio"
            )
        logger.info(
            "vqae-sparse: K=%d, lambda=%.3g, oracle KL %.4f", best[1], best[2], best[0]
        )
        return best[1], best[2]

    def _train(self, feats: torch.Tensor, k: int) -> None:
        """Train encoder, decoder and codebooks on (n, K + 1) profiles."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            ae = SparseAutoencoder(k, cfg)
        vq = ResidualProductQuantizer(
            cfg.num_chunks, cfg.chunk_dim, CODEBOOK_SIZE, cfg.num_stages
        )
        opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
        target = feats * FEATURE_SCALE  # log-probs of the K + 1 groups
        p = target.exp()
        n = feats.shape[0]
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
        for _ in range(cfg.steps):
            idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
            x = feats[idx]
            z = ae.encoder(x).view(-1, cfg.num_chunks, cfg.chunk_dim)
            out = vq(z, generator=gen)
            log_q = ae.decoder(out.quantized.reshape(z.shape[0], -1))
            kl = (p[idx] * (target[idx] - log_q)).sum(dim=1).mean()
            loss = kl + 0.25 * out.commit_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        ae.eval()
        self._encoder = ae.encoder
        self._decoder = ae.decoder.half().float()  # what the archive stores
        self._codebooks = vq.codebooks.detach().clone().half()

    def _set_prior(self, log_prior: torch.Tensor) -> None:
        self._log_prior = log_prior
        self._order, self._rank = prior_order(log_prior)

    def _set_grid(self) -> None:
        cfg = self.config
        assert cfg.tail_min is not None and cfg.tail_max is not None
        assert self._log_prior is not None
        grid = torch.linspace(
            cfg.tail_min, cfg.tail_max, 1 << cfg.tail_bits, dtype=torch.float64
        )
        lp = self._log_prior.double()
        self._grid = grid
        self._log_z = torch.stack([torch.logsumexp(a * lp, dim=0) for a in grid])

    # -- byte path ---------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> ranked ids, VQ codes and tail exponent indices."""
        return self._encode(logits)[0]

    def encode_support(
        self, logits: torch.Tensor
    ) -> tuple[EncodedBlock, torch.Tensor, torch.Tensor]:
        """:meth:`encode`, plus what :meth:`decode_support` will read from the block:
        (N, K) kept ids and (N, K + 1) decoded log-probs, without decoding it."""
        if len(self._levels()) != 1:
            raise ConfigError(
                "encode_support needs a vqae-sparse codec with k_levels=1"
            )
        block, ids, codes = self._encode(logits)
        return block, ids, self._decode_groups(codes)

    def _encode(
        self, logits: torch.Tensor
    ) -> tuple[EncodedBlock, torch.Tensor, torch.Tensor]:
        """The block, (N, K) top ids and (N, R, M) codes of (N, C) logits."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        if self._encoder is None:
            raise NotFittedError(
                "this vqae-sparse codec was loaded from an archive and has no encoder; "
                "fit a codec to encode new labels"
            )
        assert self._rank is not None and self._codebooks is not None
        assert self._grid is not None
        cfg, k = self.config, self.k
        levels = level_ks(k, cfg.k_levels)
        n = int(logits.shape[0])
        if n == 0:
            empty = EncodedBlock(num_labels=0, data=torch.zeros(0, dtype=torch.uint8))
            none = torch.zeros(0, k, dtype=torch.int64)
            return empty, none, torch.zeros(0, cfg.num_stages, cfg.num_chunks).long()
        books = self._codebooks.float()
        all_ids, all_codes, all_tail, all_level = [], [], [], []
        with torch.no_grad():
            for rows in logits.detach().split(ROW_BLOCK):
                log_p = torch.log_softmax(rows.float().cpu(), dim=1)
                top, ids = log_p.topk(k, dim=1)
                z = self._encoder(head_features(top))
                all_codes.append(
                    quantize_codes(z.view(-1, cfg.num_chunks, cfg.chunk_dim), books)
                )
                all_ids.append(ids)
                if len(levels) > 1:
                    assert cfg.rate_lambda is not None
                    which, tail = self._choose(
                        self._row_stats(log_p), top, ids, cfg.rate_lambda
                    )
                    all_level.append(which)
                    all_tail.append(tail)
                elif cfg.tail_bits:
                    all_tail.append(
                        self._oracle(self._row_stats(log_p), top, ids, k)[1]
                    )
        ids = torch.cat(all_ids)
        codes = torch.cat(all_codes)
        data = pack_block(
            BlockCoders(levels, self._id_coders, self._level_coder),
            ranks=self._rank[ids],
            level=torch.cat(all_level) if all_level else None,
            codes=codes,
            tails=torch.cat(all_tail) if cfg.tail_bits else None,
            tail_bits=cfg.tail_bits,
        )
        return EncodedBlock(num_labels=n, data=data), ids, codes

    def _parse(
        self, block: EncodedBlock, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block -> (N,) level, flat token ranks, (N, R, M) codes, (N,) tail index."""
        coders = BlockCoders(self._levels(), self._id_coders, self._level_coder)
        return parse_block(block, num_classes, self.config, coders)

    def decode_support(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block -> (N, K) kept token ids and (N, K + 1) decoded head + tail log-probs.

        For codecs that model the tail themselves (``vqae-rs``); needs one K
        level (``k_levels=1``) so every label keeps the same K ids.
        """
        num_classes = self._require_fitted("decode")
        assert self._order is not None
        if len(self._levels()) != 1:
            raise ConfigError(
                "decode_support needs a vqae-sparse codec with k_levels=1"
            )
        n = block.num_labels
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if n == 0:
            empty = torch.zeros(0, self.k, dtype=torch.int64, device=dev)
            return empty, torch.zeros(0, self.k + 1, device=dev)
        _, flat, codes, _ = self._parse(block, num_classes)
        ids = self._order.to(dev)[flat.to(dev)].reshape(n, self.k)
        return ids, self._decode_groups(codes.to(dev))

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Block -> (N, C) float32 log-probabilities (finite everywhere)."""
        num_classes = self._require_fitted("decode")
        assert self._order is not None
        levels = level_ks(self.k, self.config.k_levels)
        n = block.num_labels
        if n == 0:
            return torch.zeros(0, num_classes, device=device)
        level, flat, codes, which = self._parse(block, num_classes)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        order = self._order.to(dev)
        log_q = self._decode_groups(codes.to(dev))  # (n, K + 1)
        out = torch.empty(n, num_classes, device=dev)
        start = 0
        for c, kk in enumerate(levels):
            rows = torch.nonzero(level == c).reshape(-1)
            count = rows.numel() * kk
            ids = order[flat[start : start + count].to(dev)].reshape(-1, kk)
            start += count
            rows = rows.to(dev)
            for part in range(0, rows.numel(), ROW_BLOCK):
                r = rows[part : part + ROW_BLOCK]
                q = log_q[r]
                merged = torch.cat(
                    [q[:, :kk], torch.logsumexp(q[:, kk:], dim=1, keepdim=True)], 1
                )
                out[r] = self._densify(
                    merged, ids[part : part + ROW_BLOCK], which[r.cpu()].to(dev)
                )
        return out

    def _decode_groups(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, R, M) codes -> (n, K + 1) log-probs of the kept ids and the tail."""
        assert self._decoder is not None and self._codebooks is not None
        dev = codes.device
        books = self._codebooks.to(dev).float()
        chunk = torch.arange(self.config.num_chunks, device=dev)
        z = sum(books[r][chunk, codes[:, r]] for r in range(codes.shape[1]))
        assert isinstance(z, torch.Tensor)
        decoder = self._decoder.to(dev)
        with torch.no_grad():
            return decoder(z.reshape(codes.shape[0], -1))

    def _densify(
        self, log_q: torch.Tensor, ids: torch.Tensor, which: torch.Tensor
    ) -> torch.Tensor:
        assert self._grid is not None and self._log_z is not None
        dev = log_q.device
        wide = wide_dtype(dev)
        prior = self._log_prior_wide(dev)
        grid = self._grid.to(dev, wide)
        alpha = grid[which]  # (n,)
        kept = torch.exp(alpha[:, None] * prior[ids]).sum(dim=1)
        z = (self._log_z.to(dev, wide)[which].exp() - kept).clamp_min(
            torch.finfo(wide).tiny
        )
        offset = log_q[:, -1].to(wide).clamp_min(math.log(TAIL_FLOOR)) - z.log()
        out = alpha.float()[:, None] * prior.float()[None] + offset.float()[:, None]
        return out.scatter_(1, ids, log_q[:, :-1].float())

    def _log_prior_wide(self, device: torch.device | str | None = None) -> torch.Tensor:
        assert self._log_prior is not None
        return self._log_prior.to(device=device, dtype=wide_dtype(device))

    # -- what is shipped once ------------------------------------------------------
    def model_tensors(self) -> dict[str, torch.Tensor]:
        if self._decoder is None or self._log_prior is None:
            raise NotFittedError(
                "VQAESparseCodec.model_tensors called before fit(); call "
                "codec.fit(batches) first"
            )
        assert self._codebooks is not None
        d = self._decoder
        extra = {} if self._level_table is None else {"level_table": self._level_table}
        return extra | {
            "log_prior": self._log_prior,
            "dec1_weight": d.fc1.weight.detach().half(),
            "dec1_bias": d.fc1.bias.detach().half(),
            "dec2_weight": d.fc2.weight.detach().half(),
            "dec2_bias": d.fc2.bias.detach().half(),
            "codebooks": self._codebooks,
            "id_tables": self._id_tables,
        }

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> VQAESparseCodec:
        """Rebuild a decode-only codec (the encoder is not stored)."""
        codec, num_classes = cls._unfitted_from_stored(config)
        assert isinstance(codec, cls)
        cfg = codec.config
        if cfg.k is None or cfg.tail_min is None or cfg.tail_max is None:
            raise ArchiveFormatError(
                "stored vqae-sparse config needs a fitted k and tail range, got "
                f"k={cfg.k}, tail=({cfg.tail_min}, {cfg.tail_max})"
            )
        k = cfg.k
        latent = cfg.num_chunks * cfg.chunk_dim
        shapes = {
            "log_prior": ((num_classes,), torch.float16),
            "dec1_weight": ((cfg.hidden, latent), torch.float16),
            "dec1_bias": ((cfg.hidden,), torch.float16),
            "dec2_weight": ((k + 1, cfg.hidden), torch.float16),
            "dec2_bias": ((k + 1,), torch.float16),
            "codebooks": (
                (cfg.num_stages, cfg.num_chunks, CODEBOOK_SIZE, cfg.chunk_dim),
                torch.float16,
            ),
            "id_tables": (
                (num_slot_groups(k), rank_alphabet(num_classes)),
                torch.int16,
            ),
        }
        num_levels = len(level_ks(k, cfg.k_levels))
        if num_levels > 1:
            shapes["level_table"] = ((1, num_levels), torch.int16)
        check_model_tensors(cls.kind, shapes, tensors, exact=True)
        codec._set_prior(tensors["log_prior"].cpu())
        decoder = HeadDecoder(latent, cfg.hidden, k + 1, cfg.monotone)
        with torch.no_grad():
            decoder.fc1.weight.copy_(tensors["dec1_weight"].float())
            decoder.fc1.bias.copy_(tensors["dec1_bias"].float())
            decoder.fc2.weight.copy_(tensors["dec2_weight"].float())
            decoder.fc2.bias.copy_(tensors["dec2_bias"].float())
        codec._decoder = decoder.eval()
        codec._codebooks = tensors["codebooks"].cpu()
        codec.num_classes = num_classes
        level_table = tensors.get("level_table") if num_levels > 1 else None
        codec._set_coders(
            tensors["id_tables"].cpu(),
            level_table.cpu() if level_table is not None else None,
        )
        codec._set_grid()
        return codec

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> VQAESparseCodec:
        """Fix the all-in budget; :meth:`fit` picks the largest K that meets it.

        Raises UnreachableTargetError when even K = 1 at 16 bits per id cannot fit
        next to the stored tensors (the exact check happens in ``fit``).
        """
        return cls(budget_config(num_labels, num_classes, budget_bytes, options))
