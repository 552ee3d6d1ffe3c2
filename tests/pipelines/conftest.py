"""Tiny, seeded inputs for the vision pipeline tests: a 4-class image set and teachers.

Images are 28x28 grayscale with a class-specific bright block plus noise, so a
small teacher and a student can both learn them in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from labelzip.data.base import ImageDataset, fingerprint_tensors
from labelzip.distill import DistilledSet

__all__ = ["CLASS_NAMES", "LinearTeacher", "RecordingTeacher"]

# Tests here train tiny models: one thread is fastest on a shared machine.
torch.set_num_threads(1)

CLASS_NAMES = ("north", "east", "south", "west")


def make_images(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, 1, 28, 28) uint8: noise plus a bright 10x10 block placed by class."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 90, (len(labels), 1, 28, 28), generator=g).float()
    corners = [(2, 9), (9, 16), (16, 9), (9, 2)]
    for n, label in enumerate(labels.tolist()):
        top, left = corners[label]
        images[n, :, top : top + 10, left : left + 10] += 150
    return images.clamp(0, 255).to(torch.uint8)


def make_set(per_class: int = 3, seed: int = 0) -> DistilledSet:
    """A DistilledSet of ``4 * per_class`` synthetic images (class order)."""
    labels = torch.arange(4).repeat_interleave(per_class)
    return DistilledSet(
        images=make_images(labels, seed),
        labels=labels,
        class_names=CLASS_NAMES,
        method="random",
        ipc=per_class,
    )


def make_dataset(num: int, seed: int, name: str = "synthetic") -> ImageDataset:
    """An ImageDataset of ``num`` synthetic images, classes cycling 0..3."""
    labels = torch.arange(num) % 4
    images = make_images(labels, seed)
    return ImageDataset(
        name=name,
        images=images,
        labels=labels,
        class_names=CLASS_NAMES,
        fingerprint=fingerprint_tensors(images, labels),
    )


class LinearTeacher(nn.Module):
    """A fixed, seeded 4x4-pooled linear classifier: (B, 1, 28, 28) -> (B, C)."""

    def __init__(self, num_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(49, num_classes)
        with torch.no_grad():
            # Class evidence: the mean brightness of each class's block region,
            # plus a little seeded noise so labels are not one-hot-like.
            self.fc.weight.copy_(torch.randn(num_classes, 49, generator=g) / 400.0)
            self.fc.bias.zero_()
            corners = [(2, 9), (9, 16), (16, 9), (9, 2)]
            for c in range(num_classes):
                mask = torch.zeros(28, 28)
                top, left = corners[c % 4]
                mask[top : top + 10, left : left + 10] = 1
                pooled = self.pool(mask[None, None])[0, 0].reshape(-1)
                self.fc.weight[c] += pooled / pooled.sum() / 15.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(x.float()).flatten(1))
        return out


class RecordingTeacher(nn.Module):
    """Wraps a teacher and keeps a copy of every batch of views it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out: torch.Tensor = self.inner(x)
        return out


@pytest.fixture
def tiny_set() -> DistilledSet:
    """12 images (3 per class) of 4 classes."""
    return make_set(3, seed=0)


@pytest.fixture
def set_factory() -> Callable[..., DistilledSet]:
    return make_set


@pytest.fixture
def dataset_factory() -> Callable[..., ImageDataset]:
    return make_dataset


@pytest.fixture
def teacher() -> LinearTeacher:
    return LinearTeacher(4, seed=0).eval()


@pytest.fixture
def recorder() -> Callable[[nn.Module], RecordingTeacher]:
    return RecordingTeacher
