"""Teachers, training data and test sets by name, for the vision commands.

``convnet`` / ``resnet`` are trained once on the given data (Fashion-MNIST by
default, or the user's own folder) and cached by that data's fingerprint (the
same cache entry ``labelzip distill`` uses); ``efficientnet-lite0`` is the real
ImageNet-1K teacher; any other model comes from a TorchScript file (a pickled
``nn.Module`` only with ``trust_pickle``: see :mod:`labelzip.teachers.files`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from labelzip.data.base import ImageDataset
from labelzip.errors import ConfigError, InputError

__all__ = [
    "DATA_SOURCES",
    "TEACHERS",
    "TEST_SETS",
    "load_teacher",
    "load_test_set",
    "load_train_data",
]

logger = logging.getLogger(__name__)

TEACHERS: tuple[str, ...] = ("convnet", "resnet", "efficientnet-lite0")
TEST_SETS: tuple[str, ...] = ("fashion-mnist", "none")
DATA_SOURCES: tuple[str, ...] = ("fashion-mnist", "folder")


def load_train_data(
    kind: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    channels: int | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """The real training data a small teacher (or a distillation method) uses.

    Args:
        kind: ``fashion-mnist`` (IDX files in ``data_dir``, default Debian's
            folder) or ``folder`` (``data_dir/<class>/*.png|jpg``).
        channels: folder only: force 1 or 3 (default the files' own).
        image_size: folder only: resize every image to this side (default the
            files' own size, which must then be one size).

    Raises:
        ConfigError: unknown kind, folder options for Fashion-MNIST, no folder.
        InputError: unreadable data, mixed channels or sizes.
    """
    if kind == "fashion-mnist":
        if channels is not None and channels != 1:
            raise ConfigError("Fashion-MNIST is grayscale; --channels 3 needs a folder")
        if image_size is not None:
            raise ConfigError(
                "Fashion-MNIST is 28x28; --image-size resizes --dataset folder only"
            )
        from labelzip.data import load_fashion_mnist

        return load_fashion_mnist("train", root=data_dir)
    if kind != "folder":
        raise ConfigError(f"unknown dataset {kind!r}; use one of {DATA_SOURCES}")
    if not data_dir:
        raise ConfigError("--dataset folder needs --data-dir ROOT (root/<class>/*.png)")
    from labelzip.data import load_image_folder, require_one_size

    dataset = load_image_folder(data_dir, channels=channels, image_size=image_size)
    require_one_size(dataset, "pass --image-size N to resize them all")
    return dataset


def load_teacher(
    name: str | None,
    *,
    file: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    epochs: int = 3,
    device: torch.device | str = "cpu",
    data: ImageDataset | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, str]:
    """A teacher in eval mode on ``device`` and its identifier.

    Args:
        name: one of :data:`TEACHERS` (ignored when ``file`` is given).
        file: a TorchScript file taking (B, ch, H, W) views in 0..255.
        trust_pickle: also load a pickled ``nn.Module`` file (runs its code).
        epochs: training epochs of a small teacher (part of the cache key).
        device: where the teacher runs.
        data: what a small teacher trains on; default Fashion-MNIST train.
        data_root: folder with the Fashion-MNIST IDX files (when ``data`` is None).

    Raises:
        ConfigError: unknown name. InputError: unreadable or refused file.
    """
    if file is not None:
        from labelzip.teachers.files import load_teacher_file

        path = Path(file)
        model = load_teacher_file(path, device, trust_pickle=trust_pickle)
        return model, f"{path.stem}:{_short_id(model)}"
    if name == "efficientnet-lite0":
        from labelzip.teachers import load_efficientnet_lite0

        model = load_efficientnet_lite0(device)
        return model, f"efficientnet-lite0:{_short_id(model)}"
    if name in ("convnet", "resnet"):
        from labelzip.teachers import train_teacher

        if data is None:
            data = load_train_data("fashion-mnist", data_root)
        trained = train_teacher(data, name, epochs, 0, device)
        return trained.model.eval(), f"{name}:{trained.key}"
    raise ConfigError(f"unknown teacher {name!r}; use one of {TEACHERS} or a file")


def _short_id(model: nn.Module) -> str:
    from labelzip.pipelines.imageset import model_id

    return model_id(model).rsplit(":", 1)[1]


def load_test_set(
    name: str,
    *,
    channels: int = 1,
    data_root: str | os.PathLike[str] | None = None,
    image_size: tuple[int, int] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> ImageDataset | None:
    """The real test set: ``fashion-mnist`` (t10k), ``none``, or a class-folder path.

    A folder's images are converted to ``channels`` and, when ``image_size`` is
    given, resized to it (the student's view size). When every class folder is
    named after one of ``class_names`` (the distilled set's, e.g. made from a
    train folder of the same layout), folders map to those ids, so a test folder
    without some classes keeps the right labels; otherwise sorted folder names
    give ids 0, 1, ...
    """
    if name == "none":
        return None
    if name == "fashion-mnist":
        from labelzip.data import load_fashion_mnist

        return load_fashion_mnist("test", root=data_root)
    path = Path(name)
    if not path.is_dir():
        raise InputError(
            f"test set {name!r} is neither one of {TEST_SETS} nor a folder of class "
            "folders (root/<class>/*.png)"
        )
    from labelzip.data import load_image_folder

    mapping = None
    folders = {p.name for p in path.iterdir() if p.is_dir()}
    if class_names and folders and folders <= set(class_names):
        mapping = {name: i for i, name in enumerate(class_names)}
    return load_image_folder(
        path, class_to_idx=mapping, channels=channels, image_size=image_size
    )
