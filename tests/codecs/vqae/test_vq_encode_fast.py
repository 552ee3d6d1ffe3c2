"""The fast VQAE encode path writes the same bytes as the reference one.

Two checks: block hashes recorded with the code before the fast path
(``GOLDEN``: fit and encode with a fixed seed on one thread), and the fast
pieces against reference implementations kept here (full stable sort,
one masked log-sum-exp per slot, the per-stage search) on inputs built to
hit their edge cases: ties at the K-th value, constant rows, values on a
level boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from labelzip.codecs.vqae.codec import VQAECodec, VQAEConfig
from labelzip.codecs.vqae.head import HeadQuantizer, head_values, outside_logsumexp
from labelzip.codecs.vqae.idprior import IdPrior
from labelzip.codecs.vqae.quantizer import nearest_codewords, quantize_residual
from labelzip.codecs.vqae.train import reservoir_sample, top_ids, top_ids_and_next
from labelzip.ops.reservoir import Reservoir

BASE: dict[str, Any] = dict(
    hidden_dim=32, encoder_dim=64, steps=40, batch_size=128, learning_rate=1e-2
)
CONFIGS: dict[str, dict[str, Any]] = {
    "values_entropy": dict(
        num_ids=8, value_bits=5, num_chunks=12, chunk_dim=2, codebook_size=16
    ),
    "stages_fixed": dict(
        num_ids=4,
        value_bits=0,
        num_chunks=6,
        chunk_dim=4,
        codebook_size=64,
        num_stages=2,
        entropy_coding="off",
    ),
    "ranked": dict(
        num_ids=6,
        value_bits=4,
        num_chunks=10,
        chunk_dim=2,
        codebook_size=16,
        rank_ids=True,
    ),
    # K + 1 = 17 top-id candidates: row_topk's block path at C = 1000.
    "many_ids": dict(
        num_ids=16, value_bits=5, num_chunks=12, chunk_dim=2, codebook_size=16
    ),
    "no_ids": dict(
        num_ids=0,
        value_bits=0,
        num_chunks=4,
        chunk_dim=8,
        codebook_size=256,
        num_stages=3,
    ),
}

# (block bytes, sha256) per config and input, written by the encoder before the
# fast path (commit 82e0f00; "many_ids": before row_topk, commit 4870104) with
# this file's fit and inputs.
GOLDEN = {
    "values_entropy/float32": (
        59972,
        "9164564e0a174f09111bf349828fc07200760f3e5feae1fbe1d2b5a8f172e680",
    ),
    "values_entropy/float16": (
        59972,
        "d92f2e04525adf860c25776c436d62700231867fd4d6e9698bc5ff0c30ab595b",
    ),
    "values_entropy/ties": (
        60764,
        "509a1aa4f002729993cfd7da0909738dc5505a9e773f6dd4c9a4ac35fc437368",
    ),
    "stages_fixed/float32": (
        42000,
        "5e71298acad465ac8df3c8fe97f9ef45098a3460c6756fd555bef36914eb650d",
    ),
    "stages_fixed/float16": (
        42000,
        "a8cbe46af47f155f3f13ae25adcde00e2631b2af575d6971ae7686cf63ff0419",
    ),
    "stages_fixed/ties": (
        42000,
        "9459ad1925e09c5e75f761617a52ab43491051ad46ff274457639ac4fa50e97e",
    ),
    "ranked/float32": (
        44148,
        "e60e9dc9eff5b1ce628a060277066172cf7c4f617f27742e547616801d3a9adc",
    ),
    "ranked/float16": (
        44148,
        "dc3e58969d31f2c80e55acd8b9ca1eaab8e3116e4e1d0d234d00f7c93b7ed952",
    ),
    "ranked/ties": (
        44644,
        "effa563aa59ac08d96a092f93a68a811bf4fa0e470a03b6c5c3d471a4d6499f1",
    ),
    "many_ids/float32": (
        102444,
        "a694e508a943519073389e818790005294606b1329995f3bb15962d5ee423895",
    ),
    "many_ids/float16": (
        102444,
        "17787fd58d68708456b43d8bf8a0c665a91bafe0fa4fc97a67e0f9945e307ae2",
    ),
    "many_ids/ties": (
        105124,
        "231463d8ac103d5122ea0fda360b3c7d8945a57b5efff92d9944433b6d120311",
    ),
    "no_ids/float32": (
        19260,
        "f30373490be884888526cb27cde078a6c194830a5b13e70a3197de901a2dd447",
    ),
    "no_ids/float16": (
        19260,
        "0e12d323a1f0cb08d481a4f203012ba51c23a1fc58d8ea2237dc5c659f5720f8",
    ),
    "no_ids/ties": (
        19832,
        "00e01d93f003b31bbd9b0736c43d4f5d1c5788dbbf3050a0761dbeea1ecd19ae",
    ),
}


@pytest.fixture
def inputs(make_logits: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
    x = make_logits(3000, 1000, seed=5)
    ties = (x * 2).round() / 2  # many equal logits, also at the K-th value
    ties[:50] = 1.0  # constant rows: every class ties
    return {"float32": x, "float16": x.half(), "ties": ties}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_blocks_match_the_bytes_written_before_the_fast_path(
    name: str,
    inputs: dict[str, torch.Tensor],
    skip_if_other_floats: Callable[[bool, str], None],
) -> None:
    codec = VQAECodec(VQAEConfig(**BASE, **CONFIGS[name]))
    codec.fit(list(inputs["float32"][:2000].split(500)), num_labels=10**6)
    for key, logits in inputs.items():
        data = codec.encode(logits).data
        digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()
        same = (int(data.numel()), digest) == GOLDEN[f"{name}/{key}"]
        skip_if_other_floats(same, "the bytes of a fitted codec's encode")
        assert (int(data.numel()), digest) == GOLDEN[f"{name}/{key}"], key


def _reference_top_ids(logits: torch.Tensor, num_ids: int) -> torch.Tensor:
    return torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :num_ids]


@pytest.mark.parametrize("num_ids", [1, 3, 8, 14, 16, 20])
def test_top_ids_equal_the_stable_full_sort(
    num_ids: int, inputs: dict[str, torch.Tensor]
) -> None:
    g = torch.Generator().manual_seed(num_ids)
    small = torch.randint(-3, 4, (500, 40), generator=g).float()  # ties everywhere
    zeros = torch.zeros(4, 40)
    zeros[:, ::2] = -0.0  # -0.0 and 0.0 are equal logits
    for logits in (*inputs.values(), small, zeros, small[:, : num_ids - 1 or 1]):
        logits = logits.float()
        k = min(num_ids, logits.shape[1])
        assert torch.equal(top_ids(logits, k), _reference_top_ids(logits, k))


@pytest.mark.parametrize("bits", [2, 5, 8, 12])
def test_head_levels_equal_the_per_slot_reference(
    bits: int, inputs: dict[str, torch.Tensor]
) -> None:
    logits = torch.cat(
        [inputs["float32"], inputs["ties"], 40 * inputs["float32"][:300]]
    )
    ids, following = top_ids_and_next(logits, 6)
    assert torch.equal(ids, _reference_top_ids(logits, 6))
    head = HeadQuantizer.fit(logits[:1000], ids[:1000], bits)
    expected = head.quantize(head_values(logits, ids))
    assert torch.equal(head.quantize_logits(logits, ids), expected)
    assert torch.equal(head.quantize_logits(logits, ids, following), expected)


@pytest.mark.parametrize("num_ids", [1, 6, 16])
def test_outside_logsumexp_given_the_next_logit_is_torchs_bit_for_bit(
    num_ids: int, inputs: dict[str, torch.Tensor]
) -> None:
    g = torch.Generator().manual_seed(num_ids)
    wide = 30 * torch.randn(500, 1000, generator=g)
    for logits in (*inputs.values(), wide):
        logits = logits.float()
        ids, following = top_ids_and_next(logits, num_ids)
        masked = logits.scatter(1, ids, float("-inf"))
        assert following is not None
        assert torch.equal(following, masked.amax(dim=1))
        expected = torch.logsumexp(masked, dim=1)
        assert torch.equal(outside_logsumexp(logits, ids, following), expected)
        assert torch.equal(outside_logsumexp(logits, ids), expected)
    row = torch.tensor([[2.0, -torch.inf, -torch.inf]])  # nothing outside is finite
    ids = torch.tensor([[0]])
    nothing = outside_logsumexp(row, ids, torch.tensor([-torch.inf]))
    assert torch.equal(nothing, torch.tensor([-torch.inf]))


def test_head_levels_on_exact_level_boundaries() -> None:
    # Unit level steps from 0: values k + 0.5 sit on the rounding boundary
    # (round half to even), with the slot's rest mass a single exact logit.
    head = HeadQuantizer([0.0, 0.0], [31.0, 31.0], 5)
    values = torch.arange(-1.0, 33.0, 0.25)
    logits = torch.full((values.numel(), 3), -1.0)
    logits[:, 0] = values - 1.0
    logits[:, 1] = -40.0
    ids = torch.tensor([[0, 1]]).expand(values.numel(), -1)
    expected = head.quantize(head_values(logits, ids))
    assert torch.equal(head.quantize_logits(logits, ids), expected)
    assert expected[:, 0].unique().numel() == 32  # every level is reached


def test_quantize_residual_equals_the_per_stage_loop() -> None:
    g = torch.Generator().manual_seed(3)
    latent = torch.randn(777, 5, 3, generator=g)
    books = torch.randn(3, 5, 32, 3, generator=g).half().float()
    books[1, :, 7] = books[1, :, 3]  # duplicate codewords: the lower id wins
    chunk = torch.arange(5)
    residual, expected = latent, []
    for stage in range(3):
        idx = nearest_codewords(residual, books[stage])
        residual = residual - books[stage][chunk, idx]
        expected.append(idx)
    assert torch.equal(quantize_residual(latent, books), torch.stack(expected, dim=1))


def _reference_ranks(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    own = scores.gather(1, ids)
    classes = torch.arange(scores.shape[1])
    ranks = torch.empty_like(ids)
    for slot in range(ids.shape[1]):
        value, cls = own[:, slot : slot + 1], ids[:, slot : slot + 1]
        ahead = (scores > value) | ((scores == value) & (classes < cls))
        prev_v, prev_c = own[:, :slot], ids[:, :slot]
        earlier = (prev_v > value) | ((prev_v == value) & (prev_c < cls))
        ranks[:, slot] = ahead.sum(dim=1) - earlier.sum(dim=1)
    return ranks


def test_id_prior_ranks_equal_the_pairwise_reference() -> None:
    g = torch.Generator().manual_seed(4)
    codebooks = torch.randint(-20, 21, (2, 6, 16, 2), generator=g).to(torch.int8)
    weight = torch.randint(-3, 4, (300, 12), generator=g).to(torch.int8)  # many ties
    bias = torch.randint(-50, 51, (300,), generator=g).to(torch.int32)
    prior = IdPrior(codebooks, weight, bias)
    codes = torch.randint(0, 16, (2000, 12), generator=g)
    scores = prior.scores(codes)
    ids = torch.stack([torch.randperm(300, generator=g)[:7] for _ in range(2000)])
    ranks = prior.ranks(scores, ids)
    assert torch.equal(ranks, _reference_ranks(scores, ids))
    assert torch.equal(prior.ids(scores, ranks), ids)


def test_reservoir_samples_match_the_ones_before_widening_only_kept_rows() -> None:
    # Row i holds i, so the hashes pin which rows were kept; batches alternate
    # dtypes so the widening of the kept rows is exercised. Hashes written by
    # the code before the change (commit 82e0f00).
    x = torch.arange(5000, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    x[:, 1] = 0.5
    batches = [b.half() if i % 2 else b for i, b in enumerate(x.split(333))]
    kept, seen = reservoir_sample(batches, 100, torch.Generator().manual_seed(3))
    assert seen == 5000 and kept.dtype == torch.float32
    assert hashlib.sha256(kept.numpy().tobytes()).hexdigest() == (
        "3030bcc4f64a4f6c3349d5c3fbb437982ebcf18544052e09954ea7642ac3b48f"
    )
    reservoir = Reservoir(100, 3, seed=3, dtype=torch.float16)
    for i, batch in enumerate(x.split(333)):
        reservoir.add(batch.double() if i % 2 else batch)
    assert hashlib.sha256(reservoir.rows().numpy().tobytes()).hexdigest() == (
        "8544465881c7d4a4c73377c1be712ab93f319bbff02ff5ac431faafb2dd04c98"
    )
