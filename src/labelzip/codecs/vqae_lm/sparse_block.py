"""The bytes of one vqae-sparse block: writing and parsing its layout.

For N labels: a little-endian u32 byte count of the ANS stream; the ANS stream
(the N level symbols when there are several levels, then the rank buckets of
the labels of each level in turn, labels in order); the raw low bits of those
ranks in the same order, one bit stream padded to a byte; the N x R x M code
bytes; the N tail exponent indices, ``tail_bits`` bits each, padded to a byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from labelzip.codecs.base import EncodedBlock
from labelzip.codecs.entropy import CategoricalStreamCoder, decode_joint, encode_joint
from labelzip.codecs.vqae_lm.idcoding import pack_varbits, rank_bucket, unpack_varbits
from labelzip.codecs.vqae_lm.levels import rows_of_level
from labelzip.codecs.vqae_lm.sparse_config import VQAESparseConfig
from labelzip.errors import ArchiveFormatError, InputError
from labelzip.ops.bitpack import pack_bits, packed_size, unpack_bits

__all__ = ["BlockCoders", "pack_block", "parse_block"]


@dataclass(frozen=True)
class BlockCoders:
    """The entropy coders of a fitted codec: one per level for the id buckets."""

    levels: list[int]  # ids kept at each level, ascending
    id_coders: list[CategoricalStreamCoder]  # one per level
    level_coder: CategoricalStreamCoder | None  # None: one level, no symbol


def pack_block(
    coders: BlockCoders,
    *,
    ranks: torch.Tensor,
    level: torch.Tensor | None,
    codes: torch.Tensor,
    tails: torch.Tensor | None,
    tail_bits: int,
) -> torch.Tensor:
    """The uint8 bytes of a block.

    Args:
        ranks: (N, K) int64 prior ranks of each label's top-K ids.
        level: (N,) level index per label; None for a single level.
        codes: (N, R, M) VQ code indices (< 256).
        tails: (N,) tail exponent indices; None when ``tail_bits`` is 0.
    """
    n = int(ranks.shape[0])
    buckets = rank_bucket(ranks)
    level = level if level is not None else torch.zeros(n, dtype=torch.int64)
    parts_ans: list[tuple[CategoricalStreamCoder, torch.Tensor]] = []
    if coders.level_coder is not None:
        parts_ans.append((coders.level_coder, level[:, None]))
    flat_ranks, flat_widths = [], []
    for c, kk in enumerate(coders.levels):
        rows = level == c
        parts_ans.append((coders.id_coders[c], buckets[rows, :kk]))
        flat_ranks.append(ranks[rows, :kk].reshape(-1))
        flat_widths.append(buckets[rows, :kk].reshape(-1))
    stream = encode_joint(parts_ans)
    r, w = torch.cat(flat_ranks), torch.cat(flat_widths)
    parts = [
        torch.tensor([stream.numel()], dtype=torch.int32).view(torch.uint8),
        stream,
        pack_varbits(r + 1 - (1 << w), w),
        codes.to(torch.uint8).reshape(-1),
    ]
    if tail_bits:
        assert tails is not None
        parts.append(pack_bits(tails, tail_bits))
    return torch.cat(parts)


def parse_block(
    block: EncodedBlock,
    num_classes: int,
    cfg: VQAESparseConfig,
    coders: BlockCoders,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block -> (N,) level, flat token ranks, (N, R, M) codes, (N,) tail index.

    Raises:
        ArchiveFormatError: the bytes do not follow the layout (short, corrupt
            ANS stream, wrong length, a rank outside the vocabulary).
    """
    num_levels = len(coders.levels)
    n = block.num_labels
    data = block.data.cpu().reshape(-1)
    if data.numel() < 4:
        raise ArchiveFormatError(f"vqae-sparse block of {n} labels is too short")
    length = int(data[:4].clone().view(torch.int32)[0])
    pos = 4 + length
    if length < 0 or length % 4 or pos > data.numel():
        raise ArchiveFormatError(
            f"vqae-sparse block names an ANS stream of {length} bytes in "
            f"{data.numel()} bytes"
        )
    plan: list[tuple[CategoricalStreamCoder, Any]] = []
    if coders.level_coder is not None:
        plan.append((coders.level_coder, n))
    for c in range(num_levels):
        plan.append((coders.id_coders[c], rows_of_level(c, n, num_levels)))
    try:
        decoded = decode_joint(data[4:pos], plan)
    except InputError as exc:
        raise ArchiveFormatError(f"vqae-sparse block is corrupt: {exc}") from exc
    if coders.level_coder is not None:
        level, groups = decoded[0][:, 0], decoded[1:]
    else:
        level, groups = torch.zeros(n, dtype=torch.int64), decoded
    widths = torch.cat([g.reshape(-1) for g in groups])
    raw_bytes = packed_size(int(widths.sum()), 1)
    code_count = n * cfg.code_bytes
    expected = pos + raw_bytes + code_count + packed_size(n, cfg.tail_bits)
    if data.numel() != expected:
        raise ArchiveFormatError(
            f"vqae-sparse block of {n} labels must hold {expected} bytes, got "
            f"{data.numel()}"
        )
    flat = unpack_varbits(data[pos : pos + raw_bytes], widths) + (1 << widths) - 1
    if flat.numel() and int(flat.max()) >= num_classes:
        raise ArchiveFormatError(
            f"vqae-sparse block holds token rank {int(flat.max())} >= {num_classes}"
        )
    pos += raw_bytes
    codes = data[pos : pos + code_count].long()
    codes = codes.reshape(n, cfg.num_stages, cfg.num_chunks)
    pos += code_count
    if cfg.tail_bits:
        which = unpack_bits(data[pos:], cfg.tail_bits, n)
    else:
        which = torch.zeros(n, dtype=torch.int64)
    return level, flat, codes, which
