"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX .gz files).

The default vision benchmark of labelzip: 60k train / 10k test 28x28 grayscale
images in 10 classes, available offline from the distribution's package.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from labelzip.data.base import ImageDataset, fingerprint_tensors
from labelzip.errors import InputError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# IDX type codes -> numpy dtypes (multi-byte types are big-endian).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(raw: bytes, name: str = "IDX data") -> np.ndarray[Any, Any]:
    """Parse an (uncompressed) IDX file: 2 zero bytes, type code, rank, dims.

    Raises:
        InputError: bad magic, unknown type code, or a size that does not match.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise InputError(f"{name}: not an IDX file (bad magic {raw[:4]!r})")
    code, rank = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise InputError(f"{name}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * rank
    if len(raw) < header:
        raise InputError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise InputError(
            f"{name}: IDX size {len(raw)} bytes does not match dims {dims} "
            f"({expected} bytes expected)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _read_gz(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(
            f"Fashion-MNIST file {str(path)!r} is missing; install the data with "
            "`apt-get install dataset-fashion-mnist` (or pass root= to a folder "
            "holding the IDX .gz files)"
        )
    with gzip.open(path, "rb") as handle:
        return handle.read()


def load_fashion_mnist(
    split: Literal["train", "test"] = "train",
    root: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Load a Fashion-MNIST split as uint8 images (N, 1, 28, 28) and labels (N,).

    Args:
        split: ``"train"`` (60k) or ``"test"`` (10k).
        root: folder with the four IDX .gz files; default the Debian package's.

    Raises:
        InputError: unknown split, files missing (names the apt package),
            or malformed files.
    """
    if split not in _FILES:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root) if root is not None else FASHION_MNIST_ROOT
    image_file, label_file = _FILES[split]
    raw_images = _read_gz(folder / image_file)
    raw_labels = _read_gz(folder / label_file)
    images = read_idx(raw_images, image_file)
    labels = read_idx(raw_labels, label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(
            f"Fashion-MNIST {split}: images {images.shape} and labels "
            f"{labels.shape} do not form a dataset"
        )
    image_t = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    label_t = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(
        name=f"fashion-mnist/{split}",
        images=image_t,
        labels=label_t,
        class_names=FASHION_MNIST_CLASSES,
        fingerprint=fingerprint_tensors(raw_images, raw_labels),
    )
