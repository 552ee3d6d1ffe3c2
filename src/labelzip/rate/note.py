"""The note an archive's account carries when it misses its rate target."""

from __future__ import annotations

from labelzip.accounting import StorageAccount
from labelzip.codecs.base import Codec
from labelzip.rate.target import RateGoal

__all__ = ["RATE_TOLERANCE", "rate_note"]

# An archive written for a rate target lands within this fraction of the target
# size, or its account carries a note (rate_note) saying why it cannot.
RATE_TOLERANCE = 0.10


def rate_note(account: StorageAccount, codec: Codec, goal: RateGoal) -> str | None:
    """One line when an archive misses ``goal`` by more than 10%.

    Rate control takes the largest configuration that fits; a codec whose size
    moves in coarse steps (top-k's K, RS-KD's S, dense's dtype) can still land
    well under the target. The line gives the size reached, the target, and the
    codec's own reason (:meth:`~labelzip.codecs.base.Codec.rate_limit`).

    Returns:
        ``None`` when the archive is within :data:`RATE_TOLERANCE` of the target.
    """
    target = goal.total_bytes(account.num_labels, account.num_classes)
    total = account.total_bytes
    if target > 0 and abs(total - target) <= RATE_TOLERANCE * target:
        return None
    side = "under" if total < target else "over"
    gap = abs(total - target) / max(target, 1)
    got = (
        f"{account.ratio:.2f}x"
        if goal.ratio is not None
        else f"{account.bits_per_label:.1f} bits per label"
    )
    reason = (
        codec.rate_limit()
        if total < target
        else "its encoded size exceeded the size rate control estimated"
    )
    return (
        f"{codec.kind} reaches {got} ({total} bytes), {gap:.0%} {side} the "
        f"{goal.describe()} target ({target} bytes): {reason}"
    )
