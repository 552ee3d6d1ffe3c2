from __future__ import annotations

import pytest
import torch

from labelzip.data import ImageDataset, fingerprint_tensors
from labelzip.errors import InputError


def _ds(name: str, n: int, classes: tuple[str, ...], size: int = 4) -> ImageDataset:
    images = torch.arange(n * size * size, dtype=torch.int64).reshape(n, 1, size, size)
    labels = torch.arange(n) % len(classes)
    return ImageDataset(
        name, images.to(torch.uint8), labels, classes, fingerprint_tensors(name, labels)
    )


def test_fingerprint_sensitivity() -> None:
    a = torch.tensor([1, 2, 3], dtype=torch.uint8)
    assert fingerprint_tensors(a) == fingerprint_tensors(a.clone())
    assert fingerprint_tensors(a) != fingerprint_tensors(a.to(torch.int16))
    assert fingerprint_tensors(a) != fingerprint_tensors(a.reshape(3, 1))
    assert fingerprint_tensors("ab", "c") != fingerprint_tensors("a", "bc")


def test_subset_and_concat() -> None:
    ds = _ds("a", 6, ("x", "y"))
    sub = ds.subset([4, 1])
    assert sub.labels.tolist() == [0, 1] and torch.equal(sub.images[0], ds.images[4])
    assert sub.fingerprint not in (ds.fingerprint, ds.subset([1, 4]).fingerprint)
    same = ImageDataset.concat([ds, _ds("b", 2, ("x",))], "ab")
    assert same.class_names == ("x", "y") and same.labels.tolist()[-2:] == [0, 0]
    other = ImageDataset.concat([ds, _ds("c", 3, ("p", "q", "r"), size=5)], "ac")
    assert isinstance(other.images, list) and len(other) == 9  # mixed sizes
    assert other.labels.tolist()[-3:] == [2, 3, 4]  # offset by 2 classes
    assert other.class_names[other.labels[-1]] == "c:r"
    with pytest.raises(InputError, match="3 images but 2 labels"):
        ImageDataset("bad", ds.images[:3], ds.labels[:2], ("x", "y"), "0")
