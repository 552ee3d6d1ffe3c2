"""VQAESampledCodec: exact head support, unbiased sampled tail, bytes, rate control."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from labelzip.archive import ArchiveReader, Layout, save_archive
from labelzip.codecs.base import EncodedBlock, SampledCodec
from labelzip.codecs.registry import CODEC_IDS, create_codec
from labelzip.codecs.vqae_lm.sampled import (
    SAMPLE_LEVELS,
    VQAESampledCodec,
    _tail_bits_by_level,
)
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec

from .sizing import sized_codec

C = 2000
FAST = {"steps": 150, "hidden": 32}


@pytest.fixture(scope="module")
def fit_logits(make_lm_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    return make_lm_logits(512, seed=0)


@pytest.fixture(scope="module")
def test_logits(make_lm_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    return make_lm_logits(96, seed=1)


@pytest.fixture(scope="module")
def codec(fit_logits: torch.Tensor) -> VQAESampledCodec:
    return _fit(fit_logits, k=16, sample_scale=64.0, residual_step=0.01)


def _fit(fit_logits: torch.Tensor, **options: Any) -> VQAESampledCodec:
    codec = create_codec("vqae-rs", **{**FAST, **options})
    codec.fit([fit_logits[:300], fit_logits[300:]])
    assert isinstance(codec, VQAESampledCodec)
    return codec


def test_registered_with_id_8() -> None:
    assert CODEC_IDS["vqae-rs"][0] == 8
    assert VQAESampledCodec.codec_id == 8 and VQAESampledCodec.kind == "vqae-rs"


def test_head_is_the_teacher_top_k_and_the_tail_is_sampled_off_it(
    codec: VQAESampledCodec, test_logits: torch.Tensor
) -> None:
    decoded = codec.decode(codec.encode(test_logits))
    assert decoded.shape == test_logits.shape and decoded.dtype == torch.float32
    total = torch.logsumexp(decoded.double(), dim=1)
    assert torch.allclose(total, torch.zeros_like(total), atol=1e-4)
    top = test_logits.topk(16, dim=1).indices
    assert bool(torch.isfinite(decoded.gather(1, top)).all())
    # the head is close to the teacher's (VQ + one dithered residual step)
    head = decoded.gather(1, top).exp()
    teacher = torch.softmax(test_logits, dim=1).gather(1, top)
    assert float((head - teacher).abs().max()) < 0.05
    finite = torch.isfinite(decoded).sum(dim=1)
    sampled = finite < C  # the others drew no samples: prior-shaped tail
    assert float(sampled.double().mean()) > 0.5
    assert bool((finite[sampled] > 16).all())


def test_sampled_tail_is_unbiased(
    codec: VQAESampledCodec, make_lm_logits: Callable[..., torch.Tensor]
) -> None:
    """Averaged over many draws of one label, the tail matches the teacher's shape."""
    row = make_lm_logits(1, seed=7)
    many = row.expand(4000, -1).contiguous()  # each row draws its own samples
    decoded = codec.decode(codec.encode(many)).double().exp()
    top = row.topk(16, dim=1).indices[0]
    p = torch.softmax(row.double(), dim=1)[0]
    tail = torch.ones(C, dtype=torch.bool)
    tail[top] = False
    # eight groups of tail tokens holding an equal share of the teacher's tail
    shape = p[tail] / p[tail].sum()
    order = shape.argsort(descending=True)
    group = torch.empty_like(order)
    group[order] = (shape[order].cumsum(0) * 8).long().clamp_max(7)
    mean_tail = decoded.mean(dim=0)[tail]
    share = torch.zeros(8, dtype=torch.float64).index_add_(0, group, mean_tail)
    assert float((share / share.sum() - 0.125).abs().max()) < 0.02
    # one label alone is a noisy estimate; the average is the teacher's shape
    one = torch.zeros(8, dtype=torch.float64).index_add_(0, group, decoded[0][tail])
    assert float((one / one.sum() - 0.125).abs().max()) > 0.025
    # the head too: the dithered residual removes the VQ's error on average
    mean_head = decoded.mean(dim=0)[top]
    vq_head = codec.head.decode_support(codec.head.encode(row))[1][0, :-1].exp()
    avg_err = float((mean_head - p[top]).abs().max())
    assert avg_err < 0.002 and avg_err < 0.25 * float((vq_head - p[top]).abs().max())


