"""TopKTailCodec: layout, the modelled tail, exact per-label decay, storage, rate control."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from labelzip.archive import ArchiveReader, save_archive
from labelzip.codecs.base import EncodedBlock
from labelzip.codecs.baseline.topk_tail import TopKTailCodec, TopKTailConfig
from labelzip.codecs.registry import CODEC_IDS, create_codec
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)
from labelzip.ops.bitpack import pack_bits
from labelzip.ops.metrics import kl_divergence

from .sizing import sized_codec


def lm_logits(num_labels: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(N, C) next-token-like logits: a Zipf-shaped shared prior plus per-label peaks.

    Every label mixes a global power law over a fixed random token order (the
    "unigram" structure a tail model can exploit) with per-label noise and a few
    boosted context tokens, like an LM's next-token distribution.
    """
    # one token order for every seed: fit and test sets share their "unigram" law
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_classes)
    decay = 0.8 + 0.6 * torch.rand(num_labels, 1, generator=g)
    logits = -decay * (rank.float() + 1.0).log()[None]
    logits = logits + 0.7 * torch.randn(num_labels, num_classes, generator=g)
    # context tokens: half among the 50 most frequent, half anywhere
    frequent = order[torch.randint(0, 50, (num_labels, 4), generator=g)]
    anywhere = torch.randint(0, num_classes, (num_labels, 4), generator=g)
    boost = torch.cat([frequent, anywhere], dim=1)
    amount = 4.0 + 3.0 * torch.rand(num_labels, 8, generator=g)
    return logits.scatter_add(1, boost, amount)


@pytest.fixture(scope="module")
def fit_logits() -> torch.Tensor:
    return lm_logits(384, 2000, seed=0)


@pytest.fixture(scope="module")
def test_logits() -> torch.Tensor:
    return lm_logits(128, 2000, seed=1)


def _codec(fit_logits: torch.Tensor, **options: Any) -> TopKTailCodec:
    codec = create_codec("topk-tail", **options).fit(
        [fit_logits[:200], fit_logits[200:]]
    )
    assert isinstance(codec, TopKTailCodec)
    return codec


def test_registered_with_the_next_id() -> None:
    assert CODEC_IDS["topk-tail"][0] == 5
    assert TopKTailCodec.codec_id == 5 and TopKTailCodec.kind == "topk-tail"


@pytest.mark.parametrize(("k", "bits"), [(10, 4), (7, 0), (3, 8)])
def test_block_bytes_formula(
    fit_logits: torch.Tensor, test_logits: torch.Tensor, k: int, bits: int
) -> None:
    codec = _codec(fit_logits, k=k, decay_bits=bits)
    for n in (1, 5, 128):
        block = codec.encode(test_logits[:n])
        # fp16 values, 11-bit ids (C = 2000), then the decay indices
        expected = 2 * n * k + math.ceil(n * k * 11 / 8) + math.ceil(n * bits / 8)
        assert block.nbytes == expected == codec.block_bytes(n)
    assert codec.expected_payload_bits() == 16 * k + 11 * k + bits
    assert codec.model_bytes() == 2 * 2000  # the fp16 log prior
    assert codec.encode(test_logits[:0]).nbytes == 0


