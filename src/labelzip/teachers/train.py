"""Train a small teacher once per (dataset, architecture, hyperparameters), then reuse it.

A teacher trains on the dataset it is given (Fashion-MNIST, or a user's folder of
grayscale or RGB images); its input channels are the data's. The cache key is a
sha256 over the dataset fingerprint (which covers the pixels, and so the channels
and size), the architecture and every training hyperparameter, so a changed
dataset or setting retrains and an
unchanged one loads the stored weights (``<cache>/<key>.safetensors`` plus a
JSON record of how it was made). The cache folder is ``~/.cache/labelzip/teachers``,
or ``$LABELZIP_CACHE/teachers`` when that variable is set, or ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from labelzip.augment import ViewConfig, make_views
from labelzip.data.base import ImageDataset
from labelzip.errors import InputError
from labelzip.io import atomic_path
from labelzip.teachers.small import ARCHITECTURES, build_small_teacher

__all__ = [
    "TRAINING_VERSION",
    "TRAIN_THREADS",
    "TeacherTrainConfig",
    "TrainedTeacher",
    "default_cache_dir",
    "evaluate_teacher",
    "predict_logits",
    "teacher_cache_path",
    "train_teacher",
]

logger = logging.getLogger(__name__)

# Bump when the training procedure changes (invalidates caches). 2: CPU training
# pinned to TRAIN_THREADS (the same key trained with 1 or 2 threads gave different
# weights, so a cache filled under another load was not reproducible).
TRAINING_VERSION = 2
TRAIN_THREADS = 1


class TeacherTrainConfig(BaseModel):
    """Everything that determines a trained teacher besides the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str = Field(description=f"architecture, one of {ARCHITECTURES}")
    epochs: int = Field(default=3, ge=1, le=1000, description="passes over the data")
    seed: int = Field(default=0, ge=0, description="init, shuffling and dropout seed")
    batch_size: int = Field(default=128, ge=1, le=65536, description="batch size")
    max_lr: float = Field(default=3e-3, gt=0, le=1.0, description="OneCycle peak LR")
    weight_decay: float = Field(default=5e-4, ge=0, le=1.0, description="AdamW decay")
    flip: bool = Field(default=True, description="random horizontal flips in training")
    crop_scale: tuple[float, float] | None = Field(
        default=(0.5, 1.0),
        description="RandomResizedCrop area range in training (None: no crops); "
        "matching the relabelling views keeps the teacher accurate on them",
    )

    def key(self, dataset_fingerprint: str) -> str:
        record = {
            "dataset": dataset_fingerprint,
            "version": TRAINING_VERSION,
            **self.model_dump(),
        }
        blob = json.dumps(record, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


@dataclass(frozen=True, eq=False)
class TrainedTeacher:
    """A teacher in eval mode plus where it came from."""

    model: nn.Module
    key: str
    path: Path
    from_cache: bool
    train_seconds: float


def default_cache_dir() -> Path:
    """``$LABELZIP_CACHE/teachers`` if set, else ``~/.cache/labelzip/teachers``."""
    root = os.environ.get("LABELZIP_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "labelzip"
    return base / "teachers"


def teacher_cache_path(
    config: TeacherTrainConfig,
    dataset_fingerprint: str,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where :func:`train_teacher` stores (and looks for) this teacher's weights."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{config.arch}-{config.key(dataset_fingerprint)}.safetensors"


def _augment(
    images: torch.Tensor,
    idx: torch.Tensor,
    epoch: int,
    config: TeacherTrainConfig,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """A training batch (B, C, H, W): replayable crop+flip views or plain flips."""
    if config.crop_scale is not None:
        views = ViewConfig(
            output_size=(images.shape[-2], images.shape[-1]),
            scale=config.crop_scale,
            flip_prob=0.5 if config.flip else 0.0,
        )
        x, _ = make_views(
            images, idx, seed=config.seed, epoch=epoch, config=views, device=device
        )
        return x
    x = images[idx].to(device)
    if config.flip:
        flip = torch.rand(len(idx), generator=generator) < 0.5
        x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
    return x


def _train(
    model: nn.Module,
    dataset: ImageDataset,
    config: TeacherTrainConfig,
    device: torch.device,
) -> None:
    """AdamW + OneCycle, label smoothing 0.05, crops and flips; in-place."""
    images = _stacked(dataset)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-len(dataset) // config.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(dataset), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            x = _augment(images, idx, epoch, config, generator, device)
            loss = loss_fn(model(x), dataset.labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        logger.info("teacher epoch %d: train loss %.4f", epoch + 1, total / len(order))
    model.eval()


def _stacked(dataset: ImageDataset) -> torch.Tensor:
    images = dataset.images
    if not isinstance(images, torch.Tensor):
        raise InputError(
            f"{dataset.name}: teachers train on equal-size images only; resize them "
            "(image_size=, --image-size)"
        )
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InputError(
            f"{dataset.name}: teachers train on (N, 1 or 3, H, W) images, got "
            f"{tuple(images.shape)}"
        )
    return images


def _load_cached(model: nn.Module, path: Path, device: torch.device) -> float | None:
    """Load weights into ``model``; the stored training time, or None to retrain."""
    if not path.is_file():
        return None
    try:
        model.load_state_dict(load_file(str(path), device=str(device)))
        meta = json.loads(path.with_suffix(".json").read_text())
        seconds = float(meta["train_seconds"])
    except Exception as exc:  # safetensors, torch and json all raise their own types
        # A stale or damaged cache entry must not block training a fresh one.
        logger.warning("ignoring unusable cached teacher %s: %s", path, exc)
        return None
    model.eval()
    logger.info("loaded cached teacher %s", path)
    return seconds


def train_teacher(
    dataset: ImageDataset,
    arch: str = "convnet",
    epochs: int = 3,
    seed: int = 0,
    device: torch.device | str | None = None,
    *,
    config: TeacherTrainConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TrainedTeacher:
    """Train (or load from the cache) a small teacher on ``dataset``.

    Args:
        dataset: training images (N, C, H, W) uint8 with labels, C = 1 or 3 (the
            teacher's input channels); any one size.
        arch, epochs, seed: the main settings (ignored when ``config`` is given).
        device: where to train/run; default CPU.
        config: full hyperparameters (batch size, LR, ...).
        cache_dir: overrides :func:`default_cache_dir`.

    Returns:
        A :class:`TrainedTeacher` whose model is in eval mode on ``device``.
    """
    if config is None:
        config = TeacherTrainConfig(arch=arch, epochs=epochs, seed=seed)
    device = torch.device(device if device is not None else "cpu")
    path = teacher_cache_path(config, dataset.fingerprint, cache_dir)
    folder, key = path.parent, config.key(dataset.fingerprint)
    channels, height, width = (int(v) for v in _stacked(dataset).shape[1:])
    with torch.random.fork_rng(
        devices=[]
    ):  # init and dropout without global side effects
        torch.manual_seed(config.seed)
        model = build_small_teacher(config.arch, dataset.num_classes, channels)
        model = model.to(device)
        cached = _load_cached(model, path, device)
        if cached is not None:
            return TrainedTeacher(model, key, path, True, cached)
        start = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(TRAIN_THREADS)  # same bytes whatever the caller's setting
        try:
            _train(model, dataset, config, device)
        finally:
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record: dict[str, Any] = {
        "key": key,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "num_images": len(dataset),
        "image_shape": [channels, height, width],
        "training_version": TRAINING_VERSION,
        "train_threads": TRAIN_THREADS if device.type == "cpu" else None,
        "train_seconds": round(seconds, 3),
        "torch": torch.__version__,
        **config.model_dump(),
    }
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"key": key})
    logger.info("trained teacher %s in %.1f s", path, seconds)
    return TrainedTeacher(model, key, path, False, seconds)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Teacher logits (N, C) float32 on CPU for images (N, C_in, H, W)."""
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    out = [
        model(images[s : s + batch_size].to(device)).float().cpu()
        for s in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def evaluate_teacher(
    model: nn.Module, dataset: ImageDataset, batch_size: int = 512
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (equal-size images)."""
    if not isinstance(dataset.images, torch.Tensor):
        raise InputError(f"{dataset.name}: evaluation needs equal-size images")
    logits = predict_logits(model, dataset.images, batch_size)
    return float((logits.argmax(1) == dataset.labels).float().mean())
