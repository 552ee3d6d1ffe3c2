"""``import``: a distilled set a user already has, as an ImageFolder tree.

Released SRe2L / CDA / RDED / LPLD sets are folders of images, one sub-folder
per class. Their class folders are named by class (``n01440764``) or by index
(SRe2L writes ``new000``, ``new001``, ...; others ``00000``); getting this map
wrong silently permutes labels, so it is explicit here:

- ``name``: folder names are class names of the dataset (or teacher);
- ``index``: the trailing digits of a folder name are the class id;
- ``sorted``: sorted folder names get ids 0, 1, ... (torchvision's rule);
- ``auto``: ``name`` if every folder is a known class name, else ``index`` if
  every folder name ends in digits, else ``sorted``.

Images are resized to ``image_size`` (antialiased bilinear, aspect not kept:
:func:`labelzip.data.resize_image`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.data.base import ImageDataset
from labelzip.data.folder import load_image_folder, resize_image
from labelzip.distill._common import teacher_identity
from labelzip.distill.base import DistilledSet, check_ipc
from labelzip.errors import ConfigError, InputError

__all__ = ["ImportConfig", "folder_class_map", "import_folder"]

logger = logging.getLogger(__name__)

_TRAILING_DIGITS = re.compile(r"(\d+)$")


class ImportConfig(BaseModel):
    """Where the images are and how to read them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    folder: str = Field(description="root of the ImageFolder tree (root/<class>/*.png)")
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="resize every image to this side; default the dataset's, else "
        "keep (all images must then share one size)",
    )
    channels: int | None = Field(
        default=None, description="1 or 3; default the dataset's, else 3"
    )
    class_map: Literal["auto", "name", "index", "sorted"] = Field(
        default="auto", description="how class folders map to class ids"
    )
    source_method: str | None = Field(
        default=None, description="the framework that made the set (provenance only)"
    )


def folder_class_map(
    root: Path, mode: str, class_names: tuple[str, ...] | None
) -> tuple[dict[str, int], str]:
    """Class folder name -> class id, and the mode actually used.

    Raises:
        InputError: no class folders, unknown names, missing digits, or ids
            beyond the known classes.
    """
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"{str(root)!r} has no class folders (root/<class>/*.png)")
    if mode == "auto":
        if class_names is not None and all(f in class_names for f in folders):
            mode = "name"
        elif all(_TRAILING_DIGITS.search(f) for f in folders):
            mode = "index"
        else:
            mode = "sorted"
    if mode == "name":
        if class_names is None:
            raise ConfigError("class_map='name' needs class names: pass a dataset")
        unknown = [f for f in folders if f not in class_names]
        if unknown:
            raise InputError(
                f"class folders {unknown[:5]} are not class names of the dataset "
                f"(e.g. {list(class_names[:3])}); use class_map='index' or 'sorted'"
            )
        return {f: class_names.index(f) for f in folders}, mode
    if mode == "index":
        mapping = {}
        for f in folders:
            match = _TRAILING_DIGITS.search(f)
            if match is None:
                raise InputError(
                    f"class folder {f!r} does not end in a class id; use "
                    "class_map='name' or 'sorted'"
                )
            mapping[f] = int(match.group(1))
        ids = sorted(mapping.values())
        if len(set(ids)) != len(ids):
            raise InputError(f"two class folders of {str(root)!r} map to the same id")
        if class_names is not None and ids[-1] >= len(class_names):
            raise InputError(
                f"class folder id {ids[-1]} is out of range for {len(class_names)} "
                "classes"
            )
        return mapping, mode
    if mode == "sorted":
        return {f: i for i, f in enumerate(folders)}, mode
    raise ConfigError(f"class_map must be auto, name, index or sorted, got {mode!r}")


