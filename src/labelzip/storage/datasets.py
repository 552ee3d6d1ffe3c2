"""Dataset presets and the bytes of one distilled image.

A distilled dataset ships ``num_classes x IPC`` small images next to its labels.
Their size matters for the all-in comparison, so each format has an explicit,
documented model (docs/storage.md, "Images"):

- ``raw``: uint8 pixels, ``R * R * channels`` bytes per image.
- ``jpeg``: a fixed JFIF header plus a compressed-bits-per-pixel constant
  calibrated on the published ImageNet-1K distilled-image sizes of SRe2L/LPLD
  (0.15 / 0.30 / 0.75 / 1.49 / 2.98 GB for IPC 10 / 20 / 50 / 100 / 200).
- ``png-estimate``: a minimal PNG container plus a fraction of the raw pixels,
  the PNG/raw ratio of natural sample images (a lower bound for noisy
  distilled images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from labelzip.errors import ConfigError

__all__ = [
    "DATASETS",
    "IMAGE_FORMATS",
    "JPEG_BITS_PER_PIXEL",
    "JPEG_HEADER_BYTES",
    "PNG_HEADER_BYTES",
    "PNG_RAW_FRACTION",
    "DatasetSpec",
    "custom_dataset",
    "get_dataset",
    "image_bytes_per_image",
]

IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "raw", "png-estimate")

# Bytes of a JFIF file with no image content, by channel count: Pillow 13
# (libjpeg, quality 75, 4:2:0) writes 633 B for an 8x8 flat RGB image and 331 B
# for a grayscale one (SOI, APP0, DQT, SOF0, DHT, SOS, EOI and a few scan bytes).
JPEG_HEADER_BYTES: dict[int, int] = {3: 633, 1: 331}

# Compressed bits per pixel of the scan data, by channel count. RGB is calibrated
# so that 633 + 224*224*bpp/8 lands in [14900, 14925) bytes, the only per-image
# interval that reproduces all five published ImageNet-1K sizes in GB (10^9).
# Grayscale divides by 1.5: a 4:2:0 colour JPEG codes 1.5 samples per pixel
# (full luma plus two quarter-size chroma planes), grayscale codes one.
JPEG_BITS_PER_PIXEL: dict[int, float] = {3: 2.2767, 1: 2.2767 / 1.5}

# Minimal PNG (signature, IHDR, one IDAT, IEND) of an 8x8 flat image: 75 B RGB,
# 73 B grayscale (Pillow 13, default zlib level).
PNG_HEADER_BYTES: dict[int, int] = {3: 75, 1: 73}

# PNG size over raw size: the largest ratio of natural sample images
# (docs/storage.md, "Images"); distilled images are noisier than photos, so this
# is an estimate on the low side, and ``raw`` is the upper bound.
PNG_RAW_FRACTION = 0.78


@dataclass(frozen=True)
class DatasetSpec:
    """A classification dataset as distillation sees it.

    Attributes:
        name: preset key (``"imagenet-1k"``) or ``"custom"``.
        num_classes: C, the length of one soft label.
        resolution: side of a square distilled image, in pixels.
        channels: 3 (RGB) or 1 (grayscale).
        source: where the numbers come from.
    """

    name: str
    num_classes: int
    resolution: int
    channels: int = 3
    source: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "imagenet-1k": DatasetSpec(
        "imagenet-1k",
        1000,
        224,
        3,
        "ILSVRC-2012; SRe2L/CDA/LPLD distil and relabel at 224 px",
    ),
    "imagenet-21k": DatasetSpec(
        "imagenet-21k",
        10450,
        224,
        3,
        "ImageNet-21K-P (winter21, 10,450 classes) as used by SRe2L/CDA/LPLD "
        "(LPLD config: num_classes 10450); 224 px",
    ),
    "imagenet-21k-full": DatasetSpec(
        "imagenet-21k-full",
        21843,
        224,
        3,
        "full ImageNet-21K (fall11, 21,843 classes); 224 px",
    ),
    "tiny-imagenet": DatasetSpec(
        "tiny-imagenet", 200, 64, 3, "Tiny-ImageNet: 200 classes, 64 px"
    ),
    "cifar-10": DatasetSpec("cifar-10", 10, 32, 3, "CIFAR-10: 10 classes, 32 px"),
    "cifar-100": DatasetSpec("cifar-100", 100, 32, 3, "CIFAR-100: 100 classes, 32 px"),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", 10, 28, 1, "Fashion-MNIST: 10 classes, 28 px grayscale"
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    """The preset called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the presets).
    """
    if name not in DATASETS:
        choices = ", ".join(DATASETS)
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {choices}, "
            "or describe it with --num-classes C --resolution R [--channels 1|3]"
        )
    return DATASETS[name]


def custom_dataset(
    num_classes: int, resolution: int, channels: int = 3, name: str = "custom"
) -> DatasetSpec:
    """A dataset that is not a preset; validates the three numbers."""
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    if resolution < 1:
        raise ConfigError(f"resolution must be >= 1 pixel, got {resolution}")
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    return DatasetSpec(name, num_classes, resolution, channels, "given by the user")


def image_bytes_per_image(spec: DatasetSpec, image_format: str = "jpeg") -> int:
    """Bytes of one distilled ``spec.resolution``-px image stored as ``image_format``.

    Raises:
        ConfigError: unknown format.
    """
    pixels = spec.resolution * spec.resolution
    raw = pixels * spec.channels
    if image_format == "raw":
        return raw
    if image_format == "jpeg":
        scan_bits = pixels * JPEG_BITS_PER_PIXEL[spec.channels]
        return JPEG_HEADER_BYTES[spec.channels] + math.ceil(scan_bits / 8)
    if image_format == "png-estimate":
        return PNG_HEADER_BYTES[spec.channels] + math.ceil(raw * PNG_RAW_FRACTION)
    raise ConfigError(
        f"unknown image format {image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}"
    )
