"""Exact storage accounting: what a user must ship, against a stated reference.

A compression ratio is only honest when it counts every byte: per-label payload,
the model shipped once (decoder weights, codebooks, frequency tables), side
information (augmentation parameters, reuse maps) and the container header.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from labelzip.errors import ConfigError

__all__ = [
    "REFERENCE_BYTES_PER_VALUE",
    "StorageAccount",
    "reference_bytes",
]

# Bytes per class value of the dense references a ratio can be stated against.
REFERENCE_BYTES_PER_VALUE: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}


def reference_bytes(num_labels: int, num_classes: int, reference: str = "fp16") -> int:
    """Size of ``num_labels`` dense labels of ``num_classes`` values in ``reference``."""
    if reference not in REFERENCE_BYTES_PER_VALUE:
        choices = ", ".join(sorted(REFERENCE_BYTES_PER_VALUE))
        raise ConfigError(f"unknown reference {reference!r}; choose one of {choices}")
    return num_labels * num_classes * REFERENCE_BYTES_PER_VALUE[reference]


@dataclass(frozen=True)
class StorageAccount:
    """All bytes of a compressed label set, split by what they are for.

    Attributes:
        codec: registry name of the codec (``"vqae"``, ``"topk"``, ...).
        num_labels: labels represented (including pruned ones that reuse others).
        num_classes: C, the length of one dense label.
        payload_bytes: bytes stored per label, summed over all stored labels.
        model_bytes: bytes stored once: decoder weights, codebooks, tables.
        side_bytes: side information such as augmentation parameters or maps.
        header_bytes: container overhead (JSON header, alignment).
        reference: dense format the ratio is stated against (default fp16).
        rate_note: set when the archive was written for a rate target it misses
            by more than the tolerance: the closest size the codec reaches and
            why (:func:`labelzip.rate.rate_note`); ``None`` otherwise.
    """

    codec: str
    num_labels: int
    num_classes: int
    payload_bytes: int
    model_bytes: int
    side_bytes: int = 0
    header_bytes: int = 0
    reference: str = "fp16"
    rate_note: str | None = None

    @property
    def total_bytes(self) -> int:
        return (
            self.payload_bytes + self.model_bytes + self.side_bytes + self.header_bytes
        )

    @property
    def reference_bytes(self) -> int:
        return reference_bytes(self.num_labels, self.num_classes, self.reference)

    @property
    def ratio(self) -> float:
        """Reference bytes over all-in bytes (higher is smaller)."""
        return self.reference_bytes / max(self.total_bytes, 1)

    @property
    def bits_per_label(self) -> float:
        """All-in bits per represented label."""
        return 8.0 * self.total_bytes / max(self.num_labels, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.rate_note is None:
            del out["rate_note"]  # only accounts written for a target carry one
        out.update(
            total_bytes=self.total_bytes,
            reference_bytes=self.reference_bytes,
            ratio=self.ratio,
            bits_per_label=self.bits_per_label,
        )
        return out
