"""Helpers shared by the distillation methods: seeds, configs, teacher identity."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from labelzip.data.base import ImageDataset
from labelzip.errors import ConfigError, InputError

__all__ = [
    "build_config",
    "class_names_for",
    "derive_seed",
    "eval_mode",
    "model_fingerprint",
    "quantize",
    "resolve_classes",
    "resolve_device",
    "stacked_images",
    "teacher_identity",
    "teacher_num_classes",
]

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that is a pure function of ``seed`` and ``keys``.

    Each batch of a method draws from its own generator seeded this way, so a
    batch's random numbers do not depend on how many batches ran before it.
    """
    blob = json.dumps([seed, *[str(k) for k in keys]]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def build_config(config_class: type[ConfigT], options: Mapping[str, Any]) -> ConfigT:
    """Validate method options; pydantic errors become one-line ConfigErrors."""
    try:
        return config_class(**options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"invalid {config_class.__name__} options: {problems}"
        ) from exc


def model_fingerprint(model: nn.Module) -> str:
    """sha256 hex over a model's state dict (names, dtypes, shapes, bytes, sorted).

    The same digest as :func:`labelzip.pipelines.imageset.model_id`, so a set's
    ``teacher_id`` and a relabel archive's teacher id agree for one model.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_identity(teacher: nn.Module | None, teacher_id: str | None) -> str | None:
    """``teacher_id`` if given, else ``<name>:<16 hex of its weights' sha256>``.

    The name is ``efficientnet-lite0`` for the ImageNet teacher, else the class name.
    """
    if teacher_id is not None:
        return teacher_id
    if teacher is None:
        return None
    name = type(teacher).__name__
    if name == "ImageNetTeacher":
        name = "efficientnet-lite0"
    return f"{name}:{model_fingerprint(teacher)[:16]}"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its flags afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags.items():
            module.training = flag


def resolve_device(
    device: torch.device | str | None, teacher: nn.Module | None
) -> torch.device:
    """``device``, else the teacher's parameters' device, else CPU."""
    if device is not None:
        return torch.device(device)
    if teacher is not None:
        for param in teacher.parameters():
            return param.device
    return torch.device("cpu")


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float pixels in 0..255 -> uint8 (round half to even, clamped), on the CPU."""
    return images.detach().round().clamp(0, 255).to(device="cpu", dtype=torch.uint8)


def stacked_images(dataset: ImageDataset, method: str) -> torch.Tensor:
    """The dataset's (N, C, H, W) uint8 tensor, or an InputError naming the method."""
    images = dataset.images
    if not isinstance(images, torch.Tensor):
        sizes = sorted({tuple(im.shape) for im in images})[:3]
        raise InputError(
            f"{method} needs images of one size, but {dataset.name} mixes sizes "
            f"such as {sizes}; resize them first (e.g. method 'import' with image_size=)"
        )
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise InputError(
            f"{dataset.name}: images must be (N, C, H, W) uint8, got "
            f"{tuple(images.shape)} {images.dtype}"
        )
    return images


@torch.no_grad()
def teacher_num_classes(
    teacher: nn.Module, channels: int, size: tuple[int, int], device: torch.device
) -> int:
    """The teacher's output width: its ``num_classes`` attribute or a probe forward."""
    declared = getattr(teacher, "num_classes", None)
    if isinstance(declared, int):
        return declared
    with eval_mode(teacher):
        probe = torch.full((1, channels, *size), 128.0, device=device)
        return int(teacher(probe).shape[-1])


def class_names_for(
    dataset: ImageDataset | None, teacher: nn.Module | None, num_classes: int
) -> tuple[str, ...]:
    """Class names from the dataset, else ImageNet ids, else ``class_<i>``."""
    if dataset is not None:
        if dataset.num_classes != num_classes:
            raise InputError(
                f"the teacher has {num_classes} classes but {dataset.name} has "
                f"{dataset.num_classes}; use a teacher trained on this dataset"
            )
        return dataset.class_names
    if type(teacher).__name__ == "ImageNetTeacher" and num_classes == 1000:
        # The same names as labelzip.data's ImageNet samples (ids 0..999).
        return tuple(f"imagenet_{i}" for i in range(1000))
    return tuple(f"class_{i}" for i in range(num_classes))


def resolve_classes(classes: Sequence[int] | None, num_classes: int) -> list[int]:
    """The sorted class ids to distil (default all), validated."""
    if classes is None:
        return list(range(num_classes))
    chosen = sorted({int(c) for c in classes})
    if not chosen:
        raise ConfigError("classes is empty; give at least one class id")
    if chosen[0] < 0 or chosen[-1] >= num_classes:
        raise ConfigError(
            f"classes must lie in [0, {num_classes}), got ids from {chosen[0]} "
            f"to {chosen[-1]}"
        )
    return chosen
