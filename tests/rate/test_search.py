"""The bisection the codecs' size models share."""

from __future__ import annotations

import pytest

from labelzip.errors import UnreachableTargetError
from labelzip.rate import bisect_largest, largest_fitting


@pytest.mark.parametrize("limit", [1, 2, 3, 17, 99, 100])
def test_bisect_largest_finds_the_last_true(limit: int) -> None:
    calls: list[int] = []

    def fits(p: int) -> bool:
        calls.append(p)
        return p <= limit

    assert bisect_largest(fits, 1, 100) == limit
    assert len(calls) <= 8  # log2(100) probes, not a scan


def _size(k: int) -> int:
    return 10 + 4 * k  # 10 bytes of model, 4 per k


def _fit(budget: int, **kwargs: object) -> int:
    return largest_fitting(
        _size,
        budget,
        lo=1,
        hi=50,
        num_labels=8,
        num_classes=50,
        subject=lambda k: f"toy k={k}",
        **kwargs,  # type: ignore[arg-type]
    )


def test_largest_fitting_takes_the_largest_that_fits() -> None:
    assert _fit(10 + 4 * 7) == 7
    assert _fit(10 + 4 * 7 + 3) == 7
    assert _fit(10_000) == 50  # capped at hi


def test_a_fixed_value_is_kept_when_it_fits_and_refused_when_not() -> None:
    assert _fit(10_000, fixed=3) == 3
    with pytest.raises(UnreachableTargetError, match="toy k=9 needs 46 bytes"):
        _fit(45, fixed=9)


def test_nothing_fits_names_the_best_reachable_rate() -> None:
    with pytest.raises(UnreachableTargetError) as info:
        _fit(13, detail=" (10 of them the model)", advice="choose another codec")
    message = str(info.value)
    # 8 labels x 50 classes x 2 bytes = 800 reference bytes; k=1 needs 14
    assert message == (
        "toy k=1 needs 14 bytes for 8 labels (10 of them the model) but the budget "
        "is 13; the best reachable ratio is 57.14x vs fp16 (14.0 bits per label); "
        "choose another codec"
    )
