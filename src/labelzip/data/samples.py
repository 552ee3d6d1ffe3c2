"""The sample images shipped in the foolbox wheel (``foolbox/data/``).

20 images each of ImageNet (512x512 JPEG), CIFAR-10, CIFAR-100 (32x32 PNG),
MNIST and Fashion-MNIST (28x28 PNG), named ``<set>_<nn>_<class>.<ext>``. They
give real natural images for the ImageNet teacher offline. foolbox is installed
with ``--no-deps`` and never imported: only its package folder is located.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from labelzip.data.base import ImageDataset, fingerprint_tensors
from labelzip.data.fashion_mnist import FASHION_MNIST_CLASSES
from labelzip.errors import InputError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "SAMPLE_SETS",
    "decode_image",
    "foolbox_data_dir",
    "load_foolbox_samples",
]

SampleSet = Literal["imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST"]
SAMPLE_SETS: tuple[str, ...] = (
    "imagenet",
    "cifar10",
    "cifar100",
    "mnist",
    "fashionMNIST",
)
_NAME = re.compile(
    r"^(?P<set>[A-Za-z0-9]+)_(?P<num>\d+)_(?P<label>\d+)\.(png|jpg|jpeg)$"
)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
    bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock
    cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest
    fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard
    lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
    rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
    snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
    television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf
    woman worm""".split()
)
_CLASSES: dict[str, tuple[str, ...]] = {
    # ImageNet names are not available offline; ids are the standard 0..999.
    "imagenet": tuple(f"imagenet_{i}" for i in range(1000)),
    "cifar10": CIFAR10_CLASSES,
    "cifar100": CIFAR100_CLASSES,
    "mnist": tuple(str(i) for i in range(10)),
    "fashionMNIST": FASHION_MNIST_CLASSES,
}
_CHANNELS = {"imagenet": 3, "cifar10": 3, "cifar100": 3, "mnist": 1, "fashionMNIST": 1}


def foolbox_data_dir() -> Path:
    """The ``data`` folder of the installed foolbox package (without importing it).

    Raises:
        InputError: foolbox is not installed or has no data folder.
    """
    spec = importlib.util.find_spec("foolbox")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / "data"
        if folder.is_dir():
            return folder
    raise InputError(
        "foolbox sample images not found; install them with "
        "`pip install --no-deps foolbox==3.3.4`"
    )


def decode_image(raw: bytes, channels: int, name: str = "image") -> torch.Tensor:
    """Decode JPEG/PNG bytes to a (channels, H, W) uint8 tensor with Pillow."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            converted = image.convert("RGB" if channels == 3 else "L")
            array = np.asarray(converted, dtype=np.uint8).copy()
    except Exception as exc:  # Pillow raises many types for bad files
        raise InputError(f"cannot decode {name}: {exc}") from exc
    tensor = torch.from_numpy(array)
    return tensor.permute(2, 0, 1).contiguous() if channels == 3 else tensor[None]


def load_foolbox_samples(
    which: SampleSet, folder: str | os.PathLike[str] | None = None
) -> ImageDataset:
    """Load one sample set, labels taken from the file names.

    ``imagenet_00_243.jpg`` is image 0 of class 243. Images are (20, C, H, W)
    uint8 (C = 3 for ImageNet/CIFAR, 1 for MNIST/Fashion-MNIST).

    Args:
        which: one of :data:`SAMPLE_SETS`.
        folder: the sample folder; default :func:`foolbox_data_dir`.

    Raises:
        InputError: unknown set, foolbox missing, or no matching files.
    """
    if which not in _CLASSES:
        raise InputError(f"unknown sample set {which!r}; use one of {SAMPLE_SETS}")
    root = Path(folder) if folder is not None else foolbox_data_dir()
    files = []
    for path in sorted(root.iterdir()):
        match = _NAME.match(path.name)
        if match and match["set"] == which:
            files.append((int(match["num"]), int(match["label"]), path))
    if not files:
        raise InputError(f"no {which} sample images in {str(root)!r}")
    files.sort()
    raws = [path.read_bytes() for _, _, path in files]
    images = [
        decode_image(raw, _CHANNELS[which], path.name)
        for raw, (_, _, path) in zip(raws, files, strict=True)
    ]
    labels = torch.tensor([label for _, label, _ in files], dtype=torch.int64)
    names = tuple(path.name for _, _, path in files)
    sizes = {tuple(image.shape) for image in images}
    return ImageDataset(
        name=f"foolbox/{which}",
        images=torch.stack(images) if len(sizes) == 1 else images,
        labels=labels,
        class_names=_CLASSES[which],
        fingerprint=fingerprint_tensors(*names, *raws, labels),
        sources=names,
    )
