"""Inputs of the storage formulas: user options, one table cell, codec numbers.

:class:`StorageOptions` holds everything besides dataset, IPC and epochs that
changes a byte count; :class:`CostInputs` is one cell of the table;
:class:`CodecNumbers` is a labelzip codec (bits per label, model and header
bytes) given by the user or read from a real archive.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from labelzip.errors import CodecMismatchError, ConfigError, InputError
from labelzip.rate.target import RateValue

__all__ = [
    "CodecNumbers",
    "CostInputs",
    "LabelCost",
    "StorageOptions",
    "codec_numbers",
    "read_archive_numbers",
]


class StorageOptions(BaseModel):
    """Everything besides dataset, IPC and epochs that changes the byte counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_format: Literal["jpeg", "raw", "png-estimate"] = Field(
        "jpeg", description="how distilled images are stored (datasets.py)"
    )
    image_bytes: int | None = Field(
        None, ge=0, description="bytes per image, overriding the image_format model"
    )
    augment: Literal["stored", "seed"] | None = Field(
        None,
        description="augmentation side info: stored numbers or one seed; "
        "None = each framework's own choice (baselines stored, labelzip seed)",
    )
    batch_size: int | None = Field(
        None, ge=1, description="relabel batch size (files); None = framework default"
    )
    prune_ratio: float | None = Field(
        None, ge=1.0, description="LPLD/LPQLD: keep 1/R of the views; None = default"
    )
    topk: int | None = Field(
        None, ge=1, description="kept entries per label (lpqld, fkd, LM topk)"
    )
    logit_dtype: Literal["fp16", "fp32", "bf16"] = Field(
        "fp16",
        description="dtype of dense stored logits (sre2l, cda, rded, lpld, dense)",
    )
    teacher_bytes: int | None = Field(
        None, ge=0, description="RDED: bytes of the teacher that must be shipped"
    )
    codec_bits_per_label: RateValue | None = Field(
        None, description="labelzip: payload bits per stored label"
    )
    codec_model_bytes: int | None = Field(
        None, ge=0, description="labelzip: bytes stored once (decoder, codebook)"
    )
    codec_header_bytes: int | None = Field(
        None, ge=0, description="labelzip: archive header bytes, if known"
    )
    archive: str | None = Field(
        None, description="labelzip: read the codec numbers from this archive"
    )
    labelzip_prune_ratio: float = Field(
        1.0,
        ge=1.0,
        description="labelzip: store 1/R of the views (over LPLD-style pruning)",
    )


@dataclass(frozen=True)
class CostInputs:
    """One cell of the table: how many labels, of what size, with which options."""

    num_views: int  # labels the student consumes: images x epochs, or tokens
    num_images: int  # N distilled images (0 in LM mode)
    epochs: int  # E (1 in LM mode)
    num_classes: int  # C, or the vocabulary V in LM mode
    options: StorageOptions
    mode: str = "vision"  # or "lm"


@dataclass(frozen=True)
class LabelCost:
    """The label-side bytes of one framework for one cell."""

    stored_labels: int
    label_bytes: int
    side_bytes: int
    model_bytes: int
    header_bytes: int
    augment: str  # "stored" | "seed" | "online" | "none"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CodecNumbers:
    """A labelzip codec as the storage analysis needs it."""

    bits_per_label: float
    model_bytes: int
    header_bytes: int | None
    source: str
    # Exact payload of a real archive, used when the table asks for its label count.
    archive_labels: int | None = None
    archive_payload_bytes: int | None = None

    def payload_bytes(self, num_labels: int) -> int:
        if self.archive_labels is not None and self.archive_payload_bytes is not None:
            if num_labels == self.archive_labels:
                return self.archive_payload_bytes
            return math.ceil(
                num_labels * self.archive_payload_bytes / max(self.archive_labels, 1)
            )
        return math.ceil(num_labels * self.bits_per_label / 8)


# -- labelzip codec numbers ----------------------------------------------------------
def read_archive_numbers(path: str, num_classes: int) -> CodecNumbers:
    """Payload bits per label, model and header bytes of a real labelzip archive.

    Raises:
        InputError: the file does not exist.
        ConfigError: labelzip.archive is not available in this installation.
        CodecMismatchError: the archive's class count differs from the table's.
    """
    if not os.path.isfile(path):
        raise InputError(f"archive {path!r} does not exist; check the path")
    try:
        from labelzip.archive import ArchiveReader
    except ImportError as exc:
        raise ConfigError(
            "--archive needs labelzip.archive, which this installation lacks; "
            "pass --codec-bits-per-label and --codec-model-bytes instead"
        ) from exc
    with ArchiveReader(path) as reader:
        account = reader.account()
        # A pruned archive represents more labels than it stores; the payload is
        # per stored label, which the chunk sizes count.
        chunk_labels = getattr(getattr(reader, "header", None), "chunk_labels", None)
    stored = int(sum(chunk_labels)) if chunk_labels else account.num_labels
    if account.num_classes != num_classes:
        raise CodecMismatchError(
            f"archive {path!r} holds {account.num_classes}-class labels but the "
            f"table is for {num_classes} classes; use a matching archive or "
            "--codec-bits-per-label"
        )
    return CodecNumbers(
        bits_per_label=8.0 * account.payload_bytes / max(stored, 1),
        model_bytes=account.model_bytes,
        header_bytes=account.header_bytes,
        source=f"archive {os.path.basename(path)} ({account.codec})",
        archive_labels=stored,
        archive_payload_bytes=account.payload_bytes,
    )


def codec_numbers(options: StorageOptions, num_classes: int) -> CodecNumbers:
    """The labelzip codec's numbers from the options or from an archive."""
    given = (
        options.codec_bits_per_label is not None
        or options.codec_model_bytes is not None
    )
    if options.archive is not None:
        if given:
            raise ConfigError(
                "give either --archive or --codec-bits-per-label/--codec-model-bytes, "
                "not both"
            )
        return read_archive_numbers(options.archive, num_classes)
    if options.codec_bits_per_label is None or options.codec_model_bytes is None:
        raise ConfigError(
            "framework labelzip needs the codec's numbers: pass "
            "--codec-bits-per-label B and --codec-model-bytes M, or --archive PATH"
        )
    bits = options.codec_bits_per_label
    return CodecNumbers(
        bits_per_label=bits,
        model_bytes=options.codec_model_bytes,
        header_bytes=options.codec_header_bytes,
        source=f"{bits:g} bits/label + {options.codec_model_bytes} model bytes",
    )
