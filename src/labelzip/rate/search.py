"""Bisection over a codec's size: the largest parameter whose size fits a budget.

A codec's size model (``for_target``) often has one whole-number knob whose
size grows with it (top-k's K). :func:`largest_fitting` finds the largest value
that fits, and names the best reachable rate when none does, in the same words
for every codec. It imports no codec: codecs call it from their size models.
"""

from __future__ import annotations

from collections.abc import Callable

from labelzip.accounting import reference_bytes
from labelzip.errors import UnreachableTargetError

__all__ = ["bisect_largest", "largest_fitting"]


def bisect_largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``p`` in ``[lo, hi]`` with ``fits(p)``, given ``fits(lo)``.

    ``fits`` must be monotone (true up to some value, false after it).
    """
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def largest_fitting(
    size: Callable[[int], int],
    budget_bytes: int,
    *,
    lo: int,
    hi: int,
    fixed: int | None = None,
    num_labels: int,
    num_classes: int,
    subject: Callable[[int], str],
    detail: str = "",
    advice: str = "choose a lower ratio",
) -> int:
    """The largest ``p`` in ``[lo, hi]`` with ``size(p) <= budget_bytes``.

    ``size`` must not decrease with ``p``. A ``fixed`` value (the user's own) is
    returned if it fits, and otherwise refused.

    Args:
        subject: the configuration's name for a value, for the error
            (``lambda k: f"topk k={k}"``).
        detail: what the size holds, in parentheses after it (or empty).
        advice: the last clause of the error.

    Raises:
        UnreachableTargetError: nothing fits; names the bytes the smallest
            candidate needs and the best reachable ratio and bits per label.
    """
    smallest = lo if fixed is None else fixed
    if size(smallest) <= budget_bytes:
        if fixed is not None:
            return fixed
        return bisect_largest(lambda p: size(p) <= budget_bytes, lo, hi)
    need = size(smallest)
    ref = reference_bytes(num_labels, num_classes, "fp16")
    raise UnreachableTargetError(
        f"{subject(smallest)} needs {need} bytes for {num_labels} labels{detail} "
        f"but the budget is {budget_bytes}; the best reachable "
        f"ratio is {ref / need:.2f}x vs fp16 "
        f"({8 * need / max(num_labels, 1):.1f} bits per label); {advice}"
    )
