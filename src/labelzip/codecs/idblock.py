"""Blocks of per-label bytes followed by bit-packed class ids.

The sparse codecs (``topk``, ``distillkit``) store a block of N labels as
``N * R`` bytes of per-label values, then the N * k class ids as one
little-endian bit stream of ``ceil(log2 C)`` bits each, padded to a byte.
:func:`join_id_block` writes that layout and :func:`split_id_block` reads it
back, with the checks both codecs make (ids in range, exact block size), so the
two cannot drift apart.
"""

from __future__ import annotations

import torch

from labelzip.codecs.base import EncodedBlock
from labelzip.errors import ArchiveFormatError, InputError
from labelzip.ops.bitpack import bits_for, pack_bits, packed_size, unpack_bits

__all__ = ["check_class_ids", "id_block_bytes", "join_id_block", "split_id_block"]


def check_class_ids(
    ids: torch.Tensor,
    num_classes: int,
    *,
    shape: tuple[int, ...],
    what: str = "class ids",
) -> torch.Tensor:
    """``ids`` as CPU int64, or InputError when they are not integers of
    ``shape`` or one lies outside ``[0, num_classes)``."""
    if tuple(ids.shape) != shape or ids.is_floating_point():
        raise InputError(
            f"{what} must be integers shaped {shape}, got {tuple(ids.shape)} "
            f"{ids.dtype}"
        )
    ids = ids.detach().to("cpu", torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise InputError(
            f"{what} {int(ids.min())}..{int(ids.max())} outside [0, {num_classes})"
        )
    return ids


def id_block_bytes(num_labels: int, row_bytes: int, k: int, num_classes: int) -> int:
    """Size of a block of ``num_labels`` rows of ``row_bytes`` bytes and ``k`` ids."""
    return num_labels * row_bytes + packed_size(num_labels * k, bits_for(num_classes))


def join_id_block(
    payload: torch.Tensor, ids: torch.Tensor, num_classes: int
) -> EncodedBlock:
    """The block of ``payload`` (flat uint8, the per-label bytes) then ``ids``
    ((N, k) integers, already range-checked) packed at ``ceil(log2 C)`` bits."""
    data = torch.cat(
        [
            payload.detach().cpu().reshape(-1),
            pack_bits(ids, bits_for(num_classes)).cpu(),
        ]
    )
    return EncodedBlock(num_labels=int(ids.shape[0]), data=data)


def split_id_block(
    block: EncodedBlock,
    *,
    row_bytes: int,
    k: int,
    num_classes: int,
    what: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`join_id_block`: (flat uint8 payload, (N, k) int64 ids).

    Both are views or results on the block's device (CPU for stored blocks).

    Raises:
        ArchiveFormatError: the block has another size than N rows and N * k
            ids take, or holds an id >= ``num_classes`` (``what`` names the
            block in the message, e.g. ``"topk block (k=10)"``).
    """
    n = block.num_labels
    expected = id_block_bytes(n, row_bytes, k, num_classes)
    if block.nbytes != expected:
        raise ArchiveFormatError(
            f"{what} of {n} labels ({num_classes} classes) must hold {expected} "
            f"bytes, got {block.nbytes}"
        )
    data = block.data.to(dtype=torch.uint8).reshape(-1)
    split = n * row_bytes
    ids = unpack_bits(data[split:], bits_for(num_classes), n * k).reshape(n, k)
    if n and int(ids.max()) >= num_classes:
        raise ArchiveFormatError(
            f"{what} holds class id {int(ids.max())} >= {num_classes} classes"
        )
    return data[:split], ids
