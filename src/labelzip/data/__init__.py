"""Image datasets for the vision pipeline: Fashion-MNIST, foolbox samples, folders.

Every loader returns an :class:`ImageDataset` (uint8 images, int64 labels,
class names, a sha256 fingerprint of the raw bytes and labels).
"""

from __future__ import annotations

from labelzip.data.base import ImageDataset, fingerprint_tensors
from labelzip.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    load_fashion_mnist,
    read_idx,
)
from labelzip.data.folder import (
    IMAGE_EXTENSIONS,
    file_channels,
    load_image_folder,
    require_one_size,
    resize_image,
)
from labelzip.data.samples import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    SAMPLE_SETS,
    decode_image,
    foolbox_data_dir,
    load_foolbox_samples,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "IMAGE_EXTENSIONS",
    "SAMPLE_SETS",
    "ImageDataset",
    "decode_image",
    "file_channels",
    "fingerprint_tensors",
    "foolbox_data_dir",
    "load_fashion_mnist",
    "load_foolbox_samples",
    "load_image_folder",
    "read_idx",
    "require_one_size",
    "resize_image",
]
