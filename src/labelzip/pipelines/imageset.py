"""What the vision pipelines need from a set of images, and the checks on it.

Relabel, replay and student training take any object with ``images`` (M, ch, H,
W), ``labels`` (M,), ``class_names`` and ``fingerprint``: a
:class:`~labelzip.distill.DistilledSet`, an :class:`~labelzip.data.ImageDataset`
of equal-size images, or a bare tensor wrapped with :func:`as_image_set`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from labelzip.data.base import fingerprint_tensors
from labelzip.errors import InputError

__all__ = [
    "ImageSet",
    "TensorImageSet",
    "as_image_set",
    "check_image_tensor",
    "model_id",
]


class ImageSet(Protocol):
    """Images addressed by index, with their classes and a content fingerprint."""

    @property
    def images(self) -> torch.Tensor | list[torch.Tensor]: ...

    @property
    def labels(self) -> torch.Tensor: ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class TensorImageSet:
    """A plain (M, ch, H, W) tensor as an :class:`ImageSet` (tests, ad-hoc use)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    fingerprint: str


def as_image_set(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
) -> TensorImageSet:
    """Wrap a bare image tensor; the fingerprint covers pixels, labels and names.

    Args:
        images: (M, ch, H, W) uint8 or float images in 0..255.
        labels: (M,) int64 class ids (default all 0; only CE mixing reads them).
        class_names: one name per class (default ``"0".."C-1"`` from the labels).
    """
    check_image_tensor(images, "images")
    if labels is None:
        labels = torch.zeros(len(images), dtype=torch.int64)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if len(labels) != len(images):
        raise InputError(f"{len(images)} images but {len(labels)} labels")
    if class_names is None:
        class_names = tuple(str(c) for c in range(int(labels.max()) + 1))
    names = tuple(str(c) for c in class_names)
    return TensorImageSet(
        images, labels, names, fingerprint_tensors(images, labels, "\n".join(names))
    )


def check_image_tensor(images: object, what: str = "images") -> torch.Tensor:
    """The (M, ch, H, W) image tensor of a set, or an InputError saying what is wrong."""
    if not isinstance(images, torch.Tensor):
        raise InputError(
            f"{what} must be one (M, ch, H, W) tensor of equal-size images, got "
            f"{type(images).__name__}; resize them to one size first"
        )
    if images.dim() != 4 or min(images.shape) == 0:
        raise InputError(
            f"{what} must have shape (M, ch, H, W) with M, ch, H, W >= 1, got "
            f"{tuple(images.shape)}"
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise InputError(
            f"{what} must be uint8 or float in 0..255, got dtype {images.dtype}"
        )
    return images


def model_id(model: nn.Module, name: str | None = None) -> str:
    """``<name or class name>:<16 hex of the sha256 of its state dict>``."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{key}{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{name or type(model).__name__}:{digest.hexdigest()[:16]}"
