"""A seeded uniform sample of label rows from a stream of unknown length.

Fitting a learned codec on LM labels needs a sample of positions, but the labels
arrive batch by batch from the teacher and never fit in memory together. The
reservoir keeps at most ``capacity`` rows (in fp16: a 49k vocabulary makes each
row ~96 KB) and is, at every point, a uniform sample of the rows seen so far.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from labelzip.ops.reservoir import Reservoir

__all__ = ["FIT_BATCH", "PositionReservoir"]

FIT_BATCH = 1024  # rows per fit() batch (float32: V x 4 bytes each)


class PositionReservoir(Reservoir):
    """:class:`labelzip.ops.reservoir.Reservoir` of LM positions, stored in fp16.

    ``capacity x V x 2`` bytes at most; same seed and stream give the same sample.
    """

    def __init__(self, capacity: int, num_classes: int, seed: int = 0) -> None:
        super().__init__(capacity, num_classes, seed=seed, dtype=torch.float16)

    def batches(self, size: int = FIT_BATCH) -> Iterator[torch.Tensor]:
        """The sample as float32 (size, V) batches (a fresh pass each call)."""
        return super().batches(size)