def test_decoded_is_a_distribution_with_exact_kept_entries(
    fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    codec = _codec(fit_logits, k=10)
    decoded = codec.decode(codec.encode(test_logits), device="cpu")
    assert decoded.shape == (128, 2000) and decoded.dtype == torch.float32
    assert bool(torch.isfinite(decoded).all())
    log_p = torch.log_softmax(test_logits, dim=1)
    values, ids = log_p.topk(10, dim=1)
    assert torch.equal(decoded.gather(1, ids), values.half().float())
    # the tail holds exactly the mass the kept fp16 log-probs leave
    torch.testing.assert_close(
        decoded.logsumexp(dim=1), torch.zeros(128), atol=2e-5, rtol=0
    )
    tail = decoded.scatter(1, ids, float("-inf")).logsumexp(dim=1).exp()
    torch.testing.assert_close(
        tail, 1 - values.half().float().exp().sum(dim=1), atol=2e-5, rtol=0
    )
    # inside the tail, more frequent tokens (by the fitted prior) get more mass
    assert codec._rank is not None
    row = decoded[0].scatter(0, ids[0], float("nan"))
    by_rank = row[torch.argsort(codec._rank)]
    by_rank = by_rank[~by_rank.isnan()]
    assert bool((by_rank[1:] <= by_rank[:-1] + 1e-6).all())


def test_modelled_tail_beats_uniform_and_global_decay(
    fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    k = 16
    tail = _codec(fit_logits, k=k)
    one_decay = _codec(fit_logits, k=k, decay_bits=0)
    uniform = create_codec("topk", k=k, decoder="ms", temperature=1.0).fit(
        [test_logits]
    )

    def kl(codec: Any) -> float:
        decoded = codec.decode(codec.encode(test_logits))
        return float(kl_divergence(test_logits, decoded).mean())

    kl_tail, kl_one, kl_uniform = kl(tail), kl(one_decay), kl(uniform)
    assert kl_tail < 0.5 * kl_uniform  # measured: 0.021 vs 0.069
    assert kl_tail < kl_one  # the 4-bit per-label decay pays


def test_chosen_decay_is_the_best_on_the_grid(
    fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    codec = _codec(fit_logits, k=8, decay_bits=3)
    rows = test_logits[:12]
    block = codec.encode(rows)
    chosen = codec.decode(block)
    kls = []
    split = 2 * 12 * 8 + math.ceil(12 * 8 * 11 / 8)
    for index in range(8):  # force every grid value in turn
        forced = block.data.clone()
        forced[split:] = pack_bits(torch.full((12,), index), 3)
        decoded = codec.decode(EncodedBlock(12, forced))
        kls.append(kl_divergence(rows, decoded))
    best = torch.stack(kls, dim=1).min(dim=1).values
    torch.testing.assert_close(kl_divergence(rows, chosen), best, atol=1e-5, rtol=0)


def test_fit_resolves_the_grid_and_respects_fixed_bounds(
    fit_logits: torch.Tensor,
) -> None:
    codec = _codec(fit_logits, k=10)
    cfg = codec.config
    assert cfg.decay_min is not None and cfg.decay_max is not None
    assert 0.0 <= cfg.decay_min < cfg.decay_max <= 8.0
    assert cfg.rank_offset in {
        1.0 + round(10 * f) for f in (0, 0.5, 1, 2, 4, 8, 16, 32)
    }
    assert codec.decay_grid.numel() == 16
    fixed = _codec(
        fit_logits, k=10, decay_min=0.5, decay_max=2.0, decay_bits=2, rank_offset=3
    )
    assert fixed.decay_grid.tolist() == [0.5, 1.0, 1.5, 2.0]
    assert fixed.config.rank_offset == 3.0
    single = _codec(fit_logits, k=10, decay_bits=0)
    assert single.decay_grid.numel() == 1
    assert single.config.decay_min == single.config.decay_max


def test_same_input_same_bytes_and_stored_round_trip(
    fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    a, b = _codec(fit_logits, k=12), _codec(fit_logits, k=12)
    block = a.encode(test_logits)
    assert torch.equal(block.data, b.encode(test_logits).data)
    rebuilt = TopKTailCodec.from_stored(a.to_config(), a.model_tensors())
    assert torch.equal(rebuilt.decode(block), a.decode(block))
    assert rebuilt.to_config() == a.to_config()
    with pytest.raises(ArchiveFormatError, match="tensor .log_prior. should be"):
        TopKTailCodec.from_stored(a.to_config(), {})
    bad = {"log_prior": a.model_tensors()["log_prior"].float()}
    with pytest.raises(ArchiveFormatError, match="float16"):
        TopKTailCodec.from_stored(a.to_config(), bad)
    with pytest.raises(ArchiveFormatError, match="fitted decay range"):
        TopKTailCodec.from_stored(
            {**a.to_config(), "decay_min": None}, a.model_tensors()
        )
    with pytest.raises(ArchiveFormatError, match="must hold"):
        a.decode(EncodedBlock(block.num_labels, block.data[:-1]))


def test_archive_round_trip(
    tmp_path: Any, fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    codec = _codec(fit_logits, k=6)
    account = save_archive(tmp_path / "t.lz", codec, test_logits, chunk_size=50)
    with ArchiveReader(tmp_path / "t.lz") as reader:
        assert reader.codec_name == "topk-tail"
        assert torch.equal(
            reader.decode(slice(0, 128)), codec.decode(codec.encode(test_logits))
        )
        assert account.model_bytes == 4000
        assert reader.account().total_bytes == (tmp_path / "t.lz").stat().st_size


def test_vocabulary_scale_uses_16_bit_ids() -> None:
    logits = lm_logits(6, 49152, seed=3)
    codec = create_codec("topk-tail", k=20).fit([logits])
    block = codec.encode(logits)
    assert block.nbytes == 6 * 20 * 2 + 6 * 20 * 2 + 3
    ids = logits.topk(20, dim=1).indices
    decoded = codec.decode(block)
    kept = torch.log_softmax(logits, dim=1).gather(1, ids).half().float()
    assert torch.equal(decoded.gather(1, ids), kept)


def test_rate_control_counts_the_prior() -> None:
    n, c = 1000, 2000
    codec = sized_codec("topk-tail", num_labels=n, num_classes=c, ratio=100)
    assert isinstance(codec, TopKTailCodec)
    k = codec.config.k
    budget = n * c * 2 // 100

    def size(kk: int) -> int:
        return (
            2 * n * kk + math.ceil(n * kk * 11 / 8) + math.ceil(n * 4 / 8) + 2 + 2 * c
        )

    assert size(k) <= budget < size(k + 1)
    with pytest.raises(UnreachableTargetError, match="best reachable ratio"):
        sized_codec("topk-tail", num_labels=n, num_classes=c, ratio=2000)
    with pytest.raises(UnreachableTargetError, match="k=30 needs"):
        sized_codec("topk-tail", num_labels=n, num_classes=c, ratio=100, k=30)


def test_errors(fit_logits: torch.Tensor) -> None:
    codec = create_codec("topk-tail", k=5)
    with pytest.raises(NotFittedError, match="before fit"):
        codec.encode(fit_logits)
    with pytest.raises(NotFittedError, match="before fit"):
        codec.model_tensors()
    with pytest.raises(InputError, match="empty source"):
        codec.fit([])
    with pytest.raises(ConfigError, match="k=5000 exceeds the 2000 classes"):
        create_codec("topk-tail", k=5000).fit([fit_logits])
    with pytest.raises(ConfigError, match="decay_min 2.0 exceeds decay_max 1.0"):
        create_codec("topk-tail", decay_min=2.0, decay_max=1.0)
    with pytest.raises(ConfigError, match="decay_bits=0 stores one decay"):
        create_codec("topk-tail", decay_bits=0, decay_min=0.5, decay_max=1.0)
    fitted = _codec(fit_logits, k=5)
    with pytest.raises(InputError, match="2000 classes, logits have 10"):
        fitted.encode(torch.zeros(3, 10))
    assert TopKTailConfig().k == 32
