"""TopKCodec: kept ids and values, MR/MS/MRS decoders, layout, rate control."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from labelzip.codecs.base import EncodedBlock
from labelzip.codecs.baseline.topk import DEFAULT_MS_TEMPERATURE, TopKCodec, TopKConfig
from labelzip.codecs.registry import create_codec
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)

from .sizing import sized_codec


def _codec(logits: torch.Tensor, **options: Any) -> TopKCodec:
    codec = create_codec("topk", **options).fit([logits[:4]])
    assert isinstance(codec, TopKCodec)
    return codec


def _kept(decoded: torch.Tensor, k: int) -> torch.Tensor:
    return decoded.topk(k, dim=1).indices.sort(dim=1).values


def test_config_defaults_follow_the_decoder() -> None:
    assert TopKConfig().decoder == "ms" and not TopKConfig().relative
    assert TopKConfig().temperature == DEFAULT_MS_TEMPERATURE
    mr = TopKConfig(decoder="mr")
    assert mr.relative and mr.temperature == 1.0
    assert not TopKConfig(decoder="mrs", relative=False).relative
    with pytest.raises(ConfigError, match="relative=True needs decoder mr or mrs"):
        create_codec("topk", decoder="ms", relative=True)
    with pytest.raises(ConfigError, match="temperature=4.0 only applies to decoder ms"):
        create_codec("topk", decoder="mr", temperature=4.0)


@pytest.mark.parametrize(
    ("options", "value_bytes"),
    [
        ({"decoder": "ms"}, 10 * 2),
        ({"decoder": "mr", "relative": False}, 10 * 2),
        ({"decoder": "mr"}, 9 * 2),  # relative: the top value is implied
        ({"decoder": "mrs", "value_dtype": "fp32"}, 9 * 4),
        ({"decoder": "ms", "value_dtype": "fp32"}, 10 * 4),
    ],
)
def test_block_bytes_formula(
    teacher_logits: torch.Tensor, options: dict[str, Any], value_bytes: int
) -> None:
    codec = _codec(teacher_logits, k=10, **options)
    for n in (1, 3, 512):
        block = codec.encode(teacher_logits[:n])
        # values, then 10 ids of ceil(log2 1000) = 10 bits per label in one stream
        assert block.nbytes == n * value_bytes + math.ceil(n * 10 * 10 / 8)
        assert block.nbytes == codec.block_bytes(n)
    assert codec.expected_payload_bits() == 8 * value_bytes + 100
    assert codec.model_bytes() == 0


def test_mr_keeps_exact_ids_and_fp16_values(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, k=10, decoder="mr", relative=False)
    decoded = codec.decode(codec.encode(teacher_logits), device="cpu")
    values, ids = teacher_logits.topk(10, dim=1)
    assert decoded.dtype == torch.float32 and decoded.shape == (512, 1000)
    assert int(torch.isfinite(decoded).sum(dim=1).min()) == 10
    assert torch.equal(decoded.gather(1, ids), values.half().float())
    assert bool(torch.isneginf(decoded.scatter(1, ids, 0.0)).sum(dim=1).eq(990).all())
    # softmax(decoded / T) is the kept-only distribution at any T
    for t in (1.0, 4.0, 20.0):
        ref = torch.zeros_like(decoded).scatter(
            1, ids, torch.softmax(values / t, dim=1)
        )
        assert torch.allclose(torch.softmax(decoded / t, dim=1), ref, atol=1e-3)


def test_relative_values_keep_the_distribution(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, k=10, decoder="mr")
    decoded = codec.decode(codec.encode(teacher_logits))
    values, ids = teacher_logits.topk(10, dim=1)
    assert torch.equal(_kept(decoded, 10), ids.sort(dim=1).values)
    kept = decoded.gather(1, ids)
    assert bool((kept[:, 0] == 0).all())  # top value implied as 0
    diffs = values - values[:, :1]
    assert torch.allclose(kept, diffs, atol=diffs.abs().max().item() * 2**-10)


def test_mrs_fills_with_minimum_kept_logit(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, k=10, decoder="mrs", relative=False)
    decoded = codec.decode(codec.encode(teacher_logits))
    values, ids = teacher_logits.topk(10, dim=1)
    assert torch.equal(decoded.gather(1, ids), values.half().float())
    fill = values[:, -1:].half().float()
    others = decoded.scatter(1, ids, float("nan"))
    assert bool(((others == fill) | others.isnan()).all())
    assert int(others.isnan().sum()) == 512 * 10


def test_ms_spreads_missing_mass_uniformly(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, k=10, decoder="ms", temperature=1.0)
    decoded = codec.decode(codec.encode(teacher_logits))
    probs = torch.softmax(teacher_logits, dim=1)
    kept_p, ids = probs.topk(10, dim=1)
    # decoded are log-probabilities at T=1: they sum to one without normalising
    assert torch.allclose(decoded.exp().sum(dim=1), torch.ones(512), atol=1e-5)
    stored = torch.log_softmax(teacher_logits, dim=1).gather(1, ids)
    assert torch.equal(decoded.gather(1, ids), stored.half().float())
    missing = (1 - kept_p.sum(dim=1, keepdim=True)) / 990
    others = decoded.exp().scatter(1, ids, float("nan"))
    rows_equal = torch.where(others.isnan(), missing, others)
    assert torch.allclose(rows_equal, missing.expand(-1, 1000), rtol=1e-2)


def test_ms_storage_temperature(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, k=10, decoder="ms", temperature=4.0)
    decoded = codec.decode(codec.encode(teacher_logits))
    q = torch.softmax(decoded / 4.0, dim=1)  # exactly the stored distribution at T_s
    assert torch.allclose((decoded / 4.0).exp().sum(dim=1), torch.ones(512), atol=1e-5)
    p4 = torch.softmax(teacher_logits / 4.0, dim=1)
    kept_p, ids = p4.topk(10, dim=1)
    assert torch.allclose(q.gather(1, ids), kept_p, rtol=5e-3)
    q_rest = q.scatter(1, ids, 0.0).sum(dim=1)
    assert torch.allclose(q_rest, 1 - kept_p.sum(dim=1), atol=2e-3)


def test_keeping_every_class_is_lossless_up_to_fp16(
    teacher_logits_c10: torch.Tensor,
) -> None:
    codec = _codec(teacher_logits_c10, k=10, decoder="ms", temperature=1.0)
    decoded = codec.decode(codec.encode(teacher_logits_c10))
    expected = torch.log_softmax(teacher_logits_c10, dim=1)
    assert torch.allclose(decoded, expected.half().float())
    with pytest.raises(ConfigError, match="k=11 exceeds the 10 classes"):
        _codec(teacher_logits_c10, k=11)


def test_stored_config_rebuilds_equal_codec(teacher_logits: torch.Tensor) -> None:
    for options in (
        {"decoder": "mrs", "k": 7},
        {"decoder": "ms", "k": 5, "temperature": 2.0},
    ):
        codec = _codec(teacher_logits, **options)
        config = codec.to_config()
        assert config["num_classes"] == 1000 and config["kind"] == "topk"
        rebuilt = TopKCodec.from_stored(config, codec.model_tensors())
        assert rebuilt.config == codec.config
        block = codec.encode(teacher_logits)
        assert torch.equal(rebuilt.decode(block), codec.decode(block))
    with pytest.raises(ArchiveFormatError, match="num_classes"):
        TopKCodec.from_stored({"kind": "topk"}, {})
    with pytest.raises(ArchiveFormatError, match="k=20 exceeds num_classes=10"):
        TopKCodec.from_stored({"kind": "topk", "k": 20, "num_classes": 10}, {})


def test_deterministic_bytes(teacher_logits: torch.Tensor) -> None:
    codec = _codec(teacher_logits, k=10)
    assert torch.equal(
        codec.encode(teacher_logits).data, codec.encode(teacher_logits).data
    )


def test_errors(teacher_logits: torch.Tensor) -> None:
    with pytest.raises(NotFittedError, match=r"TopKCodec.encode called before fit\(\)"):
        TopKCodec().encode(teacher_logits)
    codec = _codec(teacher_logits, k=10)
    bad = teacher_logits[:3].clone()
    bad[2, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or Inf in 1 of 3 rows"):
        codec.encode(bad)
    with pytest.raises(InputError, match=r"shape \(N, C\)"):
        codec.encode(teacher_logits[None])
    with pytest.raises(InputError, match="fitted for 1000 classes, logits have 999"):
        codec.encode(teacher_logits[:, 1:])
    block = codec.encode(teacher_logits[:2])
    with pytest.raises(ArchiveFormatError, match="must hold 65 bytes, got 64"):
        codec.decode(EncodedBlock(2, block.data[:-1]))
    corrupt = block.data.clone()
    corrupt[-25:] = 255  # ids of 1023 >= 1000
    with pytest.raises(ArchiveFormatError, match="class id 1023 >= 1000"):
        codec.decode(EncodedBlock(2, corrupt))
    with pytest.raises(InputError, match="overflow fp16; use value_dtype='fp32'"):
        _codec(teacher_logits, decoder="mr", relative=False).encode(
            teacher_logits * 1e4
        )


def test_for_target_picks_the_largest_k(teacher_logits: torch.Tensor) -> None:
    n, c = 512, 1000
    for decoder in ("ms", "mr"):
        codec = sized_codec(
            "topk", num_labels=n, num_classes=c, ratio=40, decoder=decoder
        ).fit([teacher_logits])
        assert isinstance(codec, TopKCodec)
        budget = n * c * 2 // 40
        k = codec.config.k
        assert codec.encode(teacher_logits).nbytes <= budget
        bigger = TopKCodec(codec.config.model_copy(update={"k": k + 1})).fit(
            [teacher_logits]
        )
        assert bigger.block_bytes(n) + 1 > budget  # one padding byte per 1024 labels
    # 40x of 1000 fp16 values = 400 bits: ms stores 26 bits per entry -> k = 15;
    # relative mr stores 26 bits per entry minus one value -> still k = 15
    assert codec.config.k == 15


def test_for_target_respects_fixed_options() -> None:
    codec = TopKCodec.for_target(
        num_labels=100, num_classes=1000, budget_bytes=100 * 50, k=5, value_dtype="fp32"
    )
    assert codec.config.k == 5 and codec.config.value_dtype == "fp32"
    with pytest.raises(
        UnreachableTargetError,
        match=r"topk k=20 .* needs 6501 bytes .* best reachable ratio is 30\.76x",
    ):
        TopKCodec.for_target(num_labels=100, num_classes=1000, budget_bytes=5000, k=20)
    with pytest.raises(
        UnreachableTargetError, match=r"k=1 \(ms, fp16\) needs 326 bytes .* 613\.50x"
    ):
        TopKCodec.for_target(num_labels=100, num_classes=1000, budget_bytes=300)
    with pytest.raises(ConfigError, match="invalid topk codec options"):
        TopKCodec.for_target(num_labels=1, num_classes=10, budget_bytes=300, k=0)
    with pytest.raises(ConfigError, match="k=11 exceeds the 10 classes"):
        TopKCodec.for_target(num_labels=1, num_classes=10, budget_bytes=300, k=11)


def test_k1_relative_stores_only_ids_and_empty_blocks(
    teacher_logits: torch.Tensor,
) -> None:
    codec = _codec(teacher_logits, k=1, decoder="mr")
    block = codec.encode(teacher_logits)
    assert block.nbytes == math.ceil(512 * 10 / 8)  # no values: the top one is implied
    decoded = codec.decode(block)
    assert torch.equal(decoded.argmax(dim=1), teacher_logits.argmax(dim=1))
    assert bool((torch.isfinite(decoded).sum(dim=1) == 1).all())
    for options in ({"decoder": "mr"}, {"decoder": "ms"}):
        empty = _codec(teacher_logits, **options).encode(teacher_logits[:0])
        assert empty.nbytes == 0
        assert _codec(teacher_logits, **options).decode(empty).shape == (0, 1000)
