"""ImageFolder-style datasets: ``root/<class_name>/*.jpg|png``.

This is how distilled image sets (SRe2L, RDED, ...) are usually stored: one
folder per class. Class ids follow the sorted folder names unless an explicit
class-index map is given (needed when a folder set is a subset of the classes,
e.g. ImageNet class folders ``n01440764`` -> 0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from labelzip.data.base import ImageDataset, fingerprint_tensors
from labelzip.data.samples import decode_image
from labelzip.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


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


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    class_to_idx: Mapping[str, int] | None = None,
    channels: int = 3,
) -> ImageDataset:
    """Load all images under ``root/<class>/`` as uint8 tensors.

    Args:
        root: the dataset folder.
        class_to_idx: explicit class-name -> id map; default sorted folder names.
            Class ids without a folder get the name ``class_<id>``.
        channels: 3 (RGB) or 1 (grayscale); images are converted.

    Returns:
        An :class:`ImageDataset`; images are (N, C, H, W) when all sizes agree,
        else a list of (C, H, W). Order: class folder by name, then file name.

    Raises:
        InputError: missing root, no images, unknown class folders, bad files.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise InputError(f"image folder {str(folder)!r} does not exist")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
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
    images = [
        decode_image(raw, channels, rel)
        for raw, (rel, _, _) in zip(raws, entries, strict=True)
    ]
    labels = torch.tensor([label for _, label, _ in entries], dtype=torch.int64)
    sources = tuple(rel for rel, _, _ in entries)
    sizes = {tuple(image.shape) for image in images}
    return ImageDataset(
        name=f"folder/{folder.name}",
        images=torch.stack(images) if len(sizes) == 1 else images,
        labels=labels,
        class_names=names,
        fingerprint=fingerprint_tensors(*sources, *raws, labels, str(channels)),
        sources=sources,
    )
