"""The distilled image set every distillation method returns, and its file format.

A :class:`DistilledSet` is what a dataset-distillation framework ships besides
its soft labels: M small images (uint8, as released sets are stored), the class
each image was made for, and provenance (method, IPC, source dataset, teacher,
method settings). Its :attr:`~DistilledSet.fingerprint` covers exactly the
pixels, the class ids and the class names, so a relabel archive that stores it
detects being paired with another set (or another class order) later.

On disk a set is one ``.safetensors`` file: tensors ``images`` (M, C, H, W)
uint8 and ``labels`` (M,) int64, and ``__metadata__["labelzip_distilled_set"]``,
a JSON document with everything else (see :data:`METADATA_KEY`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from labelzip.data.base import ImageDataset, fingerprint_tensors
from labelzip.errors import ArchiveFormatError, ChecksumError, InputError
from labelzip.io import atomic_path

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "DistilledSet",
    "ProgressCallback",
    "RunOptions",
    "check_ipc",
]

FORMAT_NAME = "labelzip-distilled-set"
FORMAT_VERSION = 1
METADATA_KEY = "labelzip_distilled_set"

ProgressCallback = Callable[[int, int], None]
"""``callback(done, total)``: called as a method makes progress (steps or images)."""


@dataclass(frozen=True)
class RunOptions:
    """How one distillation run runs, apart from what it makes (the method's config).

    Attributes:
        seed: every random number derives from it; the same seed gives the same
            images, bit for bit on one machine.
        device: where the teacher runs (it is moved there); default the
            teacher's device.
        progress: ``callback(done, total)`` as the method makes progress.
        teacher_id: recorded in the set; default the teacher's class name and
            weight hash.
    """

    seed: int = 0
    device: torch.device | str | None = None
    progress: ProgressCallback | None = None
    teacher_id: str | None = None


def check_ipc(ipc: int, counts: torch.Tensor, class_names: tuple[str, ...]) -> None:
    """Raise when ``ipc`` images per class cannot be drawn from classes of ``counts``.

    Args:
        ipc: requested images per class.
        counts: (C,) number of available images of each class.
        class_names: for the message.

    Raises:
        InputError: ``ipc < 1`` or a class with fewer than ``ipc`` images; the
            message names the largest IPC the data allows.
    """
    if ipc < 1:
        raise InputError(f"ipc must be >= 1, got {ipc}")
    if len(counts) == 0:
        raise InputError("the dataset has no classes")
    smallest = int(counts.min())
    if ipc > smallest:
        worst = int(counts.argmin())
        raise InputError(
            f"ipc={ipc} is larger than the data allows: class {worst} "
            f"({class_names[worst]!r}) has only {smallest} images; "
            f"use --ipc {smallest} or less"
        )


@dataclass(frozen=True, eq=False)
class DistilledSet:
    """A distilled image set: images, their classes and where they came from.

    Attributes:
        images: (M, C, H, W) uint8 in 0..255 (C = 1 or 3).
        labels: (M,) int64 class id of each image, in ``[0, num_classes)``.
        class_names: name of every class id (the teacher's class order).
        method: the framework that made it (``"random"``, ``"sre2l"``, ...).
        ipc: images per class (for imported sets: the largest class count).
        source_fingerprint: fingerprint of the real dataset the set was drawn
            from or matched to (``None`` when unknown).
        teacher_id: identifier of the teacher used to make it (``None`` if none).
        config: the method's resolved settings (JSON-able), for provenance.

    Raises:
        InputError: on construction, for images of the wrong rank, dtype or
            channel count, or labels that do not match them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    method: str
    ipc: int
    source_fingerprint: str | None = None
    teacher_id: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else None
            raise InputError(
                f"distilled images must be a (M, C, H, W) tensor, got shape {shape}"
            )
        if images.dtype != torch.uint8:
            raise InputError(
                f"distilled images must be uint8 in 0..255, got {images.dtype}; "
                "quantise with images.round().clamp(0, 255).to(torch.uint8)"
            )
        if images.shape[1] not in (1, 3):
            raise InputError(
                f"distilled images need 1 or 3 channels, got shape {tuple(images.shape)}"
            )
        if min(images.shape) == 0:
            raise InputError(f"distilled set is empty: shape {tuple(images.shape)}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
            raise InputError("labels must be a (M,) tensor of class ids")
        if labels.dtype != torch.int64:
            raise InputError(f"labels must be int64, got {labels.dtype}")
        if len(labels) != len(images):
            raise InputError(f"{len(images)} images but {len(labels)} labels")
        num_classes = len(self.class_names)
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise InputError(
                f"labels must lie in [0, {num_classes}) for {num_classes} class "
                f"names, got range [{int(labels.min())}, {int(labels.max())}]"
            )
        if self.ipc < 1:
            raise InputError(f"ipc must be >= 1, got {self.ipc}")
        # Normalise containers so equal sets compare and serialise alike.
        object.__setattr__(self, "images", images.detach().cpu().contiguous())
        object.__setattr__(self, "labels", labels.detach().cpu().contiguous())
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "config", dict(self.config))

    # ---------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def image_bytes(self) -> int:
        """Raw uint8 pixel bytes (M * C * H * W), before any image compression."""
        return int(self.images.numel())

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the images, the class ids and the class names (in order)."""
        return fingerprint_tensors(
            self.images, self.labels, json.dumps(list(self.class_names))
        )

    def class_counts(self) -> torch.Tensor:
        """(num_classes,) int64 number of images of each class."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def images_of_class(self, class_id: int) -> torch.Tensor:
        """(K, C, H, W) uint8 images made for ``class_id`` (in set order).

        Raises:
            InputError: ``class_id`` outside ``[0, num_classes)``.
        """
        if not 0 <= class_id < self.num_classes:
            raise InputError(
                f"class_id must lie in [0, {self.num_classes}), got {class_id}"
            )
        return self.images[self.labels == class_id]

    def to_dataset(self) -> ImageDataset:
        """The set as an :class:`~labelzip.data.ImageDataset` (same fingerprint)."""
        return ImageDataset(
            name=f"distilled/{self.method}-ipc{self.ipc}",
            images=self.images,
            labels=self.labels,
            class_names=self.class_names,
            fingerprint=self.fingerprint,
        )

    def metadata(self) -> dict[str, Any]:
        """The JSON document stored beside the tensors."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "class_names": list(self.class_names),
            "method": self.method,
            "ipc": self.ipc,
            "num_images": len(self),
            "image_shape": list(self.images.shape[1:]),
            "source_fingerprint": self.source_fingerprint,
            "teacher_id": self.teacher_id,
            "config": self.config,
        }

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (
            f"DistilledSet(method={self.method!r}, ipc={self.ipc}, images={len(self)}"
            f"x{c}x{h}x{w}, classes={self.num_classes}, "
            f"fingerprint={self.fingerprint[:12]})"
        )

    # -------------------------------------------------------------------- I/O

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomically write the set to a ``.safetensors`` file; returns the path."""
        from safetensors.torch import save_file

        dest = Path(path)
        meta = json.dumps(self.metadata(), sort_keys=True, separators=(",", ":"))
        tensors = {"images": self.images, "labels": self.labels}
        with atomic_path(dest) as tmp:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: meta})
        return dest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DistilledSet:
        """Read a set written by :meth:`save` and check its fingerprint.

        Raises:
            InputError: the file does not exist.
            ArchiveFormatError: not a distilled-set file, unknown version,
                missing tensors or fields.
            ChecksumError: pixels, labels or class names differ from the
                stored fingerprint (a modified or corrupted file).
        """
        from safetensors import SafetensorError, safe_open

        src = Path(path)
        if not src.is_file():
            raise InputError(f"distilled set {str(src)!r} does not exist")
        try:
            with safe_open(str(src), framework="pt") as handle:
                raw = (handle.metadata() or {}).get(METADATA_KEY)
                names = set(handle.keys())
                if raw is None or not {"images", "labels"} <= names:
                    raise ArchiveFormatError(
                        f"{src.name} is not a labelzip distilled set (no "
                        f"{METADATA_KEY!r} metadata or images/labels tensors); "
                        "make one with `labelzip distill`"
                    )
                images = handle.get_tensor("images")
                labels = handle.get_tensor("labels")
        except (SafetensorError, OSError) as exc:
            raise ArchiveFormatError(
                f"{src.name} is not a readable .safetensors file: {exc}"
            ) from exc
        meta = _parse_metadata(raw, src.name)
        try:
            loaded = cls(
                images=images,
                labels=labels,
                class_names=tuple(meta["class_names"]),
                method=str(meta["method"]),
                ipc=int(meta["ipc"]),
                source_fingerprint=meta.get("source_fingerprint"),
                teacher_id=meta.get("teacher_id"),
                config=dict(meta.get("config") or {}),
            )
        except InputError as exc:
            raise ArchiveFormatError(
                f"{src.name}: invalid distilled set: {exc}"
            ) from exc
        if loaded.fingerprint != meta["fingerprint"]:
            raise ChecksumError(
                f"{src.name}: images, labels or class names do not match the stored "
                f"fingerprint ({loaded.fingerprint[:12]} != {str(meta['fingerprint'])[:12]}); "
                "the file was modified or is corrupted, re-create it"
            )
        return loaded


def _parse_metadata(raw: str, name: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ArchiveFormatError(f"{name}: distilled-set metadata is not JSON") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ArchiveFormatError(f"{name}: not a {FORMAT_NAME} file")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise ArchiveFormatError(
            f"{name}: distilled-set format version {version!r} is not supported "
            f"(this labelzip reads version {FORMAT_VERSION}); upgrade labelzip"
        )
    missing = [
        k for k in ("fingerprint", "class_names", "method", "ipc") if k not in meta
    ]
    if missing:
        raise ArchiveFormatError(f"{name}: distilled-set metadata lacks {missing}")
    return meta
