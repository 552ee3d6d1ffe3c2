"""RSKDCodec: sampled counts, unbiasedness, seeded streams, layout, rate control."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from labelzip.codecs.base import EncodedBlock, SampledCodec
from labelzip.codecs.baseline.rskd import RSKDCodec, RSKDConfig
from labelzip.codecs.registry import create_codec
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)

from .sizing import sized_codec


def _codec(logits: torch.Tensor, **options: Any) -> RSKDCodec:
    codec = create_codec("rskd", **options).fit([logits[:4]])
    assert isinstance(codec, RSKDCodec)
    return codec


def _counts(
    decoded: torch.Tensor, temperature: float, num_samples: int
) -> torch.Tensor:
    return torch.softmax(decoded / temperature, dim=1) * num_samples


@pytest.mark.parametrize(
    ("num_samples", "temperature"), [(12, 1.0), (7, 4.0), (64, 2.0)]
)
def test_counts_sum_to_s_and_decode_exactly(
    teacher_logits: torch.Tensor, num_samples: int, temperature: float
) -> None:
    codec = _codec(teacher_logits, num_samples=num_samples, temperature=temperature)
    decoded = codec.decode(codec.encode(teacher_logits), device="cpu")
    assert decoded.shape == (512, 1000) and decoded.dtype == torch.float32
    counts = _counts(decoded, temperature, num_samples)
    rounded = counts.round()
    assert torch.allclose(counts, rounded, atol=1e-4)  # q = counts / S exactly
    assert bool((rounded.sum(dim=1) == num_samples).all())
    support = torch.isfinite(decoded)
    assert bool((rounded[support] >= 1).all()) and bool((rounded[~support] == 0).all())
    expected = temperature * torch.log(rounded[support] / num_samples)
    assert torch.allclose(decoded[support], expected)


def test_block_bytes_formula(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, num_samples=12)
    for n in (1, 5, 512):
        block = codec.encode(teacher_logits[:n])
        distinct = int(torch.isfinite(codec.decode(block)).sum())
        w, b = 4, 10  # ceil(log2 12), ceil(log2 1000)
        expected = (
            math.ceil(n * w / 8)
            + math.ceil(distinct * b / 8)
            + math.ceil((distinct - n) * w / 8)
        )
        assert block.nbytes == expected
    assert codec.model_bytes() == 0 and codec.expected_payload_bits() is None
    assert codec.worst_case_payload_bits() == 4 + 12 * 10 + 11 * 4


def test_single_sample_stores_only_ids(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, num_samples=1)
    block = codec.encode(teacher_logits)
    assert block.nbytes == math.ceil(512 * 10 / 8)
    decoded = codec.decode(block)
    assert bool((torch.isfinite(decoded).sum(dim=1) == 1).all())
    # a peaked teacher: the single draw is mostly the argmax
    agree = (decoded.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean()
    assert float(agree) > 0.6


def test_unbiased_estimate_of_tempered_teacher(
    teacher_logits_c10: torch.Tensor,
) -> None:
    repeats, num_samples, temperature = 4000, 8, 2.0
    row = teacher_logits_c10[3]
    codec = _codec(teacher_logits_c10, num_samples=num_samples, temperature=temperature)
    decoded = codec.decode(codec.encode(row.expand(repeats, -1).contiguous()))
    q_mean = torch.softmax(decoded / temperature, dim=1).double().mean(dim=0)
    p = torch.softmax(row.double() / temperature, dim=0)
    sigma = (p * (1 - p) / (repeats * num_samples)).sqrt()
    assert bool(((q_mean - p).abs() <= 5 * sigma + 1e-9).all()), (q_mean - p) / sigma
    # rows of one batch draw independently: not all identical
    assert len({tuple(r) for r in decoded[:50].tolist()}) > 10


def test_zero_probability_classes_are_never_drawn() -> None:
    logits = torch.tensor([[0.0, -200.0, 0.0, -200.0]]).expand(500, -1).contiguous()
    codec = _codec(logits, num_samples=16)
    decoded = codec.decode(codec.encode(logits))
    assert bool(torch.isneginf(decoded[:, [1, 3]]).all())


def test_streams_are_seeded_and_keyed(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, num_samples=12, seed=7)
    first = codec.encode(teacher_logits).data
    assert torch.equal(
        first, codec.encode(teacher_logits).data
    )  # same batch, same bytes
    assert torch.equal(
        first,
        _codec(teacher_logits, num_samples=12, seed=7).encode(teacher_logits).data,
    )
    assert not torch.equal(
        first,
        _codec(teacher_logits, num_samples=12, seed=8).encode(teacher_logits).data,
    )
    # a block with other content draws from another stream
    half_a = codec.decode(codec.encode(teacher_logits[:256]))
    half_b = codec.decode(codec.encode(teacher_logits[256:]))
    shifted = codec.decode(
        codec.encode(torch.cat([teacher_logits[256:], teacher_logits[:256]]))
    )
    assert not torch.equal(torch.cat([half_b, half_a]), shifted)
    # an explicit offset keys the stream on position instead of content
    by_offset = codec.encode(teacher_logits, offset=4096).data
    assert torch.equal(by_offset, codec.encode(teacher_logits, offset=4096).data)
    assert not torch.equal(by_offset, codec.encode(teacher_logits, offset=0).data)
    assert not torch.equal(by_offset, first)


def test_stored_config_rebuilds_equal_codec(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, num_samples=20, temperature=3.0, seed=5)
    config = codec.to_config()
    assert config["num_classes"] == 1000 and config["num_samples"] == 20
    rebuilt = RSKDCodec.from_stored(config, codec.model_tensors())
    block = codec.encode(teacher_logits)
    assert torch.equal(rebuilt.decode(block), codec.decode(block))
    assert torch.equal(rebuilt.encode(teacher_logits).data, block.data)
    with pytest.raises(ArchiveFormatError, match="num_classes"):
        RSKDCodec.from_stored({"kind": "rskd"}, {})
    with pytest.raises(ArchiveFormatError, match="no resolved num_samples"):
        RSKDCodec.from_stored(
            {
                "kind": "rskd",
                "num_samples": None,
                "target_bits_per_label": 50.0,
                "num_classes": 10,
            },
            {},
        )


def test_errors(teacher_logits: torch.Tensor) -> None:
    with pytest.raises(NotFittedError, match=r"RSKDCodec.encode called before fit\(\)"):
        RSKDCodec().encode(teacher_logits)
    with pytest.raises(NotFittedError, match="decode"):
        RSKDCodec().decode(EncodedBlock(1, torch.zeros(2, dtype=torch.uint8)))
    with pytest.raises(
        ConfigError, match="num_samples=None needs target_bits_per_label"
    ):
        create_codec("rskd", num_samples=None)
    with pytest.raises(
        ConfigError, match="num_samples: Input should be less than or equal to 4096"
    ):
        create_codec("rskd", num_samples=5000)
    with pytest.raises(InputError, match="empty source"):
        RSKDCodec().fit([])
    codec = _codec(teacher_logits)
    bad = teacher_logits[:2].clone()
    bad[0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or Inf in 1 of 2 rows"):
        codec.encode(bad)
    with pytest.raises(InputError, match="must have shape"):
        codec.encode(teacher_logits.reshape(-1))
    with pytest.raises(InputError, match="fitted for 1000 classes, logits have 10"):
        codec.encode(teacher_logits[:, :10])
    block = codec.encode(teacher_logits[:8])
    with pytest.raises(ArchiveFormatError, match="rskd block of 8 labels"):
        codec.decode(EncodedBlock(8, block.data[:-1]))
    with pytest.raises(ArchiveFormatError, match="header bytes"):
        codec.decode(EncodedBlock(8, block.data[:2]))


def test_for_target_worst_case_always_fits(teacher_logits: torch.Tensor) -> None:
    codec = sized_codec(
        "rskd", num_labels=512, num_classes=1000, ratio=40, sizing="worst_case"
    )
    assert isinstance(codec, RSKDCodec)
    # 400 bits per label minus padding: S distinct ids cost 5 + 10 S + 5 (S - 1) bits
    assert codec.config.num_samples == 26
    codec.fit([teacher_logits])
    flat = torch.zeros(512, 1000)  # uniform teacher: (nearly) all draws distinct
    assert codec.encode(flat).nbytes <= 512 * 2000 // 40
    assert codec.encode(teacher_logits).nbytes <= 512 * 2000 // 40
    fixed = RSKDCodec.for_target(
        num_labels=512, num_classes=1000, budget_bytes=25_600, num_samples=8
    )
    assert fixed.config.num_samples == 8
    with pytest.raises(
        UnreachableTargetError, match=r"at least 405 bits per label .* 39\.50x"
    ):
        RSKDCodec.for_target(
            num_labels=512, num_classes=1000, budget_bytes=25_600, num_samples=27
        )


@pytest.mark.parametrize("sizing", [{}, {"sizing": "measured"}])
def test_for_target_measured_sizing_meets_mean_budget(
    teacher_logits: torch.Tensor, sizing: dict
) -> None:
    """Rate control sizes S on the data by default: the budget is spent, not 1/5 of it
    (worst-case sizing gave S=26 and a 5x smaller payload on these labels)."""
    budget = 512 * 2000 // 40
    codec = sized_codec("rskd", num_labels=512, num_classes=1000, ratio=40, **sizing)
    assert isinstance(codec, RSKDCodec) and codec.config.num_samples is None
    codec.fit([teacher_logits[:256], teacher_logits[256:]], num_labels=512)
    s = codec.config.num_samples
    assert s is not None and s > 26  # peaked labels repeat ids: more samples fit
    nbytes = codec.encode(teacher_logits).nbytes
    assert 0.95 * budget <= nbytes <= budget
    assert RSKDCodec.from_stored(codec.to_config(), {}).config.num_samples == s


def test_for_target_unreachable() -> None:
    with pytest.raises(
        UnreachableTargetError,
        match=r"at least 10 bits per label .* best reachable ratio is 1596\.17x",
    ):
        RSKDCodec.for_target(num_labels=1000, num_classes=1000, budget_bytes=1000)
    with pytest.raises(UnreachableTargetError, match="at least 10 bits"):
        RSKDCodec.for_target(
            num_labels=1000, num_classes=1000, budget_bytes=1000, sizing="measured"
        )
    codec = RSKDCodec(RSKDConfig(num_samples=None, target_bits_per_label=5.0))
    with pytest.raises(UnreachableTargetError, match="at least 10 bits per label"):
        codec.fit([torch.zeros(4, 1000)])


def test_empty_block(teacher_logits: torch.Tensor) -> None:
    for s in (1, 12):
        codec = _codec(teacher_logits, num_samples=s)
        block = codec.encode(teacher_logits[:0])
        assert block.nbytes == 0 and codec.decode(block).shape == (0, 1000)


def test_measured_sizing_samples_the_whole_stream() -> None:
    # A stream sorted from peaked to flat labels: sizing on its first labels alone
    # would choose an S that overshoots the budget on the flat ones.
    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(3000, 1000, generator=gen)
    peaked[:, 0] += 14.0
    flat = 0.3 * torch.randn(3000, 1000, generator=gen)
    stream = torch.cat([peaked, flat])
    num_labels = stream.shape[0]
    codec = sized_codec(
        "rskd", num_labels=num_labels, num_classes=1000, ratio=40, sizing="measured"
    )
    codec.fit(lambda: stream.split(1000), num_labels=num_labels)
    nbytes = sum(codec.encode(b).nbytes for b in stream.split(4096))
    assert nbytes <= 1.03 * num_labels * 2000 // 40


def test_measured_sizing_accepts_every_budget_for_target_accepts(
    teacher_logits_c10: torch.Tensor,
) -> None:
    # Budgets just over one 4-bit id per label (LPLD auto-prune lands there):
    # S=1 has an exact size, so fit must not refuse what for_target accepted.
    n = teacher_logits_c10.shape[0]
    for extra in (0, 1, 2):  # slack of the one block, then 4.0, 4.03, 4.06 bits
        codec = RSKDCodec.for_target(
            num_labels=n, num_classes=10, budget_bytes=n // 2 + 3 + extra
        )
        codec.fit([teacher_logits_c10], num_labels=n)
        assert codec.num_samples == 1
        assert codec.encode(teacher_logits_c10).nbytes == n // 2
    with pytest.raises(UnreachableTargetError, match="at least 4 bits"):
        RSKDCodec.for_target(num_labels=n, num_classes=10, budget_bytes=n // 2 + 2)
    codec = RSKDCodec(RSKDConfig(num_samples=None, target_bits_per_label=3.99))
    with pytest.raises(UnreachableTargetError, match="the target is 3.99"):
        codec.fit([teacher_logits_c10])


def test_expected_logits_are_the_tempered_teacher(
    teacher_logits_c10: torch.Tensor,
) -> None:
    """The mean of the draws (what auto scores RS-KD on) is p_T, as logits whose
    softmax at the sampling temperature is p_T; deterministic codecs have none."""
    codec = _codec(teacher_logits_c10, num_samples=4, temperature=2.0)
    assert isinstance(codec, SampledCodec) and codec.sampling_temperature == 2.0
    rows = teacher_logits_c10[:5]
    expected = torch.softmax(codec.expected_logits(rows) / 2.0, dim=1)
    assert torch.allclose(expected, torch.softmax(rows / 2.0, dim=1), atol=1e-6)
    repeats = 4000
    decoded = codec.decode(codec.encode(rows.repeat_interleave(repeats, dim=0)))
    mean = torch.softmax(decoded / 2.0, dim=1).reshape(5, repeats, -1).mean(dim=1)
    assert float((mean - expected).abs().max()) < 0.02
    assert not isinstance(create_codec("topk", k=2), SampledCodec)
    with pytest.raises(NotFittedError):
        RSKDCodec().expected_logits(rows)
