"""Seeded, host-independent categorical sampling shared by the sampling codecs.

RS-KD and the sampled tail of ``vqae-rs`` draw class ids from teacher
distributions at encode time. The draws must be the same bytes on every host,
device and thread count, so they run on the CPU in float64 from a generator
seeded by a hash of (seed, stream key); the stream key is usually the batch's
content, so re-encoding a batch reproduces it without a counter to keep in step.
"""

from __future__ import annotations

import hashlib

import torch

from labelzip.ops.bitpack import bits_for

__all__ = [
    "content_key",
    "count_field_bits",
    "distinct_with_counts",
    "draw_categorical",
    "seeded_generator",
    "u64_bytes",
]

# Elements per float64 working chunk while sampling (rows x max(C, S)).
_CHUNK_ELEMENTS = 1 << 21


def u64_bytes(value: int) -> bytes:
    """8 little-endian bytes of ``value`` modulo 2**64."""
    return (value % (1 << 64)).to_bytes(8, "little")


def content_key(x: torch.Tensor) -> bytes:
    """Digest of a (N, C) float32 CPU tensor's shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(b"content" + u64_bytes(x.shape[0]) + u64_bytes(x.shape[1]))
    digest.update(x.contiguous().numpy().data)
    return digest.digest()


def seeded_generator(seed: int, key: bytes, num_labels: int) -> torch.Generator:
    """CPU generator seeded from (seed, stream key, label count)."""
    digest = hashlib.blake2b(
        u64_bytes(seed) + key + u64_bytes(num_labels), digest_size=8
    )
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


def draw_categorical(
    logits: torch.Tensor, num_samples: int, temperature: float, gen: torch.Generator
) -> torch.Tensor:
    """(N, S) int64 ids drawn with replacement from softmax(logits / T), on the CPU.

    Inverse-CDF sampling in float64 from uniforms of ``gen``, processed in row
    chunks; the draws depend only on the generator state, not on thread count.
    ``-inf`` logits are never drawn (rows need at least one finite logit).
    """
    n, c = logits.shape
    out = torch.empty(n, num_samples, dtype=torch.int64)
    rows = max(1, _CHUNK_ELEMENTS // max(c, num_samples))
    for lo in range(0, n, rows):
        z = logits[lo : lo + rows].to(torch.float64) / temperature
        cdf = torch.softmax(z, dim=1).cumsum(dim=1)
        u = torch.rand(z.shape[0], num_samples, generator=gen, dtype=torch.float64)
        idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        over = idx >= c  # u * total rounded up to total: use the last class with mass
        if bool(over.any()):
            has_mass = torch.diff(cdf, dim=1, prepend=cdf.new_zeros(len(cdf), 1)) > 0
            last = c - 1 - has_mass.flip(1).to(torch.int8).argmax(dim=1)
            idx = torch.where(over, last[:, None], idx)
        out[lo : lo + rows] = idx
    return out


def count_field_bits(num_samples: int) -> int:
    """Width of a stored ``distinct - 1`` or ``count - 1`` of S draws (0 when S <= 1)."""
    return bits_for(num_samples) if num_samples > 1 else 0


def distinct_with_counts(
    draws: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, S) draws -> distinct values ascending per row (flat), their counts, (n,)
    distinct values per row: the run-length form the sampling codecs store."""
    n, s = draws.shape
    ordered = draws.sort(dim=1).values
    is_new = torch.ones_like(ordered, dtype=torch.bool)
    is_new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = torch.nonzero(is_new.reshape(-1)).reshape(-1)  # flat run starts
    ends = torch.cat([starts, starts.new_tensor([n * s])])[1:]  # next run start
    return ordered.reshape(-1)[starts], ends - starts, is_new.sum(dim=1)
