"""The header bytes of an archive, estimated before it is written.

A rate target counts the header (JSON, checksums, chunk table), so rate control
takes it off the budget before a codec chooses its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from labelzip.archive.format import (
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
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import codec_class, create_codec
from labelzip.errors import ConfigError
from labelzip.rate.budget import ArchiveTarget

__all__ = ["UNFITTED_MODEL_ALLOWANCE", "estimate_header_bytes", "target_header_bytes"]

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
    (:data:`UNFITTED_MODEL_ALLOWANCE`); :func:`~labelzip.rate.fit.fit_codec` re-checks after fit.

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


def target_header_bytes(
    codec: Codec | str,
    options: Mapping[str, Any] | None,
    target: ArchiveTarget,
) -> int:
    """:func:`estimate_header_bytes` of ``target``'s archive, bounded by its budget.

    ``options`` are the codec options when ``codec`` is a name.
    """
    total = target.total_bytes
    return estimate_header_bytes(
        target.num_labels,
        target.chunk_size,
        codec,
        num_classes=target.num_classes,
        layout=target.layout,
        prune=target.prune,
        metadata=target.metadata,
        reference=target.goal.reference,
        options=options,
        max_file_bytes=total if total > 0 else None,
    )
