"""What the LM capture formats (DistillKit, Megatron-LM, NeMo-Aligner) share.

An LM label is one position's next-token distribution over a vocabulary of tens
of thousands of tokens, so a record that a lossy codec densifies costs
``labels x V x 4`` bytes: records hold at most :data:`RECORD_LABELS` labels (a
long sequence becomes several consecutive records). Label order is always
sequence, then position; the layout is ``("sequence", "position")`` when every
sequence has the same number of labels, else ``("token",)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from labelzip.archive.format import Layout
from labelzip.errors import InputError

__all__ = [
    "RECORD_LABELS",
    "check_ids",
    "lm_layout",
    "pieces",
    "vocabulary",
]

# Labels per record at most: one densified record is RECORD_LABELS x V float32
# (512 x 49,152 x 4 bytes = 96 MiB for SmolLM2's vocabulary).
RECORD_LABELS = 512


def pieces(count: int, limit: int = RECORD_LABELS) -> Iterator[slice]:
    """Consecutive slices of at most ``limit`` covering ``range(count)``."""
    for start in range(0, count, limit):
        yield slice(start, min(start + limit, count))


def lm_layout(labels_per_sequence: Sequence[int]) -> Layout:
    """``("sequence", "position")`` when all sequences are equally long, else flat.

    Raises:
        InputError: no labels at all.
    """
    total = int(sum(labels_per_sequence))
    if total < 1:
        raise InputError("the store holds no labels")
    lengths = set(labels_per_sequence)
    if len(lengths) == 1:
        return Layout(("sequence", "position"), (len(labels_per_sequence), lengths.pop()))
    return Layout(("token",), (total,))


def vocabulary(given: int | None, largest_id: int, what: str) -> int:
    """V: the one the user gave (checked against the ids), else the largest id + 1.

    Raises:
        InputError: an id at or above the given V.
    """
    if given is None:
        return max(largest_id + 1, 2)
    if largest_id >= given:
        raise InputError(
            f"{what} holds token id {largest_id}, outside --num-classes {given}"
        )
    return given


def check_ids(ids: torch.Tensor, num_classes: int, where: str) -> None:
    """InputError naming ``where`` unless every id lies in ``[0, num_classes)``."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise InputError(
            f"{where}: token ids {int(ids.min())}..{int(ids.max())} outside the "
            f"vocabulary of {num_classes}"
        )
