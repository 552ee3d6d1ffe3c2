"""Rate-distortion measurement of codecs on a real label set.

Every point is an archive really written to disk: the all-in size is the file
size (payload + model + header + side), the codec is chosen by rate control for
the target ratio, fitted on the labels it stores (the encoder is not shipped, so
fitting on the stored labels is what a user does), and the fidelity is measured
on the decoded archive against the teacher's logits at each KD temperature.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from labelzip.archive import ArchiveReader, Layout, save_archive
from labelzip.codecs.prune import PrunePlan
from labelzip.errors import UnreachableTargetError
from labelzip.ops.metrics import kl_divergence, top1_agreement, topk_overlap
from labelzip.outputs import scratch_folder
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec

__all__ = [
    "CodecSpec",
    "FidelityRow",
    "fidelity_scores",
    "measure_point",
    "rate_distortion",
]

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURES = (1.0, 4.0, 20.0)


def fidelity_scores(
    reference: torch.Tensor, decoded: torch.Tensor, temperatures: Sequence[float]
) -> tuple[dict[str, float], float, float]:
    """Mean KL per temperature (keys ``T1``, ``T4``...), top-1 agreement, top-5 overlap.

    Both (N, C); every fidelity table in the benchmarks uses these three numbers.
    """
    kl = {
        f"T{t:g}": float(kl_divergence(reference, decoded, temperature=t).mean())
        for t in temperatures
    }
    top1 = top1_agreement(reference, decoded)
    return kl, top1, topk_overlap(reference, decoded, k=5)


@dataclass(frozen=True)
class CodecSpec:
    """One curve of the benchmark: a codec name, fixed options, optional pruning.

    ``prune_keep`` makes the point LPLD-style: the inner codec stores only that
    fraction of the views (pruned views reuse a kept view's label).
    """

    label: str
    codec: str
    options: dict[str, Any] = field(default_factory=dict)
    prune_keep: float | None = None


@dataclass(frozen=True)
class FidelityRow:
    """One measured point: all-in size and fidelity of a codec at a target ratio."""

    label: str
    codec: str
    target_ratio: float | None
    ratio: float
    bits_per_label: float
    total_bytes: int
    payload_bytes: int
    model_bytes: int
    header_bytes: int
    kl: dict[str, float]
    top1: float
    top5: float
    fit_s: float
    encode_labels_per_s: float
    decode_labels_per_s: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timed_decode(path: str, repeats: int) -> tuple[torch.Tensor, float]:
    """Decode a whole archive ``repeats`` times; the median labels/s and the result."""
    rates = []
    decoded = torch.empty(0)
    for _ in range(repeats):
        with ArchiveReader(path) as reader:
            start = time.perf_counter()
            decoded = torch.cat(list(reader.decode_all()))
            rates.append(decoded.shape[0] / (time.perf_counter() - start))
    return decoded, statistics.median(rates)


def measure_point(
    spec: CodecSpec,
    logits: torch.Tensor,
    *,
    ratio: float | None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    workdir: str | None = None,
    decode_repeats: int = 3,
) -> FidelityRow:
    """Write one archive of ``logits`` (N, E, C) with ``spec`` at ``ratio`` and measure it.

    ``ratio=None`` uses the codec's fixed options (no rate control).

    Raises:
        UnreachableTargetError: the codec cannot reach ``ratio`` on this label set.
    """
    if logits.dim() == 2:
        logits = logits.unsqueeze(1)
    num_classes = logits.shape[-1]
    layout = Layout.for_shape(logits.shape[:-1])
    rows = logits.reshape(-1, num_classes).float()
    prune = (
        PrunePlan(layout.dims, layout.shape, spec.prune_keep)
        if spec.prune_keep is not None
        else None
    )
    stored = rows[prune.kept_indices()] if prune is not None else rows

    def batches() -> list[torch.Tensor]:
        return list(stored.split(4096))

    start = time.perf_counter()
    target = ArchiveTarget.of(RateGoal.of(ratio), layout, num_classes, prune=prune)
    codec = fit_codec(
        spec.codec, batches, spec.options, num_labels=stored.shape[0], target=target
    )
    fit_s = time.perf_counter() - start
    with scratch_folder(workdir or tempfile.gettempdir(), "labelzip-fidelity") as tmp:
        path = os.path.join(tmp, "labels.lz")
        start = time.perf_counter()
        account = save_archive(path, codec, logits, layout=layout, prune=prune)
        encode_rate = rows.shape[0] / (time.perf_counter() - start)
        if account.total_bytes != os.path.getsize(path):
            raise AssertionError("archive account disagrees with the file size")
        decoded, decode_rate = _timed_decode(path, decode_repeats)
    kl, top1, top5 = fidelity_scores(rows, decoded, temperatures)
    return FidelityRow(
        label=spec.label,
        codec=spec.codec,
        target_ratio=ratio,
        ratio=account.ratio,
        bits_per_label=account.bits_per_label,
        total_bytes=account.total_bytes,
        payload_bytes=account.payload_bytes,
        model_bytes=account.model_bytes,
        header_bytes=account.header_bytes,
        kl=kl,
        top1=top1,
        top5=top5,
        fit_s=fit_s,
        encode_labels_per_s=encode_rate,
        decode_labels_per_s=decode_rate,
        config=codec.to_config(),
    )


def rate_distortion(
    specs: Sequence[CodecSpec],
    logits: torch.Tensor,
    ratios: Sequence[float],
    *,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    on_point: Any = None,
) -> tuple[list[FidelityRow], list[dict[str, Any]]]:
    """Measure every spec at every target ratio.

    Returns:
        The measured rows, and the (spec, ratio, reason) of targets a codec
        cannot reach (reported, not hidden).
    """
    rows: list[FidelityRow] = []
    skipped: list[dict[str, Any]] = []
    for spec in specs:
        for ratio in ratios:
            try:
                row = measure_point(
                    spec, logits, ratio=ratio, temperatures=temperatures
                )
            except UnreachableTargetError as exc:
                skipped.append(
                    {"label": spec.label, "ratio": ratio, "reason": str(exc)}
                )
                logger.info("%s at %gx: %s", spec.label, ratio, exc)
                continue
            rows.append(row)
            if on_point is not None:
                on_point(row)
    return rows, skipped
