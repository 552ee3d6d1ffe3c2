"""Bit packing: exact round trips and sizes at every width, little-endian order."""

from __future__ import annotations

import pytest
import torch

from labelzip.errors import InputError
from labelzip.ops.bitpack import bits_for, pack_bits, packed_size, unpack_bits


@pytest.mark.parametrize("bits", [1, 3, 8, 10, 17, 33])
@pytest.mark.parametrize("count", [0, 1, 7, 1001])
def test_round_trip_and_exact_size(bits: int, count: int) -> None:
    g = torch.Generator().manual_seed(bits * 1000 + count)
    values = torch.randint(0, 1 << bits, (count,), generator=g, dtype=torch.int64)
    if count:
        values[0] = (1 << bits) - 1  # the largest value that fits
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_size(count, bits) == (count * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, count), values)


def test_multidimensional_input_is_flattened() -> None:
    values = torch.arange(12).reshape(3, 4)
    assert torch.equal(unpack_bits(pack_bits(values, 4), 4, 12), values.reshape(-1))


def test_little_endian_bit_order() -> None:
    assert pack_bits(torch.tensor([1, 0, 1]), 1).tolist() == [0b101]
    assert pack_bits(torch.tensor([0x3FF]), 10).tolist() == [0xFF, 0x03]
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]


def test_unpack_ignores_trailing_bytes() -> None:
    packed = torch.cat(
        [pack_bits(torch.tensor([5, 6]), 3), torch.tensor([255], dtype=torch.uint8)]
    )
    assert unpack_bits(packed, 3, 2).tolist() == [5, 6]


@pytest.mark.parametrize(
    ("num_values", "bits"),
    [
        (1, 1),
        (2, 1),
        (3, 2),
        (10, 4),
        (1000, 10),
        (1024, 10),
        (1025, 11),
        (49152, 16),
        (50257, 16),
    ],
)
def test_bits_for(num_values: int, bits: int) -> None:
    assert bits_for(num_values) == bits


def test_errors() -> None:
    with pytest.raises(InputError, match="num_values must be >= 1, got 0"):
        bits_for(0)
    with pytest.raises(InputError, match=r"bits must be in 1\.\.63, got 0"):
        pack_bits(torch.tensor([0]), 0)
    with pytest.raises(InputError, match=r"bits must be in 1\.\.63, got 64"):
        unpack_bits(torch.zeros(8, dtype=torch.uint8), 64, 1)
    with pytest.raises(InputError, match=r"\[0, 2\*\*3\); got range \[0, 8\]"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(InputError, match=r"got range \[-1, 2\]"):
        pack_bits(torch.tensor([-1, 2]), 3)
    with pytest.raises(InputError, match="has 1 bytes, 3 values of 10 bits need 4"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 10, 3)
