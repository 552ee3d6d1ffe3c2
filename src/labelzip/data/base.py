"""The in-memory image dataset every loader returns, and its fingerprint.

A fingerprint (sha256 hex) identifies the exact pixels and labels, so a teacher
or a label set built from a dataset can be cached and later checked against it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from labelzip.errors import InputError

__all__ = ["ImageDataset", "fingerprint_tensors"]


def fingerprint_tensors(*parts: torch.Tensor | bytes | str) -> str:
    """sha256 hex over tensors (dtype, shape and raw bytes), bytes and strings."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().to("cpu").contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(part, str):
            digest.update(part.encode())
        else:
            digest.update(part)
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)  # tensors have no boolean ==; compare fingerprints
class ImageDataset:
    """Images with integer labels, class names and a content fingerprint.

    Attributes:
        name: a short identifier such as ``"fashion-mnist/train"``.
        images: (N, C, H, W) uint8 when all images share a size, else a list
            of (C, H, W) uint8 tensors.
        labels: (N,) int64 class ids.
        class_names: name of each class id (len = number of classes).
        fingerprint: sha256 hex of the raw source bytes and labels.
        sources: optional per-image source names (file names), for provenance.
    """

    name: str
    images: torch.Tensor | list[torch.Tensor]
    labels: torch.Tensor
    class_names: tuple[str, ...]
    fingerprint: str
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise InputError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """A dataset of the given images; the fingerprint covers the selection."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if isinstance(self.images, torch.Tensor):
            images: torch.Tensor | list[torch.Tensor] = self.images[idx]
        else:
            images = [self.images[int(i)] for i in idx]
        sources = tuple(self.sources[int(i)] for i in idx) if self.sources else ()
        return ImageDataset(
            name=f"{self.name}[{len(idx)}]",
            images=images,
            labels=self.labels[idx],
            class_names=self.class_names,
            fingerprint=fingerprint_tensors(self.fingerprint, idx),
            sources=sources,
        )

    @staticmethod
    def concat(datasets: Iterable[ImageDataset], name: str) -> ImageDataset:
        """Join datasets into one.

        When all parts share one label space (each part's class names are a
        prefix of the widest part's), labels are kept. Otherwise the label
        spaces are stacked: part k's ids are offset by the class counts of the
        parts before it and its class names are prefixed with its name, so
        ``class_names[label]`` stays correct.
        """
        parts = list(datasets)
        if not parts:
            raise InputError("concat needs at least one dataset")
        images: list[torch.Tensor] = []
        for part in parts:
            images.extend(part.images[i] for i in range(len(part)))
        widest = max(parts, key=lambda p: p.num_classes)
        if all(p.class_names == widest.class_names[: p.num_classes] for p in parts):
            names = widest.class_names
            labels = torch.cat([p.labels for p in parts])
        else:
            names = tuple(f"{p.name}:{c}" for p in parts for c in p.class_names)
            offsets = torch.tensor([0] + [p.num_classes for p in parts]).cumsum(0)
            labels = torch.cat([p.labels + offsets[k] for k, p in enumerate(parts)])
        sizes = {tuple(im.shape) for im in images}
        stacked = torch.stack(images) if len(sizes) == 1 else images
        return ImageDataset(
            name=name,
            images=stacked,
            labels=labels,
            class_names=names,
            fingerprint=fingerprint_tensors(*(p.fingerprint for p in parts)),
            sources=tuple(s for p in parts for s in p.sources),
        )
