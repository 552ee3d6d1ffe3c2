"""One entry point for every method: ``distill(method, dataset, teacher, ipc, ...)``.

Example:
    >>> from labelzip.data import load_fashion_mnist
    >>> from labelzip.teachers import train_teacher
    >>> train = load_fashion_mnist("train")
    >>> teacher = train_teacher(train, "convnet").model
    >>> subset = distill("random", train, None, ipc=10, seed=0)
    >>> recovered = distill("sre2l", train, teacher, ipc=10, seed=0, steps=200)
    >>> recovered.save("sre2l-ipc10.safetensors")
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from labelzip.data.base import ImageDataset
from labelzip.distill._common import build_config, teacher_identity
from labelzip.distill.base import DistilledSet, ProgressCallback, RunOptions
from labelzip.distill.imported import ImportConfig, import_folder
from labelzip.distill.rded import RDEDConfig, rded
from labelzip.distill.recover import CDAConfig, LPLDConfig, RecoverConfig, recover
from labelzip.distill.subset import RandomConfig, random_subset
from labelzip.errors import ConfigError, InputError

__all__ = ["METHOD_CONFIGS", "METHODS", "distill", "method_config"]

METHOD_CONFIGS: dict[str, type[BaseModel]] = {
    "random": RandomConfig,
    "sre2l": RecoverConfig,
    "cda": CDAConfig,
    "lpld": LPLDConfig,
    "rded": RDEDConfig,
    "import": ImportConfig,
}
METHODS: tuple[str, ...] = tuple(METHOD_CONFIGS)
_NEEDS_TEACHER = ("sre2l", "cda", "lpld", "rded")
_NEEDS_DATA = ("random", "rded")


def method_config(method: str, **options: Any) -> BaseModel:
    """The validated config of ``method`` (defaults filled in).

    Raises:
        ConfigError: unknown method, unknown option, or an out-of-range value.
    """
    if method not in METHOD_CONFIGS:
        raise ConfigError(
            f"unknown distillation method {method!r}; use one of {METHODS}"
        )
    return build_config(METHOD_CONFIGS[method], options)


def distill(
    method: str,
    dataset: ImageDataset | None,
    teacher: nn.Module | None = None,
    ipc: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    *,
    progress: ProgressCallback | None = None,
    teacher_id: str | None = None,
    **options: Any,
) -> DistilledSet:
    """Make a distilled image set with any method; all return a :class:`DistilledSet`.

    Args:
        method: one of :data:`METHODS`: ``random``, ``sre2l``, ``cda``, ``lpld``,
            ``rded``, ``import``.
        dataset: the real dataset (N, C, H, W) uint8 with labels. Required for
            ``random`` and ``rded``; for recovery it gives class names, image
            shape and (``lpld``) class-wise statistics, and may be ``None`` for a
            data-free ImageNet run; for ``import`` it gives class names and size.
        teacher: a classifier taking 0..255 images; required for recovery and
            ``rded`` (it is moved to ``device`` and run in eval mode).
        ipc: images per class (``import``: optional cap).
        seed: the same seed gives the same images, bit for bit on one machine.
        device: where to run; default the teacher's device.
        progress: ``callback(done, total)`` (steps for recovery, classes for rded).
        teacher_id: recorded in the set; default the teacher's class name and
            weight hash.
        **options: the method's config fields (see :data:`METHOD_CONFIGS`), e.g.
            ``steps=200``, ``factor=2``, ``folder="released/"``.

    Raises:
        ConfigError: unknown method or option, missing teacher/dataset/ipc.
        InputError: bad data (IPC above what the data allows, wrong shapes).
    """
    config = method_config(method, **options)
    if method in _NEEDS_TEACHER and teacher is None:
        raise ConfigError(f"method {method!r} needs a teacher")
    if method in _NEEDS_DATA and dataset is None:
        raise ConfigError(f"method {method!r} draws real images: pass a dataset")
    if method != "import" and ipc is None:
        raise ConfigError(f"method {method!r} needs ipc (images per class)")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if ipc is not None and ipc < 1:
        raise InputError(f"ipc must be >= 1, got {ipc}")
    run = RunOptions(seed, device, progress, teacher_id)
    if method == "random":
        assert isinstance(config, RandomConfig) and dataset is not None and ipc
        return random_subset(dataset, ipc, config, seed=seed, teacher_id=teacher_id)
    if method == "rded":
        assert isinstance(config, RDEDConfig) and dataset is not None
        assert teacher is not None and ipc
        return rded(dataset, teacher, ipc, config, run)
    if method == "import":
        assert isinstance(config, ImportConfig)
        declared = getattr(teacher, "num_classes", None)
        return import_folder(
            config, dataset, ipc,
            teacher_id=teacher_identity(teacher, teacher_id),
            num_classes=declared if isinstance(declared, int) else None,
        )  # fmt: skip
    assert isinstance(config, RecoverConfig) and teacher is not None and ipc
    return recover(method, dataset, teacher, ipc, config, run)
