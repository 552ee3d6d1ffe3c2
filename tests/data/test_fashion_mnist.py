from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from labelzip.data import FASHION_MNIST_ROOT, load_fashion_mnist, read_idx
from labelzip.errors import InputError


def _idx(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.tobytes()


def _write_split(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for name, data in (
        ("train-images-idx3-ubyte.gz", _idx(images, 0x08)),
        ("train-labels-idx1-ubyte.gz", _idx(labels, 0x08)),
    ):
        with gzip.open(folder / name, "wb") as handle:
            handle.write(data)


def test_read_idx_round_trip() -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(_idx(a, 0x08)), a)
    b = np.array([1.5, -2.0], dtype=">f4")
    assert np.array_equal(read_idx(_idx(b, 0x0D)), b)


def test_read_idx_rejects_bad_files() -> None:
    a = np.zeros((2, 2), dtype=np.uint8)
    with pytest.raises(InputError, match="bad magic"):
        read_idx(b"\x01\x00\x08\x01", "x")
    with pytest.raises(InputError, match="unknown IDX type code 0x07"):
        read_idx(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "x")
    with pytest.raises(InputError, match="does not match dims"):
        read_idx(_idx(a, 0x08)[:-1], "x")


def test_load_from_custom_root(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_split(tmp_path, images, labels)
    ds = load_fashion_mnist("train", root=tmp_path)
    assert ds.images.shape == (5, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == [3, 1, 4, 1, 5] and ds.labels.dtype == torch.int64
    assert ds.class_names[0] == "T-shirt/top" and ds.num_classes == 10
    assert ds.fingerprint == load_fashion_mnist("train", root=tmp_path).fingerprint
    labels[0] = 2
    _write_split(tmp_path, images, labels)
    assert ds.fingerprint != load_fashion_mnist("train", root=tmp_path).fingerprint


def test_missing_files_name_the_package(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(InputError, match="split must be 'train' or 'test'"):
        load_fashion_mnist("val")  # type: ignore[arg-type]


@pytest.mark.skipif(
    not FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist missing"
)
def test_real_test_split() -> None:
    ds = load_fashion_mnist("test")
    assert ds.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.name == "fashion-mnist/test"