def import_folder(
    config: ImportConfig,
    dataset: ImageDataset | None = None,
    ipc: int | None = None,
    *,
    teacher_id: str | None = None,
    num_classes: int | None = None,
) -> DistilledSet:
    """Read a folder of distilled images as a :class:`DistilledSet`.

    Args:
        config: :class:`ImportConfig`.
        dataset: the real dataset the set distils: gives class names, image
            size and channels (optional).
        ipc: keep the first ``ipc`` images of each class (file-name order);
            default all, and the set's ``ipc`` is its largest class count.
        teacher_id: provenance.
        num_classes: class count when no dataset is given (else the largest
            folder id + 1 for ``index``, the folder count for ``sorted``).

    Raises:
        InputError: missing folder, unreadable images, mixed sizes without
            ``image_size``, a class with fewer than ``ipc`` images.
    """
    root = Path(config.folder)
    if not root.is_dir():
        raise InputError(f"image folder {str(root)!r} does not exist")
    known = dataset.class_names if dataset is not None else None
    mapping, mode = folder_class_map(root, config.class_map, known)
    channels = _channels(config, dataset)
    folder = load_image_folder(root, class_to_idx=mapping, channels=channels)
    size = _target_size(config, dataset, folder)
    pixels = torch.stack(
        [resize_image(folder.images[i], size) for i in range(len(folder))]
    )
    labels = folder.labels
    names = _class_names(known, mode, mapping, num_classes)
    present = sorted(set(labels.tolist()))
    counts = torch.bincount(labels, minlength=len(names))[present]
    keep = torch.arange(len(labels))
    if ipc is not None:
        check_ipc(ipc, counts, tuple(names[c] for c in present))
        keep = torch.cat(
            [torch.nonzero(labels == c).reshape(-1)[:ipc] for c in present]
        )
        pixels, labels = pixels[keep], labels[keep]
    set_ipc = ipc if ipc is not None else int(counts.max())
    if ipc is None and int(counts.min()) != set_ipc:
        logger.warning(
            "imported set is unbalanced: %d to %d images per class",
            int(counts.min()),
            set_ipc,
        )
    resolved = config.model_dump(mode="json")
    resolved.update(
        class_map=mode,
        image_size=list(size),
        channels=channels,
        class_folders=dict(sorted(mapping.items())),
        sources=[folder.sources[int(i)] for i in keep],
    )
    return DistilledSet(
        images=pixels,
        labels=labels,
        class_names=names,
        method="import",
        ipc=set_ipc,
        source_fingerprint=folder.fingerprint,
        teacher_id=teacher_identity(None, teacher_id),
        config=resolved,
    )


def _channels(config: ImportConfig, dataset: ImageDataset | None) -> int:
    """Image channels: the config's, else the dataset's, else 3 (checked)."""
    channels = config.channels
    if channels is None:
        channels = _dataset_channels(dataset) or 3
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    return channels


def _class_names(
    known: tuple[str, ...] | None,
    mode: str,
    mapping: dict[str, int],
    num_classes: int | None,
) -> tuple[str, ...]:
    """Class names: the dataset's, else the folder names by class id (with
    ``class_<id>`` for ids no folder has)."""
    if known is not None:
        return known
    if mode == "sorted":
        return tuple(sorted(mapping, key=mapping.__getitem__))
    total = num_classes or (max(mapping.values()) + 1)
    by_id = {v: k for k, v in mapping.items()}
    return tuple(by_id.get(i, f"class_{i}") for i in range(total))


def _dataset_channels(dataset: ImageDataset | None) -> int | None:
    if dataset is None or len(dataset) == 0:
        return None
    return int(dataset.images[0].shape[0])


def _target_size(
    config: ImportConfig, dataset: ImageDataset | None, folder: ImageDataset
) -> tuple[int, int]:
    if config.image_size is not None:
        return config.image_size, config.image_size
    if dataset is not None and isinstance(dataset.images, torch.Tensor):
        h, w = dataset.images.shape[-2:]
        return int(h), int(w)
    sizes = {tuple(int(v) for v in im.shape[-2:]) for im in folder.images}
    if len(sizes) != 1:
        raise InputError(
            f"images in {config.folder!r} have {len(sizes)} different sizes "
            f"(e.g. {sorted(sizes)[:3]}); give image_size to resize them"
        )
    (h, w) = next(iter(sizes))
    return h, w
