"""Pack non-negative integers at any bit width into bytes, and back.

Pure tensor functions, so they run on whatever device the tensors live on. Bit
order is little-endian throughout: the least significant bit of each value is
written first, and bytes are filled from their least significant bit.
"""

from __future__ import annotations

import math

import torch

from labelzip.errors import InputError

__all__ = ["bits_for", "pack_bits", "packed_size", "unpack_bits"]


def bits_for(num_values: int) -> int:
    """Bits needed to store an id in ``range(num_values)`` (at least 1)."""
    if num_values < 1:
        raise InputError(f"num_values must be >= 1, got {num_values}")
    return max(1, math.ceil(math.log2(num_values)))


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits occupy once packed."""
    return (count * bits + 7) // 8


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers into a flat byte tensor.

    Args:
        values: integer tensor of any shape, every entry in ``[0, 2**bits)``.
        bits: width of one value, 1..63.

    Returns:
        ``uint8`` tensor of shape ``(packed_size(values.numel(), bits),)`` on the
        same device.

    Raises:
        InputError: a value does not fit in ``bits`` bits.
    """
    if not 1 <= bits <= 63:
        raise InputError(f"bits must be in 1..63, got {bits}")
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise InputError(
            f"values must lie in [0, 2**{bits}); got range "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    shifts = torch.arange(bits, device=flat.device, dtype=torch.int64)
    bit_matrix = (flat.unsqueeze(1) >> shifts) & 1  # (count, bits)
    stream = bit_matrix.reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = 1 << torch.arange(8, device=flat.device, dtype=torch.int64)
    return (stream.reshape(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values, as ``int64``.

    Raises:
        InputError: ``packed`` holds fewer than ``count`` values.
    """
    if not 1 <= bits <= 63:
        raise InputError(f"bits must be in 1..63, got {bits}")
    need = packed_size(count, bits)
    if packed.numel() < need:
        raise InputError(
            f"packed buffer has {packed.numel()} bytes, {count} values of {bits} "
            f"bits need {need}"
        )
    data = packed.reshape(-1)[:need].to(torch.int64)
    shifts = torch.arange(8, device=data.device, dtype=torch.int64)
    stream = ((data.unsqueeze(1) >> shifts) & 1).reshape(-1)[: count * bits]
    weights = 1 << torch.arange(bits, device=data.device, dtype=torch.int64)
    return (stream.reshape(count, bits) * weights).sum(dim=1)
