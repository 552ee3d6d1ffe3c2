"""A seeded uniform sample of at most ``capacity`` rows from a stream (Algorithm R).

Codecs that learn from label values (VQAE, measured RS-KD sizing) and the
two-pass relabel flows fit on a bounded sample of a stream that may not fit in
memory. Row i of the stream (0-based) is kept with probability
``capacity / (i + 1)``, replacing a uniformly drawn slot, so the result is a
uniform sample of everything seen, whatever the order of the stream (the first
rows of a class-sorted stream would not be). Same seed and stream, same sample.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from labelzip.errors import ConfigError, InputError
from labelzip.ops.logits import LogitSource, check_logits, iterate_source

__all__ = ["Reservoir", "reservoir_sample"]


class Reservoir:
    """Streaming uniform sample of (n, C) rows, stored in ``dtype`` on the CPU.

    Memory: ``capacity * C * dtype size`` bytes at most.
    """

    def __init__(
        self,
        capacity: int,
        num_classes: int,
        *,
        seed: int | torch.Generator = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.num_classes = num_classes
        self.seen = 0
        self._rows = torch.empty(0, num_classes, dtype=dtype)
        if isinstance(seed, torch.Generator):
            self._gen = seed
        else:
            self._gen = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        return self.capacity * self.num_classes * self._rows.element_size()

    def add(self, rows: torch.Tensor) -> None:
        """Offer (n, C) rows, in stream order."""
        # Only the rows kept are moved and converted (most of a long stream is not).
        rows = rows.detach().reshape(-1, self.num_classes)
        n = rows.shape[0]
        fill = min(max(self.capacity - self.seen, 0), n)
        if fill:
            self._rows = torch.cat([self._rows, self._stored(rows[:fill])])
        if fill < n:
            index = torch.arange(self.seen + fill, self.seen + n, dtype=torch.float64)
            u = torch.rand(n - fill, generator=self._gen, dtype=torch.float64)
            slot = (u * (index + 1)).floor().long()
            hit = slot < self.capacity
            slot, src = slot[hit], torch.arange(fill, n)[hit]
            if slot.numel():  # a later row wins a slot drawn twice in this batch
                order = torch.argsort(slot * n + src)
                slot, src = slot[order], src[order]
                last = torch.ones_like(slot, dtype=torch.bool)
                last[:-1] = slot[1:] != slot[:-1]
                self._rows[slot[last]] = self._stored(rows[src[last].to(rows.device)])
        self.seen += n

    def _stored(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.to("cpu", self._rows.dtype)

    def rows(self) -> torch.Tensor:
        """(min(seen, capacity), C) sampled rows, in ``dtype``."""
        return self._rows

    def batches(self, size: int = 4096) -> Iterator[torch.Tensor]:
        """The sample as float32 (size, C) batches (a fresh pass each call)."""
        for start in range(0, self._rows.shape[0], size):
            yield self._rows[start : start + size].float()


def reservoir_sample(
    source: LogitSource,
    capacity: int,
    generator: torch.Generator | int = 0,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, int]:
    """A uniform random subset of at most ``capacity`` labels from one pass.

    Args:
        source: iterable of (B, C) logit batches, or a factory of one.
        capacity: the most labels kept (memory cap: capacity * C * 4 bytes).
        generator: seeded CPU generator or seed (same stream + seed => same subset).
        num_classes: expected C, checked on every batch when given.

    Returns:
        ((n, C) float32 kept labels, total labels seen), n = min(capacity, seen).

    Raises:
        InputError: empty source, or a batch of the wrong shape or with NaN/Inf.
    """
    reservoir: Reservoir | None = None
    for batch in iterate_source(source):
        if isinstance(batch, torch.Tensor) and batch.dim() == 1:
            batch = batch.unsqueeze(0)
        check_logits(batch, num_classes)
        if reservoir is None:
            num_classes = int(batch.shape[1])
            reservoir = Reservoir(capacity, num_classes, seed=generator)
        reservoir.add(batch)
    if reservoir is None or reservoir.seen == 0:
        raise InputError("fit() got no labels: the source yielded no batches")
    return reservoir.rows().clone(), reservoir.seen
