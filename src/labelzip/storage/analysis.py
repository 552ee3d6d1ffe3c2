"""The storage table: images, labels, side info, model and header bytes per framework.

``storage_table`` answers "what does a user download?" for a distilled image
dataset; ``lm_storage_table`` does the same for LM distillation, where one label
is one next-token distribution. Both return :class:`StorageRow` objects, one per
(IPC or token count, framework) with exact integer byte counts, so benchmarks can
use them directly and the CLI only formats them.

Example:
    >>> rows = storage_table(dataset="imagenet-1k", framework="sre2l", ipc=[10])
    >>> round(rows[0].label_total_bytes / 2**30, 2)
    5.67
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from pydantic import ValidationError

from labelzip.errors import ConfigError
from labelzip.storage.datasets import (
    DatasetSpec,
    get_dataset,
    image_bytes_per_image,
)
from labelzip.storage.frameworks import get_framework
from labelzip.storage.options import CostInputs, LabelCost, StorageOptions

__all__ = [
    "UNITS",
    "StorageRow",
    "format_bytes",
    "lm_storage_table",
    "make_options",
    "storage_table",
]

# Unit name -> bytes; "auto" picks a binary unit per value when formatting.
UNITS: dict[str, int] = {
    "bytes": 1,
    "KB": 10**3,
    "KiB": 2**10,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
    "TB": 10**12,
    "TiB": 2**40,
}


@dataclass(frozen=True)
class StorageRow:
    """All bytes one framework ships for one dataset size.

    Attributes:
        dataset: dataset preset name, ``"custom"`` or ``"lm"``.
        framework: framework (``"rded-online"``/``"rded-materialised"`` for RDED).
        num_classes: C (the vocabulary V in LM mode).
        ipc: images per class, or None in LM mode.
        epochs: E, the number of labelled views per image (1 in LM mode).
        num_images: distilled images, C x IPC (0 in LM mode).
        num_labels: labels the student consumes: images x epochs, or tokens.
        stored_labels: labels actually stored (pruned frameworks keep fewer;
            0 when labels are computed online).
        image_bytes: the distilled images.
        label_bytes: per-label payload (logits, top-k entries, codec indices).
        side_bytes: augmentation side info and image<->label maps.
        model_bytes: stored once: codec decoder/codebook, or RDED's teacher.
        header_bytes: container overhead (torch.save files, archive header).
        augment: "stored", "seed", "online" or "none".
        reference_bytes: dense fp16 logits for every consumed label (N x E x C x 2).
        ratio_vs_first: label_total of the first framework at the same IPC over
            this one's (None for a single framework or a zero denominator).
        notes: how the numbers were obtained.
    """

    dataset: str
    framework: str
    num_classes: int
    ipc: int | None
    epochs: int
    num_images: int
    num_labels: int
    stored_labels: int
    image_bytes: int
    label_bytes: int
    side_bytes: int
    model_bytes: int
    header_bytes: int
    augment: str
    reference_bytes: int
    ratio_vs_first: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def label_total_bytes(self) -> int:
        """Everything but the images: payload + side + model + header."""
        return self.label_bytes + self.side_bytes + self.model_bytes + self.header_bytes

    @property
    def total_bytes(self) -> int:
        """What a user downloads: images plus label_total_bytes."""
        return self.image_bytes + self.label_total_bytes

    @property
    def ratio_vs_dense(self) -> float | None:
        """Dense fp16 logits over label_total_bytes (None when nothing is stored)."""
        if self.label_total_bytes == 0:
            return None
        return self.reference_bytes / self.label_total_bytes

    @property
    def bits_per_label(self) -> float:
        """All-in label bits per consumed label."""
        return 8.0 * self.label_total_bytes / max(self.num_labels, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out.update(
            label_total_bytes=self.label_total_bytes,
            total_bytes=self.total_bytes,
            ratio_vs_dense=self.ratio_vs_dense,
            bits_per_label=self.bits_per_label,
        )
        return out


def format_bytes(num_bytes: int, units: str = "auto") -> str:
    """``num_bytes`` in ``units`` with two decimals (``"5.67 GiB"``); exact for bytes."""
    if units == "bytes":
        return f"{num_bytes:,}"
    if units == "auto":
        for name in ("TiB", "GiB", "MiB", "KiB"):
            if num_bytes >= UNITS[name]:
                return f"{num_bytes / UNITS[name]:.2f} {name}"
        return f"{num_bytes} B"
    if units not in UNITS:
        raise ConfigError(
            f"unknown units {units!r}; choose one of auto, {', '.join(UNITS)}"
        )
    return f"{num_bytes / UNITS[units]:.2f}"


def make_options(
    options: StorageOptions | None = None, **kwargs: Any
) -> StorageOptions:
    """A validated :class:`StorageOptions` from an instance and/or keyword overrides."""
    try:
        if options is None:
            return StorageOptions(**kwargs)
        return options.model_copy(update=kwargs) if kwargs else options
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"invalid storage option {field}={err.get('input')!r}: {err['msg']}"
        ) from exc


def _as_list(values: int | Sequence[int], what: str) -> list[int]:
    items = [values] if isinstance(values, int) else list(values)
    if not items:
        raise ConfigError(f"give at least one {what}")
    for value in items:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return items


def _frameworks(framework: str | Sequence[str]) -> list[str]:
    names = [framework] if isinstance(framework, str) else list(framework)
    if not names:
        raise ConfigError("give at least one framework")
    return names


def _row(
    base: dict[str, Any], name: str, cost: LabelCost, reference: int
) -> StorageRow:
    return StorageRow(
        framework=name,
        stored_labels=cost.stored_labels,
        label_bytes=cost.label_bytes,
        side_bytes=cost.side_bytes,
        model_bytes=cost.model_bytes,
        header_bytes=cost.header_bytes,
        augment=cost.augment,
        reference_bytes=reference,
        notes=cost.notes,
        **base,
    )


def _with_ratios(group: list[StorageRow], compare: bool) -> list[StorageRow]:
    """Fill ratio_vs_first against the group's first row when comparing."""
    if not compare or not group:
        return group
    first = group[0].label_total_bytes
    out = []
    for row in group:
        ratio = first / row.label_total_bytes if row.label_total_bytes else None
        out.append(replace(row, ratio_vs_first=ratio if first else None))
    return out


