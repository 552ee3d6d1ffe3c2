"""The one place a codec is configured and fitted, as given or for a rate target.

:func:`fit_codec` is what every command calls to fit the codec of an archive:
without a target the codec is built from its options; with an
:class:`~labelzip.rate.budget.ArchiveTarget` the header and side bytes come off
the budget, the codec's own size model (``for_target``) picks the options left
open, and after fit the header is checked again. :func:`configure_codec` is the
same choice without the fit (to probe a target, or to fit later).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from labelzip.codecs.base import Codec, LabelContext, LogitSource
from labelzip.codecs.registry import codec_class, create_codec
from labelzip.errors import ConfigError, UnreachableTargetError
from labelzip.rate.budget import ArchiveTarget
from labelzip.rate.header import target_header_bytes

__all__ = ["configure_codec", "fit_codec"]

logger = logging.getLogger(__name__)


def configure_codec(
    name: str, options: Mapping[str, Any], target: ArchiveTarget | None = None
) -> Codec:
    """The unfitted codec ``name``: as configured, or chosen for ``target``.

    With a target, the budget is the goal's all-in bytes less the header
    (``target.header_bytes``, estimated when ``None``) and ``side_bytes``; with
    ``prune`` the codec gets it for the kept labels only.

    Raises:
        ConfigError: invalid options.
        UnreachableTargetError: no configuration fits; names the best reachable
            all-in ratio and bits per label.
    """
    if target is None:
        return create_codec(name, **options)
    total = target.total_bytes
    num_labels = target.num_labels
    if total <= 0:
        reference = target.goal.reference
        raise UnreachableTargetError(
            f"the target leaves {total} bytes for {num_labels} labels "
            f"({target.reference_bytes} bytes of dense {reference}): the ratio is "
            "too high for so few labels; choose a lower ratio or store more labels"
        )
    header = target.header_bytes
    if header is None:
        header = target_header_bytes(name, options, target)
    overhead = header + target.side_bytes
    budget = total - overhead
    cls = codec_class(name)
    num_stored = target.num_stored
    cause: UnreachableTargetError | None = None
    if budget > 0:
        try:
            return cls.for_target(
                num_labels=num_stored,
                num_classes=target.num_classes,
                budget_bytes=budget,
                **options,
            )
        except UnreachableTargetError as exc:
            cause = exc
    raise _unreachable(name, options, target, overhead, budget, cause) from cause


def fit_codec(
    name: str,
    source: LogitSource,
    options: Mapping[str, Any],
    *,
    num_labels: int | None = None,
    target: ArchiveTarget | None = None,
    context: LabelContext | None = None,
) -> Codec:
    """The codec ``name`` with ``options``, fitted on ``source``.

    Without ``target`` it is built as configured and fitted for ``num_labels``
    labels (required then). With one, :func:`configure_codec` chooses the options left open and
    the codec is fitted for the target's stored labels; the header is then
    re-estimated from the real config and model tensors, and if it outgrew the
    estimate the codec is chosen and fitted again with the larger header (at
    most twice), so the archive meets the target. ``context`` is the view
    context of the source rows (context codecs; others ignore it).
    """
    if target is None:
        if num_labels is None:
            raise ConfigError("a fixed configuration is fitted for num_labels labels")
        return create_codec(name, **options).fit_in_context(
            source, context, num_labels=num_labels
        )
    header = target.header_bytes
    if header is None:
        header = target_header_bytes(name, options, target)
    for attempt in range(3):
        codec = configure_codec(name, options, target.replace(header_bytes=header))
        codec.fit_in_context(source, context, num_labels=target.num_stored)
        actual = target_header_bytes(codec, {}, target)
        if actual <= header:
            return codec
        logger.info(
            "header %d > estimate %d; re-choosing (try %d)", actual, header, attempt
        )
        header = actual + 64 * (attempt + 1)
    logger.warning("%s archive header may exceed the rate target by a few bytes", name)
    return codec


def _unreachable(
    name: str,
    options: Mapping[str, Any],
    target: ArchiveTarget,
    overhead: int,
    budget: int,
    cause: UnreachableTargetError | None,
) -> UnreachableTargetError:
    """The error of a target no configuration meets, with the best reachable."""
    cls = codec_class(name)
    num_labels, num_stored = target.num_labels, target.num_stored
    total, ref = target.total_bytes, target.reference_bytes
    best = _smallest_budget(cls, num_stored, target.num_classes, options)
    pruned = f" with {num_stored} of {num_labels} labels kept" if target.prune else ""
    alone = (
        f"; header and side information alone take {overhead}" if budget <= 0 else ""
    )
    head = (
        f"no {name} configuration{pruned} fits the target of {total} bytes "
        f"({ref / total:.2f}x vs {target.goal.reference}{alone})"
    )
    if best is None:
        return UnreachableTargetError(f"{head}: {cause}")
    best_total = best + overhead
    return UnreachableTargetError(
        f"{head}; the best reachable is {ref / best_total:.2f}x all-in "
        f"({8 * best_total / num_labels:.1f} bits per label, {overhead} bytes of it "
        "header); choose a lower ratio or another codec"
    )


def _smallest_budget(
    cls: type[Codec], num_labels: int, num_classes: int, options: Mapping[str, Any]
) -> int | None:
    """The least budget ``for_target`` accepts (binary search; None if none does)."""

    def fits(budget: int) -> bool:
        try:
            cls.for_target(
                num_labels=num_labels,
                num_classes=num_classes,
                budget_bytes=budget,
                **options,
            )
        except UnreachableTargetError:
            return False
        return True

    hi = max(1, num_labels * num_classes)
    while not fits(hi):
        hi *= 2
        if hi > 1 << 60:
            return None
    lo = 0  # lo never fits, hi always does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
