"""The codecs' own size models at a rate goal, with no archive around them.

Codec tests check ``for_target`` itself: the whole all-in budget of a
:class:`~labelzip.rate.RateGoal` goes to the codec (no header), so its own
explanation of an unreachable budget reaches the test unchanged. Archive-level
rate control is tested in tests/rate.
"""

from __future__ import annotations

from typing import Any

from labelzip.codecs.base import Codec
from labelzip.codecs.registry import codec_class
from labelzip.rate import RateGoal


def goal_bytes(
    *,
    num_labels: int,
    num_classes: int,
    ratio: float | None = None,
    bits_per_label: float | None = None,
    reference: str = "fp16",
) -> int:
    """The all-in bytes of a ratio or bits-per-label goal."""
    goal = RateGoal.of(ratio, bits_per_label, reference)
    assert goal is not None, "give a ratio or bits_per_label"
    return goal.total_bytes(num_labels, num_classes)


def sized_codec(
    name: str,
    *,
    num_labels: int,
    num_classes: int,
    ratio: float | None = None,
    bits_per_label: float | None = None,
    **options: Any,
) -> Codec:
    """The unfitted codec ``name`` its ``for_target`` picks for the whole goal."""
    budget = goal_bytes(
        num_labels=num_labels,
        num_classes=num_classes,
        ratio=ratio,
        bits_per_label=bits_per_label,
    )
    codec: Codec = codec_class(name).for_target(
        num_labels=num_labels, num_classes=num_classes, budget_bytes=budget, **options
    )
    return codec