def storage_table(
    *,
    dataset: str | DatasetSpec,
    framework: str | Sequence[str],
    ipc: int | Sequence[int],
    epochs: int = 300,
    options: StorageOptions | None = None,
    **option_kwargs: Any,
) -> list[StorageRow]:
    """Bytes of a distilled image dataset and its labels, per IPC and framework.

    Args:
        dataset: a preset name (``"imagenet-1k"``) or a :class:`DatasetSpec`
            (see :func:`~labelzip.storage.datasets.custom_dataset`).
        framework: one name or several (``["sre2l", "lpld", "labelzip"]``).
        ipc: images per class, one value or several.
        epochs: labelled views per image (the student's training epochs).
        options: a :class:`StorageOptions`; keyword arguments override its fields
            (``codec_bits_per_label=...``, ``prune_ratio=...``).

    Returns:
        Rows ordered by IPC, then framework (RDED gives two rows).

    Raises:
        ConfigError: unknown dataset or framework, non-positive IPC or epochs,
            missing labelzip codec numbers, invalid options.
    """
    spec = get_dataset(dataset) if isinstance(dataset, str) else dataset
    ipcs = _as_list(ipc, "IPC")
    (epochs,) = _as_list(epochs, "epochs")
    names = _frameworks(framework)
    infos = [get_framework(name, "vision") for name in names]
    opts = make_options(options, **option_kwargs)
    per_image = (
        opts.image_bytes
        if opts.image_bytes is not None
        else image_bytes_per_image(spec, opts.image_format)
    )
    rows: list[StorageRow] = []
    for value in ipcs:
        num_images = spec.num_classes * value
        inputs = CostInputs(
            num_images * epochs, num_images, epochs, spec.num_classes, opts
        )
        base = dict(
            dataset=spec.name,
            num_classes=spec.num_classes,
            ipc=value,
            epochs=epochs,
            num_images=num_images,
            num_labels=inputs.num_views,
            image_bytes=num_images * per_image,
        )
        reference = inputs.num_views * spec.num_classes * 2
        group = [
            _row(base, name, cost, reference)
            for info in infos
            for name, cost in info.cost(inputs, info.name)
        ]
        rows += _with_ratios(group, compare=len(group) > 1)
    return rows


def lm_storage_table(
    *,
    tokens: int | Sequence[int],
    vocab: int,
    framework: str | Sequence[str] = ("dense", "topk"),
    options: StorageOptions | None = None,
    **option_kwargs: Any,
) -> list[StorageRow]:
    """Bytes of LM distillation labels: one V-way distribution per token.

    Args:
        tokens: corpus size(s) in tokens.
        vocab: V, the teacher's vocabulary size (50,257 for GPT-2).
        framework: ``"dense"``, ``"topk"``, ``"labelzip"`` (one or several).
        options: as for :func:`storage_table` (``topk``, ``logit_dtype``, codec).

    Raises:
        ConfigError: non-positive tokens or vocab, unknown framework, missing
            labelzip codec numbers.
    """
    counts = _as_list(tokens, "token count")
    (vocab,) = _as_list(vocab, "vocab size")
    if vocab < 2:
        raise ConfigError(f"vocab size must be >= 2, got {vocab}")
    names = _frameworks(framework)
    infos = [get_framework(name, "lm") for name in names]
    opts = make_options(options, **option_kwargs)
    rows: list[StorageRow] = []
    for count in counts:
        inputs = CostInputs(count, 0, 1, vocab, opts, mode="lm")
        base = dict(
            dataset="lm",
            num_classes=vocab,
            ipc=None,
            epochs=1,
            num_images=0,
            num_labels=count,
            image_bytes=0,
        )
        reference = count * vocab * 2
        group = [
            _row(base, name, cost, reference)
            for info in infos
            for name, cost in info.cost(inputs, info.name)
        ]
        rows += _with_ratios(group, compare=len(group) > 1)
    return rows
