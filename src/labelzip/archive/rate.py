"""Rate control for whole archives: a codec chosen so the file on disk meets a target.

A target ratio or bits-per-label counts every byte of the archive. The header
(JSON, checksums, chunk table) and any side tensors come off the budget first;
with LPLD pruning the codec gets what is left for the kept labels only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from labelzip.accounting import StorageAccount, reference_bytes
from labelzip.archive.format import (
    DEFAULT_CHUNK_SIZE,
    DIGEST_BYTES,
    DIGESTS_NAME,
    MODEL_PREFIX,
    SIDE_PREFIX,
    ArchiveMetadata,
    ChunkTable,
    CodecEntry,
    Layout,
    build_header,
    chunk_name,
    container_prefix,
    static_order,
)
from labelzip.codecs.base import Codec, LabelContext, LogitSource
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import codec_class, create_codec, target_total_bytes
from labelzip.errors import ConfigError, UnreachableTargetError

__all__ = [
    "RATE_TOLERANCE",
    "UNFITTED_MODEL_ALLOWANCE",
    "codec_for_target",
    "configure_codec",
    "estimate_header_bytes",
    "fit_codec",
    "fit_for_target",
    "rate_note",
]

logger = logging.getLogger(__name__)

# An archive written for a rate target lands within this fraction of the target
# size, or its account carries a note (rate_note) saying why it cannot.
RATE_TOLERANCE = 0.10

# Header bytes reserved for the model tensor entries and fitted config fields of
# a codec that cannot list its model tensors before fit (about 8 tensors).
UNFITTED_MODEL_ALLOWANCE = 2048
# Config fields a codec may add when fitted (beyond its config and num_classes).
_FITTED_CONFIG_SLACK = 256
# Digits reserved per chunk size/offset in an estimate (files below 1 PB).
_OFFSET_DIGITS = 15


def _probe(codec: Codec | str, options: Mapping[str, Any]) -> tuple[type[Codec], Codec]:
    if isinstance(codec, str):
        return codec_class(codec), create_codec(codec, **options)
    return type(codec), codec


def _unfitted_parts(
    probe: Codec, num_classes: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor], int]:
    """Config, model tensors and allowance of a codec before fit."""
    config = {**probe.config.model_dump(), "num_classes": num_classes}
    planned = probe.planned_model_tensors(num_classes)
    if planned is not None:  # shapes known before fit (e.g. vqae-ctx)
        # A codec that can also bound its stored config (``planned_config``,
        # duck-typed: vqae-ctx) needs no slack for fitted config fields.
        bound = getattr(probe, "planned_config", None)
        stored = bound(num_classes) if callable(bound) else None
        if isinstance(stored, dict):
            return stored, planned, 0
        return config, planned, _FITTED_CONFIG_SLACK
    try:
        model = probe.model_tensors()
    except Exception:  # most learned codecs cannot list tensors before fit
        return config, {}, UNFITTED_MODEL_ALLOWANCE
    return (
        config,
        model,
        _FITTED_CONFIG_SLACK if not model else UNFITTED_MODEL_ALLOWANCE,
    )


def estimate_header_bytes(
    num_labels: int,
    chunk_size: int,
    codec: Codec | str,
    *,
    num_classes: int,
    layout: Layout | None = None,
    prune: PrunePlan | None = None,
    metadata: ArchiveMetadata | None = None,
    side_tensors: Mapping[str, torch.Tensor] | None = None,
    reference: str = "fp16",
    options: Mapping[str, Any] | None = None,
    max_file_bytes: int | None = None,
) -> int:
    """An estimate of an archive's header bytes (file size minus tensor bytes).

    Builds the real header with placeholder checksums and the widest offsets.
    For a fitted codec it is an upper bound. Before fit (a codec name plus
    ``options``, or an unfitted codec) the config is known but a learned codec's
    model tensors are not: 2 KiB stands in for them
    (:data:`UNFITTED_MODEL_ALLOWANCE`); :func:`fit_for_target` re-checks after fit.

    Args:
        num_labels: labels represented (pruned included).
        chunk_size: stored labels per chunk.
        codec: the codec, or its registry name.
        num_classes: C.
        layout, prune, metadata, side_tensors, reference: as given to the writer.
        options: codec options, when ``codec`` is a name.
        max_file_bytes: a bound on the file size (the rate target); chunk sizes
            and offsets then get its number of digits instead of 15. The
            estimate is an upper bound only for files within this bound.
    """
    layout = layout if layout is not None else Layout(("sample",), (num_labels,))
    if layout.num_labels != num_labels:
        raise ConfigError(f"layout holds {layout.num_labels} labels, not {num_labels}")
    num_stored = prune.num_kept if prune is not None else num_labels
    cls, probe = _probe(codec, options or {})
    if probe.is_fitted:
        config, model, allowance = probe.to_config(), probe.model_tensors(), 0
    else:
        config, model, allowance = _unfitted_parts(probe, num_classes)
    static = static_order(
        {
            **{MODEL_PREFIX + k: v for k, v in model.items()},
            **{SIDE_PREFIX + k: v for k, v in (side_tensors or {}).items()},
        }
    )
    full, rest = divmod(num_stored, chunk_size)
    chunk_labels = [chunk_size] * full + ([rest] if rest else [])
    names = [n for n, _ in static] + [chunk_name(i) for i in range(len(chunk_labels))]
    # Formats 2 and 3: a (T, 32) table of the tensors' digests (counted as header).
    digests = torch.zeros(len(names), DIGEST_BYTES, dtype=torch.uint8)
    static = static_order({**dict(static), DIGESTS_NAME: digests})
    header = build_header(
        codec=CodecEntry(name=cls.kind, id=cls.codec_id, config=config),
        num_classes=num_classes,
        layout=layout,
        chunks=ChunkTable(chunk_size, chunk_labels),
        prune=prune.to_dict() if prune is not None else None,
        metadata=metadata or ArchiveMetadata(),
        checksums={DIGESTS_NAME: "f" * 64},
        reference=reference,
    )
    # Chunk sizes/offsets written as 0 here; real ones have up to _OFFSET_DIGITS digits.
    prefix = container_prefix(header, static, [0] * len(chunk_labels))
    digits = _OFFSET_DIGITS
    if max_file_bytes is not None:
        digits = min(digits, len(str(max(1, max_file_bytes))))
    slack = len(chunk_labels) * 3 * (digits - 1)
    # + 7: alignment padding
    return len(prefix) + digests.numel() + slack + allowance + 7


def codec_for_target(
    name: str,
    *,
    layout: Layout,
    num_classes: int,
    ratio: float | None = None,
    bits_per_label: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    prune: PrunePlan | None = None,
    metadata: ArchiveMetadata | None = None,
    side_bytes: int = 0,
    header_bytes: int | None = None,
    reference: str = "fp16",
    **options: Any,
) -> Codec:
    """An unfitted codec whose archive, header included, meets a rate target.

    The target (``ratio`` against ``reference`` dense logits, or all-in
    ``bits_per_label``) counts every represented label; the header (estimated
    with :func:`estimate_header_bytes` unless ``header_bytes`` is given) and
    ``side_bytes`` come off the budget, and with ``prune`` the codec gets what is
    left for the kept labels only.

    Raises:
        UnreachableTargetError: no configuration fits; names the best reachable
            all-in ratio and bits per label.
    """
    num_labels = layout.num_labels
    total = target_total_bytes(
        num_labels=num_labels,
        num_classes=num_classes,
        ratio=ratio,
        bits_per_label=bits_per_label,
        reference=reference,
    )
    if total <= 0:
        ref = reference_bytes(num_labels, num_classes, reference)
        raise UnreachableTargetError(
            f"the target leaves {total} bytes for {num_labels} labels "
            f"({ref} bytes of dense {reference}): the ratio is too high for so few "
            "labels; choose a lower ratio or store more labels"
        )
    if header_bytes is None:
        header_bytes = estimate_header_bytes(
            num_labels,
            chunk_size,
            name,
            num_classes=num_classes,
            layout=layout,
            prune=prune,
            metadata=metadata,
            reference=reference,
            options=options,
            max_file_bytes=total,
        )
    overhead = header_bytes + side_bytes
    budget = total - overhead
    cls = codec_class(name)
    num_stored = prune.num_kept if prune is not None else num_labels
    cause: UnreachableTargetError | None = None
    if budget > 0:
        try:
            return cls.for_target(
                num_labels=num_stored,
                num_classes=num_classes,
                budget_bytes=budget,
                **options,
            )
        except UnreachableTargetError as exc:
            cause = exc
    best = _smallest_budget(cls, num_stored, num_classes, options)
    ref = reference_bytes(num_labels, num_classes, reference)
    pruned = f" with {num_stored} of {num_labels} labels kept" if prune else ""
    alone = (
        f"; header and side information alone take {overhead}" if budget <= 0 else ""
    )
    head = (
        f"no {name} configuration{pruned} fits the target of {total} bytes "
        f"({ref / total:.2f}x vs {reference}{alone})"
    )
    if best is None:
        raise UnreachableTargetError(f"{head}: {cause}") from cause
    best_total = best + overhead
    raise UnreachableTargetError(
        f"{head}; the best reachable is {ref / best_total:.2f}x all-in "
        f"({8 * best_total / num_labels:.1f} bits per label, {overhead} bytes of it "
        "header); choose a lower ratio or another codec"
    ) from cause


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


def configure_codec(
    name: str,
    options: Mapping[str, Any],
    *,
    target: Mapping[str, Any] | None = None,
) -> Codec:
    """The unfitted codec ``name``: as configured, or chosen for ``target``.

    The one place a command's fixed-or-targeted choice is made before a fit:
    without ``target`` the codec is built from ``options``; with one (the
    arguments of :func:`codec_for_target`) rate control picks the options left
    open.
    """
    if target is None:
        return create_codec(name, **options)
    return codec_for_target(name, **target, **options)


def fit_codec(
    name: str,
    source: LogitSource,
    options: Mapping[str, Any],
    *,
    num_labels: int,
    target: Mapping[str, Any] | None = None,
    context: LabelContext | None = None,
) -> Codec:
    """The codec ``name`` with ``options``, fitted on ``source``.

    Without ``target`` it is built as configured and fitted for ``num_labels``
    labels. With one (the arguments of :func:`fit_for_target`: ``ratio`` or
    ``bits_per_label``, ``layout``, ``num_classes`` and what else the archive
    adds), rate control chooses the options left open, then fits. ``context``
    is the view context of the source rows (context codecs; others ignore it).
    Every command that fits a codec for an archive goes through here.
    """
    if target is None:
        return create_codec(name, **options).fit_in_context(
            source, context, num_labels=num_labels
        )
    return fit_for_target(name, source, **target, context=context, **options)


def fit_for_target(
    name: str,
    source: LogitSource,
    *,
    layout: Layout,
    num_classes: int,
    ratio: float | None = None,
    bits_per_label: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    prune: PrunePlan | None = None,
    metadata: ArchiveMetadata | None = None,
    side_bytes: int = 0,
    reference: str = "fp16",
    context: LabelContext | None = None,
    **options: Any,
) -> Codec:
    """:func:`codec_for_target`, then fit on ``source`` (the labels to be stored).

    ``context`` is the view context of the source rows, for context codecs
    (``vqae-ctx``); their prototypes count in the model bytes like any weights.

    After fit the header is re-estimated from the real config and model tensors;
    if it outgrew the estimate the codec is chosen and fitted again with the
    larger header (at most twice), so the archive meets the target.
    """
    shared: dict[str, Any] = {
        "layout": layout,
        "num_classes": num_classes,
        "prune": prune,
        "metadata": metadata,
        "reference": reference,
    }
    num_labels = layout.num_labels
    num_stored = prune.num_kept if prune is not None else num_labels
    total = target_total_bytes(
        num_labels=num_labels,
        num_classes=num_classes,
        ratio=ratio,
        bits_per_label=bits_per_label,
        reference=reference,
    )
    bound = total if total > 0 else None
    header = estimate_header_bytes(
        num_labels, chunk_size, name, **shared, options=options, max_file_bytes=bound
    )
    for attempt in range(3):
        codec = codec_for_target(
            name,
            ratio=ratio,
            bits_per_label=bits_per_label,
            chunk_size=chunk_size,
            side_bytes=side_bytes,
            header_bytes=header,
            **shared,
            **options,
        )
        codec.fit_in_context(source, context, num_labels=num_stored)
        actual = estimate_header_bytes(
            num_labels, chunk_size, codec, **shared, max_file_bytes=bound
        )
        if actual <= header:
            return codec
        logger.info(
            "header %d > estimate %d; re-choosing (try %d)", actual, header, attempt
        )
        header = actual + 64 * (attempt + 1)
    logger.warning("%s archive header may exceed the rate target by a few bytes", name)
    return codec


def rate_note(
    account: StorageAccount,
    codec: Codec,
    *,
    ratio: float | None = None,
    bits_per_label: float | None = None,
) -> str | None:
    """One line when an archive misses its rate target by more than 10%.

    Rate control takes the largest configuration that fits; a codec whose size
    moves in coarse steps (top-k's K, RS-KD's S, dense's dtype) can still land
    well under the target. The line gives the size reached, the target, and the
    codec's own reason (:meth:`~labelzip.codecs.base.Codec.rate_limit`).

    Returns:
        ``None`` when the archive is within :data:`RATE_TOLERANCE` of the target.
    """
    target = target_total_bytes(
        num_labels=account.num_labels,
        num_classes=account.num_classes,
        ratio=ratio,
        bits_per_label=bits_per_label,
        reference=account.reference,
    )
    total = account.total_bytes
    if target > 0 and abs(total - target) <= RATE_TOLERANCE * target:
        return None
    side = "under" if total < target else "over"
    gap = abs(total - target) / max(target, 1)
    asked = f"{ratio:g}x" if ratio is not None else f"{bits_per_label:g} bits per label"
    got = (
        f"{account.ratio:.2f}x"
        if ratio is not None
        else f"{account.bits_per_label:.1f} bits per label"
    )
    reason = (
        codec.rate_limit()
        if total < target
        else "its encoded size exceeded the size rate control estimated"
    )
    return (
        f"{codec.kind} reaches {got} ({total} bytes), {gap:.0%} {side} the "
        f"{asked} target ({target} bytes): {reason}"
    )
