"""Shared fixtures: a small real Fashion-MNIST slice and a teacher trained on it.

The teacher is a GrayConvNet (4 BatchNorm layers) trained for 3 epochs on 400
real test-split images (about 75% accuracy): enough for its BN statistics and
class evidence to be real, and fast (a few seconds, once per session).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labelzip.data import ImageDataset, load_fashion_mnist
from labelzip.teachers import TeacherTrainConfig, train_teacher

PER_CLASS = 40


@pytest.fixture(scope="session")
def fmnist_slice() -> ImageDataset:
    """The first 40 test images of each Fashion-MNIST class (400 images)."""
    full = load_fashion_mnist("test")
    idx = torch.cat(
        [torch.nonzero(full.labels == c).reshape(-1)[:PER_CLASS] for c in range(10)]
    )
    return full.subset(idx)


@pytest.fixture(scope="session")
def small_teacher(
    fmnist_slice: ImageDataset, tmp_path_factory: pytest.TempPathFactory
) -> nn.Module:
    config = TeacherTrainConfig(arch="convnet", epochs=3, batch_size=32, seed=0)
    cache = tmp_path_factory.mktemp("teachers")
    return train_teacher(fmnist_slice, config=config, cache_dir=cache).model
