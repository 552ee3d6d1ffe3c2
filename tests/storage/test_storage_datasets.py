"""Dataset presets and the per-image byte models."""

from __future__ import annotations

import math

import pytest

from labelzip.errors import ConfigError
from labelzip.storage import (
    DATASETS,
    custom_dataset,
    get_dataset,
    image_bytes_per_image,
    storage_table,
)
from labelzip.storage.datasets import (
    JPEG_BITS_PER_PIXEL,
    JPEG_HEADER_BYTES,
    PNG_HEADER_BYTES,
    PNG_RAW_FRACTION,
)


def test_presets_have_the_documented_shapes() -> None:
    expected = {
        "imagenet-1k": (1000, 224, 3),
        "imagenet-21k": (10450, 224, 3),
        "imagenet-21k-full": (21843, 224, 3),
        "tiny-imagenet": (200, 64, 3),
        "cifar-10": (10, 32, 3),
        "cifar-100": (100, 32, 3),
        "fashion-mnist": (10, 28, 1),
    }
    got = {k: (v.num_classes, v.resolution, v.channels) for k, v in DATASETS.items()}
    assert got == expected


def test_unknown_dataset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'imagenet'.*cifar-10"):
        get_dataset("imagenet")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 32, 3), "num_classes must be >= 2"),
        ((10, 0, 3), "resolution"),
        ((10, 32, 2), "channels must be 1 or 3"),
    ],
)
def test_custom_dataset_validates(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        custom_dataset(*args)


def test_raw_jpeg_png_bytes_by_hand() -> None:
    gray = custom_dataset(10, 8, 1)  # 64 pixels, 1 channel
    assert image_bytes_per_image(gray, "raw") == 64
    # 331 B header + ceil(64 * (2.2767 / 1.5) / 8) = 331 + ceil(12.14) = 344
    assert image_bytes_per_image(gray, "jpeg") == 344
    # 73 B header + ceil(64 * 0.78) = 73 + 50
    assert image_bytes_per_image(gray, "png-estimate") == 123
    rgb = get_dataset("imagenet-1k")
    assert image_bytes_per_image(rgb, "raw") == 224 * 224 * 3
    jpeg = JPEG_HEADER_BYTES[3] + math.ceil(224 * 224 * JPEG_BITS_PER_PIXEL[3] / 8)
    assert image_bytes_per_image(rgb, "jpeg") == jpeg == 14913
    png = PNG_HEADER_BYTES[3] + math.ceil(224 * 224 * 3 * PNG_RAW_FRACTION)
    assert image_bytes_per_image(rgb, "png-estimate") == png


def test_unknown_image_format() -> None:
    with pytest.raises(ConfigError, match="unknown image format 'webp'"):
        image_bytes_per_image(get_dataset("cifar-10"), "webp")


def test_jpeg_model_reproduces_published_imagenet_image_sizes() -> None:
    """SRe2L/LPLD distilled ImageNet-1K images: 0.15/0.30/0.75/1.49/2.98 GB."""
    rows = storage_table(
        dataset="imagenet-1k", framework="sre2l", ipc=[10, 20, 50, 100, 200]
    )
    got = [round(row.image_bytes / 1e9, 2) for row in rows]
    assert got == [0.15, 0.30, 0.75, 1.49, 2.98]
