"""DenseCodec: exact fp32 round trip, fp16/bf16 rounding, fixed-rate accounting."""

from __future__ import annotations

import pytest
import torch

from labelzip.codecs.base import EncodedBlock
from labelzip.codecs.baseline.dense import DenseCodec, DenseConfig
from labelzip.codecs.registry import create_codec
from labelzip.errors import (
    ArchiveFormatError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)

from .sizing import sized_codec


def _fitted(dtype: str, logits: torch.Tensor) -> DenseCodec:
    return DenseCodec(DenseConfig.model_validate({"dtype": dtype})).fit([logits[:8]])


def test_fp32_round_trip_is_exact(teacher_logits: torch.Tensor) -> None:
    codec = _fitted("fp32", teacher_logits)
    block = codec.encode(teacher_logits)
    assert block.nbytes == 512 * 1000 * 4
    assert torch.equal(codec.decode(block, device="cpu"), teacher_logits)


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_half_dtypes_round_to_nearest(
    teacher_logits: torch.Tensor, dtype: str, torch_dtype: torch.dtype
) -> None:
    codec = _fitted(dtype, teacher_logits)
    block = codec.encode(teacher_logits)
    assert block.nbytes == 512 * 1000 * 2
    decoded = codec.decode(block, device="cpu")
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, teacher_logits.to(torch_dtype).float())


def test_block_is_flat_little_endian_uint8() -> None:
    codec = DenseCodec().fit([torch.zeros(1, 2)])
    block = codec.encode(torch.tensor([[1.0, -2.0]]))
    assert block.data.dtype == torch.uint8 and block.data.dim() == 1
    assert block.data.device.type == "cpu"
    # fp16 1.0 = 0x3C00, -2.0 = 0xC000, least significant byte first
    assert block.data.tolist() == [0x00, 0x3C, 0x00, 0xC0]


def test_decode_accepts_unaligned_view(teacher_logits: torch.Tensor) -> None:
    codec = _fitted("fp32", teacher_logits)
    block = codec.encode(teacher_logits[:3])
    shifted = torch.cat([torch.zeros(1, dtype=torch.uint8), block.data])[1:]
    assert torch.equal(codec.decode(EncodedBlock(3, shifted)), teacher_logits[:3])


def test_accounting_against_fp16_reference(teacher_logits: torch.Tensor) -> None:
    for dtype, ratio, bits in [("fp16", 1.0, 16_000.0), ("fp32", 0.5, 32_000.0)]:
        codec = _fitted(dtype, teacher_logits)
        block = codec.encode(teacher_logits)
        account = codec.account(512, block.nbytes)
        assert codec.model_bytes() == 0 and codec.model_tensors() == {}
        assert codec.expected_payload_bits() == bits
        assert account.ratio == ratio
        assert account.bits_per_label == bits


def test_stored_config_rebuilds_equal_codec(teacher_logits: torch.Tensor) -> None:
    codec = _fitted("bf16", teacher_logits)
    config = codec.to_config()
    assert config == {"kind": "dense", "dtype": "bf16", "num_classes": 1000}
    rebuilt = DenseCodec.from_stored(config, codec.model_tensors())
    block = codec.encode(teacher_logits)
    assert torch.equal(rebuilt.decode(block), codec.decode(block))
    assert torch.equal(rebuilt.encode(teacher_logits).data, block.data)


def test_from_stored_rejects_bad_config() -> None:
    with pytest.raises(ArchiveFormatError, match="num_classes"):
        DenseCodec.from_stored({"kind": "dense", "dtype": "fp16"}, {})
    with pytest.raises(ArchiveFormatError, match="invalid stored dense config"):
        DenseCodec.from_stored({"kind": "dense", "dtype": "int8", "num_classes": 3}, {})


def test_same_bytes_twice(teacher_logits: torch.Tensor) -> None:
    codec = _fitted("fp16", teacher_logits)
    assert torch.equal(
        codec.encode(teacher_logits).data, codec.encode(teacher_logits).data
    )


def test_requires_fit() -> None:
    codec = DenseCodec()
    with pytest.raises(NotFittedError, match="fit"):
        codec.encode(torch.zeros(2, 3))
    with pytest.raises(NotFittedError, match="DenseCodec.decode"):
        codec.decode(EncodedBlock(1, torch.zeros(6, dtype=torch.uint8)))
    with pytest.raises(InputError, match="empty source"):
        codec.fit([])


def test_bad_inputs(teacher_logits: torch.Tensor) -> None:
    codec = _fitted("fp16", teacher_logits)
    bad = teacher_logits[:4].clone()
    bad[1, 3] = float("nan")
    with pytest.raises(InputError, match="NaN or Inf in 1 of 4 rows"):
        codec.encode(bad)
    bad[1, 3] = float("inf")
    with pytest.raises(InputError, match="NaN or Inf"):
        codec.encode(bad)
    with pytest.raises(InputError, match=r"shape \(N, C\)"):
        codec.encode(teacher_logits[0])
    with pytest.raises(InputError, match="fitted for 1000 classes, logits have 10"):
        codec.encode(teacher_logits[:, :10])
    with pytest.raises(InputError, match="overflow fp16"):
        codec.encode(torch.full((1, 1000), 1e6))


def test_wrong_block_size_is_rejected(teacher_logits: torch.Tensor) -> None:
    codec = _fitted("fp16", teacher_logits)
    block = codec.encode(teacher_logits[:2])
    with pytest.raises(ArchiveFormatError, match="must hold 4000 bytes, got 3999"):
        codec.decode(EncodedBlock(2, block.data[:-1]))


def test_registry_builds_dense() -> None:
    codec = create_codec("dense", dtype="fp32")
    assert isinstance(codec, DenseCodec) and codec.config.dtype == "fp32"


def test_for_target_picks_most_precise_dtype_that_fits() -> None:
    def pick(ratio: float, **options: str) -> str:
        codec = sized_codec(
            "dense", num_labels=100, num_classes=10, ratio=ratio, **options
        )
        assert isinstance(codec, DenseCodec)
        return codec.config.dtype

    assert pick(0.5) == "fp32"
    assert pick(0.9) == "fp16"
    assert pick(1.0) == "fp16"
    assert pick(1.0, dtype="bf16") == "bf16"
    with pytest.raises(UnreachableTargetError, match=r"best reachable ratio is 1\.00x"):
        pick(1.5)
    with pytest.raises(UnreachableTargetError, match=r"dense fp32 .* 0\.50x"):
        pick(1.0, dtype="fp32")


def test_for_target_counts_archive_overhead() -> None:
    DenseCodec.for_target(num_labels=10, num_classes=10, budget_bytes=200)
    with pytest.raises(UnreachableTargetError, match="budget is 199"):
        DenseCodec.for_target(num_labels=10, num_classes=10, budget_bytes=199)


def test_empty_block(teacher_logits: torch.Tensor) -> None:
    codec = _fitted("fp16", teacher_logits)
    block = codec.encode(teacher_logits[:0])
    assert block.nbytes == 0 and codec.decode(block).shape == (0, 1000)
