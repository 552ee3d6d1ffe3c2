"""LPLD pruning as a rate decision: the most views per image that meet a target.

When a codec cannot meet a target with a label for every view (at 40x a
10-class label has 4 bits in all), LPLD's answer is to store labels for fewer
views per image and reuse them. :func:`auto_prune_plan` keeps the most views
per image (k of E) at which the codec's own rate control still meets the
target, so every baseline can be compared at equal bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from labelzip.codecs.prune import REUSE_DIMS, PrunePlan
from labelzip.errors import ConfigError, UnreachableTargetError
from labelzip.rate.budget import ArchiveTarget
from labelzip.rate.fit import configure_codec
from labelzip.rate.search import bisect_largest

__all__ = ["SIDE_ENTRY_BYTES", "auto_prune_plan", "side_entry_bytes"]

logger = logging.getLogger(__name__)

# Header bytes a side tensor adds beyond its data: its safetensors entry (dtype,
# shape, offsets) and its sha256 in the (JSON-escaped) labelzip document.
SIDE_ENTRY_BYTES = 200


def side_entry_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """An allowance for the header bytes of side tensors (names count twice)."""
    return sum(SIDE_ENTRY_BYTES + 2 * len(name) for name in tensors)


def auto_prune_plan(
    codec: str,
    target: ArchiveTarget,
    *,
    side_bytes_per_label: int = 0,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
) -> PrunePlan | None:
    """The LPLD plan with the most kept views per image that meets ``target``.

    ``target.side_bytes`` is the fixed part of the side information (its header
    entries); ``side_bytes_per_label`` is added per stored label. ``target.prune``
    is ignored (this chooses it).

    Returns ``None`` when the codec meets the target without pruning. Tries
    k = E/2, E/4, ..., 1 until one fits, then bisects up to the largest k that
    fits (fewer kept labels never need more bytes; a codec may still refuse a
    budget far above what its model can use, hence the halving first).

    Raises:
        ConfigError: the layout has no ``epoch``/``view`` dimension.
        UnreachableTargetError: not even one view per image fits; the message
            carries the codec's own explanation.
    """
    layout = target.layout
    found = [d for d in layout.dims if d in REUSE_DIMS]
    if len(found) != 1:
        raise ConfigError(
            f"auto-prune needs one 'epoch' or 'view' dimension, layout has "
            f"{list(layout.dims)}; name a logits file's dims with --dims (e.g. "
            "sample,view)"
        )
    views = layout.shape[layout.dims.index(found[0])]

    def attempt(kept: int) -> UnreachableTargetError | None:
        plan = _plan(target, kept, views, seed)
        stored = plan.num_kept if plan is not None else layout.num_labels
        side = stored * side_bytes_per_label + target.side_bytes
        try:
            configure_codec(
                codec, options or {}, target.replace(prune=plan, side_bytes=side)
            )
        except UnreachableTargetError as exc:
            return exc
        return None

    if attempt(views) is None:
        return None
    # Halve until something fits, then bisect between that and the next larger
    # kept count tried. Codecs whose own rate control refuses very generous
    # budgets (a fixed-size model with too few labels) still find their range.
    failed = views
    for kept in _halvings(views):
        error = attempt(kept)
        if error is None:
            break
        failed = kept
    else:
        raise UnreachableTargetError(
            f"{codec} cannot meet the target even with the label of 1 of {views} "
            f"views per image stored: {error}"
        ) from error
    best = bisect_largest(lambda k: attempt(k) is None, kept, failed - 1)
    logger.info("%s: auto-prune keeps %d of %d views per image", codec, best, views)
    return _plan(target, best, views, seed)


def _halvings(views: int) -> list[int]:
    """views // 2, views // 4, ..., 1 (distinct, decreasing)."""
    out: list[int] = []
    kept = views // 2
    while kept >= 1:
        out.append(kept)
        kept //= 2
    if not out or out[-1] != 1:
        out.append(1)
    return out


def _plan(target: ArchiveTarget, kept: int, views: int, seed: int) -> PrunePlan | None:
    if kept >= views:
        return None
    layout = target.layout
    return PrunePlan(layout.dims, layout.shape, kept / views, seed)
