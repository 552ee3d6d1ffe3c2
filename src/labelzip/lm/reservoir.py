"""A seeded uniform sample of label rows from a stream of unknown length.

Fitting a learned codec on LM labels needs a sample of positions, but the labels
arrive batch by batch from the teacher and never fit in memory together. The
reservoir keeps at most ``capacity`` rows (in fp16) and is, at every point, a
uniform sample of the rows seen so far.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from labelzip.errors import ConfigError

__all__ = ["FIT_BATCH", "PositionReservoir"]

FIT_BATCH = 1024  # rows per fit() batch (float32: V x 4 bytes each)


class PositionReservoir:
    """A seeded uniform sample of at most ``capacity`` rows from a stream (Algorithm R).

    Row i of the stream (0-based) is kept with probability ``capacity / (i + 1)``,
    replacing a uniformly chosen slot; the result is a uniform sample of the rows
    seen, in fp16, ``capacity x C x 2`` bytes at most. Same seed and stream give
    the same sample.
    """

    def __init__(self, capacity: int, num_classes: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ConfigError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.num_classes = num_classes
        self.seen = 0
        self._rows = torch.empty(0, num_classes, dtype=torch.float16)
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        return self.capacity * self.num_classes * 2

    def add(self, rows: torch.Tensor) -> None:
        """Offer (n, C) rows, in stream order."""
        rows = rows.detach().reshape(-1, self.num_classes).to("cpu", torch.float16)
        n = rows.shape[0]
        fill = min(max(self.capacity - self.seen, 0), n)
        if fill:
            self._rows = torch.cat([self._rows, rows[:fill]])
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
                self._rows[slot[last]] = rows[src[last]]
        self.seen += n

    def rows(self) -> torch.Tensor:
        """(min(seen, capacity), C) float16 sampled rows."""
        return self._rows

    def batches(self, size: int = FIT_BATCH) -> Iterator[torch.Tensor]:
        """The sample as float32 (size, C) batches (a fresh pass each call)."""
        for start in range(0, self._rows.shape[0], size):
            yield self._rows[start : start + size].float()
