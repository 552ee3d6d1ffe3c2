"""Teachers and test sets by name, for the vision commands.

``convnet`` / ``resnet`` are trained on Fashion-MNIST once and cached (the same
cache entry ``labelzip distill`` uses); ``efficientnet-lite0`` is the real
ImageNet-1K teacher; any other model comes from a file (TorchScript, or a
whole pickled ``nn.Module``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from labelzip.data.base import ImageDataset
from labelzip.errors import ConfigError, InputError

__all__ = ["TEACHERS", "TEST_SETS", "load_teacher", "load_test_set"]

logger = logging.getLogger(__name__)

TEACHERS: tuple[str, ...] = ("convnet", "resnet", "efficientnet-lite0")
TEST_SETS: tuple[str, ...] = ("fashion-mnist", "none")


def load_teacher(
    name: str | None,
    *,
    file: str | os.PathLike[str] | None = None,
    epochs: int = 3,
    device: torch.device | str = "cpu",
    data_root: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, str]:
    """A teacher in eval mode on ``device`` and its identifier.

    Args:
        name: one of :data:`TEACHERS` (ignored when ``file`` is given).
        file: a TorchScript file or a ``torch.save``-d ``nn.Module`` taking
            (B, ch, H, W) views in 0..255 (unpickling runs code: only load
            files you trust).
        epochs: training epochs of a small Fashion-MNIST teacher (cache key).
        device: where the teacher runs.
        data_root: folder with the Fashion-MNIST IDX files (default Debian's).

    Raises:
        ConfigError: unknown name. InputError: unreadable file.
    """
    if file is not None:
        return _from_file(Path(file), device)
    if name == "efficientnet-lite0":
        from labelzip.teachers import load_efficientnet_lite0

        model = load_efficientnet_lite0(device)
        return model, f"efficientnet-lite0:{_short_id(model)}"
    if name in ("convnet", "resnet"):
        from labelzip.data import load_fashion_mnist
        from labelzip.teachers import train_teacher

        trained = train_teacher(
            load_fashion_mnist("train", root=data_root), name, epochs, 0, device
        )
        return trained.model.eval(), f"{name}:{trained.key}"
    raise ConfigError(f"unknown teacher {name!r}; use one of {TEACHERS} or a file")


def _short_id(model: nn.Module) -> str:
    from labelzip.pipelines.imageset import model_id

    return model_id(model).rsplit(":", 1)[1]


def _from_file(path: Path, device: torch.device | str) -> tuple[nn.Module, str]:
    if not path.is_file():
        raise InputError(f"teacher file {str(path)!r} does not exist")
    model: nn.Module
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated but still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError):
        try:
            loaded = torch.load(str(path), map_location=device, weights_only=False)
        except Exception as exc:
            raise InputError(
                f"cannot load teacher {str(path)!r} as TorchScript or a pickled "
                f"nn.Module: {exc}"
            ) from exc
        if not isinstance(loaded, nn.Module):
            raise InputError(
                f"{str(path)!r} holds a {type(loaded).__name__}, not an nn.Module; "
                "save the whole model (torch.save(model, path)) or TorchScript"
            ) from None
        model = loaded
    return model.eval(), f"{path.stem}:{_short_id(model)}"


def load_test_set(
    name: str, *, channels: int = 1, data_root: str | os.PathLike[str] | None = None
) -> ImageDataset | None:
    """The real test set: ``fashion-mnist`` (t10k), ``none``, or a class-folder path."""
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

    return load_image_folder(path, channels=channels)
