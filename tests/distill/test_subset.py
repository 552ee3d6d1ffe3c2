from __future__ import annotations

import pytest
import torch

from labelzip.data import ImageDataset
from labelzip.distill import distill
from labelzip.errors import ConfigError, InputError


def test_balanced_real_subset(fmnist_slice: ImageDataset) -> None:
    ds = distill("random", fmnist_slice, ipc=3, seed=0)
    assert ds.method == "random" and ds.ipc == 3 and len(ds) == 30
    assert ds.images.shape == (30, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.class_counts().tolist() == [3] * 10
    assert ds.labels.tolist() == sorted(ds.labels.tolist())  # class-major order
    assert ds.class_names == fmnist_slice.class_names
    assert ds.source_fingerprint == fmnist_slice.fingerprint
    idx = torch.tensor(ds.config["indices"])
    assert torch.equal(ds.images, fmnist_slice.images[idx])  # real images, unchanged
    assert torch.equal(ds.labels, fmnist_slice.labels[idx])
    assert len(set(idx.tolist())) == 30


def test_deterministic_per_seed(fmnist_slice: ImageDataset) -> None:
    a = distill("random", fmnist_slice, ipc=3, seed=5)
    b = distill("random", fmnist_slice, ipc=3, seed=5)
    c = distill("random", fmnist_slice, ipc=3, seed=6)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_class_subset_keeps_other_classes_draws(fmnist_slice: ImageDataset) -> None:
    full = distill("random", fmnist_slice, ipc=2, seed=1)
    part = distill("random", fmnist_slice, ipc=2, seed=1, classes=[7, 3])
    assert part.labels.tolist() == [3, 3, 7, 7]
    assert torch.equal(part.images_of_class(7), full.images_of_class(7))


def test_ipc_larger_than_data(fmnist_slice: ImageDataset) -> None:
    with pytest.raises(InputError, match="has only 40 images; use --ipc 40 or less"):
        distill("random", fmnist_slice, ipc=41)
    assert len(distill("random", fmnist_slice, ipc=40)) == 400


def test_bad_requests(fmnist_slice: ImageDataset) -> None:
    with pytest.raises(ConfigError, match="needs ipc"):
        distill("random", fmnist_slice)
    with pytest.raises(ConfigError, match="pass a dataset"):
        distill("random", None, ipc=1)
    with pytest.raises(ConfigError, match="unknown distillation method 'mtt'"):
        distill("mtt", fmnist_slice, ipc=1)
    with pytest.raises(ConfigError, match=r"RandomConfig options: steps: Extra inputs"):
        distill("random", fmnist_slice, ipc=1, steps=3)
    with pytest.raises(ConfigError, match=r"classes must lie in \[0, 10\)"):
        distill("random", fmnist_slice, ipc=1, classes=[10])
    with pytest.raises(InputError, match="ipc must be >= 1"):
        distill("random", fmnist_slice, ipc=0)


def test_mixed_sizes_are_refused() -> None:
    images = [
        torch.zeros(1, 8, 8, dtype=torch.uint8),
        torch.zeros(1, 9, 9, dtype=torch.uint8),
    ]
    data = ImageDataset("mixed", images, torch.tensor([0, 1]), ("a", "b"), "x")
    with pytest.raises(InputError, match="needs images of one size"):
        distill("random", data, ipc=1)