def test_a_peaked_label_spends_no_samples_and_decodes_finite(
    codec: VQAESampledCodec,
) -> None:
    peaked = torch.zeros(3, C)
    peaked[:, 5] = 60.0
    block = codec.encode(peaked)
    decoded = codec.decode(block)
    assert bool(torch.isfinite(decoded).all())  # no draws: prior-shaped tail
    total = torch.logsumexp(decoded.double(), dim=1)
    assert torch.allclose(total, torch.zeros_like(total), atol=1e-4)
    assert int(decoded.argmax(dim=1).eq(5).sum()) == 3


def test_same_input_same_bytes_and_stored_round_trip(
    codec: VQAESampledCodec, fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    block = codec.encode(test_logits)
    assert torch.equal(block.data, codec.encode(test_logits).data)
    again = _fit(fit_logits, k=16, sample_scale=64.0, residual_step=0.01)
    assert torch.equal(again.encode(test_logits).data, block.data)
    stored = VQAESampledCodec.from_stored(codec.to_config(), codec.model_tensors())
    assert torch.equal(stored.decode(block), codec.decode(block))
    with pytest.raises(NotFittedError, match="no encoder"):
        stored.encode(test_logits)


def test_block_layout_and_model_bytes(
    codec: VQAESampledCodec, test_logits: torch.Tensor
) -> None:
    assert codec._head is not None
    block = codec.encode(test_logits[:7])
    head = codec._head.encode(test_logits[:7])
    length = int(block.data[:4].clone().view(torch.int32)[0])
    assert length == head.nbytes and torch.equal(block.data[4 : 4 + length], head.data)
    levels = sum(1 for s in SAMPLE_LEVELS if s <= codec.config.max_samples)
    residual = 5 * 63  # slot groups 0|1-2|3-6|7-14|15 x steps -31..31
    assert codec.model_bytes() == codec._head.model_bytes() + 2 * (
        levels + 11 + residual
    )
    assert codec.model_bytes() == VQAESampledCodec.model_bytes_for(codec.config, 16, C)
    with pytest.raises(ArchiveFormatError, match="raw tail bytes"):
        codec.decode(EncodedBlock(num_labels=7, data=block.data[:-1]))
    with pytest.raises(ArchiveFormatError):
        codec.decode(EncodedBlock(num_labels=6, data=block.data))
    with pytest.raises(ArchiveFormatError, match="too short"):
        codec.decode(EncodedBlock(num_labels=7, data=block.data[:2]))


def test_tail_bit_estimate_counts_one_length_field_per_label() -> None:
    ranks = torch.tensor([[3, 3, 9, 3]])  # S=4: 2 distinct ids
    levels = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    widths = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    bits = _tail_bits_by_level(ranks, levels, widths, alphabet=11)
    assert float(bits[0, 0]) == 0.0
    # level 4: two ids (bucket cost + raw bits), d - 1 once (2 bits), one count (2)
    ids_only = _tail_bits_by_level(ranks, levels, torch.zeros(3).double(), 11)
    assert float(bits[0, 2] - ids_only[0, 2]) == pytest.approx(4.0)


def test_archive_round_trip(
    tmp_path: Any, codec: VQAESampledCodec, test_logits: torch.Tensor
) -> None:
    account = save_archive(tmp_path / "t.lz", codec, test_logits, chunk_size=40)
    with ArchiveReader(tmp_path / "t.lz") as reader:
        assert reader.codec_name == "vqae-rs"
        expected = torch.cat(
            [codec.decode(codec.encode(x)) for x in test_logits.split(40)]
        )
        assert torch.equal(reader.decode(slice(0, 96)), expected)
        assert reader.account().total_bytes == (tmp_path / "t.lz").stat().st_size
    assert account.model_bytes == codec.model_bytes()


def test_rate_control_meets_the_target_and_spends_it(
    fit_logits: torch.Tensor,
) -> None:
    n = 512
    chosen = {}
    for ratio in (20.0, 60.0):
        codec = sized_codec("vqae-rs", num_labels=n, num_classes=C, ratio=ratio, **FAST)
        assert isinstance(codec, VQAESampledCodec)
        codec.fit([fit_logits], num_labels=n)
        payload = sum(codec.encode(x).nbytes for x in fit_logits.split(256))
        total = payload + codec.model_bytes()
        budget = n * C * 2 / ratio
        assert 0.8 * budget < total <= budget
        assert codec.config.sample_scale is not None
        chosen[ratio] = (codec.config.k, codec.config.sample_scale)
    assert chosen[20.0] != chosen[60.0]


def test_archive_at_a_target_ratio_meets_it(
    tmp_path: Any, fit_logits: torch.Tensor
) -> None:
    layout = Layout(("sample",), (512,))
    codec = fit_codec(
        "vqae-rs",
        [fit_logits],
        FAST,
        target=ArchiveTarget(RateGoal(ratio=30), layout, C),
    )
    save_archive(tmp_path / "r.lz", codec, fit_logits, chunk_size=128)
    size = (tmp_path / "r.lz").stat().st_size
    assert 0.8 * 512 * C * 2 / 30 < size <= 512 * C * 2 / 30


def test_errors(fit_logits: torch.Tensor, codec: VQAESampledCodec) -> None:
    fresh = create_codec("vqae-rs", k=4, sample_scale=8.0)
    with pytest.raises(NotFittedError, match="before fit"):
        fresh.encode(fit_logits)
    with pytest.raises(NotFittedError, match="before fit"):
        fresh.model_tensors()
    with pytest.raises(InputError, match="empty source"):
        create_codec("vqae-rs", k=4, sample_scale=8.0).fit([])
    with pytest.raises(ConfigError, match="budget_bytes"):
        create_codec("vqae-rs", **FAST).fit([fit_logits])
    with pytest.raises(ConfigError, match="leave >= 2"):
        create_codec("vqae-rs", k=9, sample_scale=1.0, **FAST).fit([fit_logits[:, :10]])
    with pytest.raises(InputError, match="fitted for 2000 classes"):
        codec.encode(torch.zeros(2, 10))
    with pytest.raises(UnreachableTargetError, match="best reachable ratio"):
        sized_codec("vqae-rs", num_labels=100, num_classes=C, ratio=2000)
    with pytest.raises(ConfigError, match="invalid vqae-rs"):
        create_codec("vqae-rs", max_samples=0)
    config = codec.to_config()
    config.pop("head")
    with pytest.raises(ArchiveFormatError, match="head config"):
        VQAESampledCodec.from_stored(config, codec.model_tensors())
    tensors = dict(codec.model_tensors())
    tensors.pop("tail_rank_table")
    with pytest.raises(ArchiveFormatError, match="tail_rank_table"):
        VQAESampledCodec.from_stored(codec.to_config(), tensors)


def test_without_the_head_residual_and_archives_from_before_it(
    fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    plain = _fit(fit_logits, k=16, sample_scale=64.0)  # default: no residual
    assert "residual_table" not in plain.model_tensors()
    block = plain.encode(test_logits)
    # the VQ head alone: every label decodes its head exactly as the VQ says
    ids, log_q = plain.head.decode_support(plain.head.encode(test_logits))
    assert torch.equal(plain.decode(block).gather(1, ids), log_q[:, :-1].float())
    config = plain.to_config()
    config.pop("residual_step")  # stored before the field existed: no residual
    stored = VQAESampledCodec.from_stored(config, plain.model_tensors())
    assert torch.equal(stored.decode(block), plain.decode(block))


@pytest.mark.parametrize("residual", [False, True])
def test_expected_logits_are_the_mean_of_the_draws(
    fit_logits: torch.Tensor,
    codec: VQAESampledCodec,
    make_lm_logits: Callable[..., torch.Tensor],
    residual: bool,
) -> None:
    """The label auto scores a sampled codec on: the mean of many decoded draws."""
    used = codec if residual else _fit(fit_logits, k=16, sample_scale=64.0)
    assert isinstance(used, SampledCodec) and used.sampling_temperature == 1.0
    rows = make_lm_logits(3, seed=11)
    peaked = torch.zeros(1, C)
    peaked[0, 5] = 60.0  # draws nothing: its tail is the unigram prior's
    rows = torch.cat([rows, peaked])
    expected = torch.softmax(used.expected_logits(rows).double(), dim=1)
    assert torch.allclose(expected.sum(dim=1), torch.ones(4, dtype=torch.float64))
    many = rows.repeat_interleave(3000, dim=0)  # each row draws its own samples
    mean = torch.softmax(used.decode(used.encode(many)).double(), dim=1)
    mean = mean.reshape(4, 3000, C).mean(dim=1)
    # total variation: the mean of the draws is the expected label, a single
    # draw is not (and neither is the teacher itself, without the residual)
    tv = 0.5 * (mean - expected).abs().sum(dim=1)
    one = 0.5 * (torch.softmax(used.decode(used.encode(rows)).double(), 1) - expected)
    assert float(tv.max()) < 0.02, tv
    assert float(one.abs().sum(dim=1)[:3].min()) > 2 * float(tv.max())
    teacher = torch.softmax(rows.double(), dim=1)
    head_error = 0.5 * (teacher - expected).abs().sum(dim=1)[:3]
    if residual:  # the dithered head is unbiased too: the mean is the teacher
        assert float(head_error.max()) < 0.02
    else:  # the VQ head's error stays in the mean
        assert float(head_error.min()) > float(tv.max())
