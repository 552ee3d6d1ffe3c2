"""ImageFolder-style datasets: ``root/<class_name>/*.jpg|png``, grayscale or RGB.

This is how distilled image sets (SRe2L, RDED, ...) and many users' own data are
stored: one folder per class. Class ids follow the sorted folder names unless an
explicit class-index map is given (needed when a folder set is a subset of the
classes, e.g. ImageNet class folders ``n01440764`` -> 0).

Channels come from the files (grayscale modes give 1, colour modes 3; all files
must agree) unless forced. Size: the files' own when no ``image_size`` is given
(a list of images when sizes differ), else every image of another size is
resized (antialiased bilinear, aspect not kept) to ``image_size``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from labelzip.data.base import ImageDataset, fingerprint_tensors
from labelzip.data.samples import decode_image
from labelzip.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "file_channels",
    "load_image_folder",
    "require_one_size",
    "resize_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Pillow modes that hold one intensity per pixel (with or without alpha).
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _class_map(
    root: Path, class_to_idx: Mapping[str, int] | None
) -> tuple[dict[str, int], tuple[str, ...]]:
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if class_to_idx is None:
        if not folders:
            raise InputError(f"{str(root)!r} has no class folders (root/<class>/*.png)")
        return {name: i for i, name in enumerate(folders)}, tuple(folders)
    mapping = dict(class_to_idx)
    ids = sorted(mapping.values())
    if len(set(ids)) != len(ids) or (ids and ids[0] < 0):
        raise InputError(f"class_to_idx must map to distinct ids >= 0, got {ids[:10]}")
    unknown = [name for name in folders if name not in mapping]
    if unknown:
        raise InputError(
            f"class folders {unknown[:5]} of {str(root)!r} are not in class_to_idx; "
            "add them or remove the folders"
        )
    num_classes = ids[-1] + 1 if ids else 0
    names = [f"class_{i}" for i in range(num_classes)]
    for name, idx in mapping.items():
        names[idx] = name
    return mapping, tuple(names)


def file_channels(raw: bytes, name: str = "image") -> int:
    """1 for a grayscale image file (or a palette of grays), 3 for colour.

    Reads the header (and palette) only; the pixels are not decoded.

    Raises:
        InputError: the bytes are not an image Pillow can open.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            mode = image.mode
            palette = image.getpalette() if mode in ("P", "PA") else None
    except Exception as exc:  # Pillow raises many types for bad files
        raise InputError(f"cannot decode {name}: {exc}") from exc
    if mode in _GRAY_MODES:
        return 1
    if palette is not None:
        rgb = [palette[i : i + 3] for i in range(0, len(palette), 3)]
        return 1 if all(r == g == b for r, g, b in rgb) else 3
    return 3


def _resolve_channels(raws: Sequence[bytes], names: Sequence[str], root: Path) -> int:
    """The one channel count of all files, or an InputError naming an odd file."""
    first: tuple[int, str] | None = None
    for raw, name in zip(raws, names, strict=True):
        count = file_channels(raw, name)
        if first is None:
            first = (count, name)
        elif count != first[0]:
            kinds = {1: "grayscale", 3: "RGB"}
            raise InputError(
                f"images under {str(root)!r} mix grayscale and RGB: {name!r} is "
                f"{kinds[count]} but {first[1]!r} is {kinds[first[0]]}; convert them "
                "to one kind or force one with channels=1|3 (--channels)"
            )
    assert first is not None
    return first[0]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (C, H, W) uint8 image resized to ``size`` (antialiased bilinear, aspect not
    kept, rounded to uint8); returned unchanged when it already has that size."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(
        image[None].float(),
        size=size,
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def _size_pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise InputError(f"image_size must be positive, got {image_size}")
    return h, w


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    class_to_idx: Mapping[str, int] | None = None,
    channels: int | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> ImageDataset:
    """Load all images under ``root/<class>/`` as uint8 tensors.

    Args:
        root: the dataset folder.
        class_to_idx: explicit class-name -> id map; default sorted folder names.
            Class ids without a folder get the name ``class_<id>``.
        channels: 3 (RGB) or 1 (grayscale): every image is converted. Default
            the files' own: all must be grayscale, or all colour.
        image_size: resize every image of another size to this side (or (H, W)).
            Default: keep the files' sizes.

    Returns:
        An :class:`ImageDataset`; images are (N, C, H, W) when all sizes agree
        (always with ``image_size``), else a list of (C, H, W). Order: class
        folder by name, then file name. The fingerprint covers the file names,
        bytes, labels, channel count, and the size when any image was resized.

    Raises:
        InputError: missing root, no images, unknown class folders, bad files,
            files that mix grayscale and RGB (without ``channels``).
    """
    folder = Path(root)
    if not folder.is_dir():
        raise InputError(f"image folder {str(folder)!r} does not exist")
    if channels is not None and channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    size = _size_pair(image_size) if image_size is not None else None
    mapping, names = _class_map(folder, class_to_idx)
    entries = []
    for class_name in sorted(mapping):
        class_dir = folder / class_name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                entries.append((f"{class_name}/{path.name}", mapping[class_name], path))
    if not entries:
        raise InputError(
            f"no {'/'.join(IMAGE_EXTENSIONS)} images under {str(folder)!r}/<class>/"
        )
    raws = [path.read_bytes() for _, _, path in entries]
    sources = tuple(rel for rel, _, _ in entries)
    if channels is None:
        channels = _resolve_channels(raws, sources, folder)
    images = [
        decode_image(raw, channels, rel) for raw, rel in zip(raws, sources, strict=True)
    ]
    extra: list[str] = []
    if size is not None and any(tuple(im.shape[-2:]) != size for im in images):
        images = [resize_image(image, size) for image in images]
        extra.append(f"resized to {size[0]}x{size[1]}")
    labels = torch.tensor([label for _, label, _ in entries], dtype=torch.int64)
    sizes = {tuple(image.shape) for image in images}
    return ImageDataset(
        name=f"folder/{folder.name}",
        images=torch.stack(images) if len(sizes) == 1 else images,
        labels=labels,
        class_names=names,
        fingerprint=fingerprint_tensors(*sources, *raws, labels, str(channels), *extra),
        sources=sources,
    )


def require_one_size(dataset: ImageDataset, hint: str) -> torch.Tensor:
    """The dataset's (N, C, H, W) images, or an InputError naming two files of
    different sizes and ending in ``hint`` (how to resize them)."""
    images = dataset.images
    if isinstance(images, torch.Tensor):
        return images
    first = tuple(images[0].shape[-2:])
    odd = next(i for i, im in enumerate(images) if tuple(im.shape[-2:]) != first)
    names = dataset.sources or tuple(f"image {i}" for i in range(len(images)))
    h, w = images[odd].shape[-2:]
    raise InputError(
        f"images of {dataset.name} differ in size: {names[odd]!r} is {h}x{w} but "
        f"{names[0]!r} is {first[0]}x{first[1]}; {hint}"
    )
