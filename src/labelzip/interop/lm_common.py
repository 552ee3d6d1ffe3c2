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
    "LOGPROB_FLOOR",
    "RECORD_LABELS",
    "check_ids",
    "decoded_topk",
    "lm_layout",
    "pieces",
    "vocabulary",
]

# Labels per record at most: one densified record is RECORD_LABELS x V float32
# (512 x 49,152 x 4 bytes = 96 MiB for SmolLM2's vocabulary).
RECORD_LABELS = 512

# Smallest log-probability an export writes: decoders may give classes no mass
# (-inf), which the frameworks' losses turn into NaN (0 * -inf); e^-100 is 0 to
# them all the same.
LOGPROB_FLOOR = -100.0


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
        return Layout(
            ("sequence", "position"), (len(labels_per_sequence), lengths.pop())
        )
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


def decoded_topk(dense: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k log-probabilities (at least :data:`LOGPROB_FLOOR`) and their ids
    of (N, C) decoded labels: what an export of a re-encoded archive writes."""
    logprobs = torch.log_softmax(dense.float(), dim=1).clamp(min=LOGPROB_FLOOR)
    values, ids = logprobs.topk(k, dim=1)
    return values, ids
