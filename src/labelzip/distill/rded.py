"""RDED: stitch the most realistic crops of real images (Sun et al., CVPR'24).

"On the Diversity and Realism of Distilled Dataset": for each class, draw
``candidates`` real images, cut ``num_crops`` random crops from each, and score
every crop with an observer model (here the teacher) by its realism,
``-CE(observer(crop), class)``. Each image keeps its best crop; the best
``ipc * factor**2`` of those are shrunk to 1/factor of the side and tiled
``factor x factor`` into ``ipc`` images, so one distilled image carries several
diverse, realistic patches. (RDED's soft labels are computed per patch region
at relabel time; :func:`patch_boxes` gives the tiling.)

The factor defaults by resolution as RDED's scripts set it: 1 (no stitching)
for small images such as CIFAR's 32 px, 2 from 64 px (Tiny-ImageNet, ImageNet).
At Fashion-MNIST's 28 px a 14 px tile loses detail the teacher needs
(docs/distill.md, ``rded``).

Crops are drawn with :mod:`labelzip.augment`'s counter-based sampler, so the
selection is a pure function of the seed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from labelzip.augment import ViewConfig, render_views, sample_view_params
from labelzip.data.base import ImageDataset
from labelzip.distill._common import (
    derive_seed,
    eval_mode,
    quantize,
    resolve_classes,
    resolve_device,
    stacked_images,
    teacher_identity,
    teacher_num_classes,
)
from labelzip.distill.base import DistilledSet, RunOptions, check_ipc
from labelzip.errors import InputError

__all__ = [
    "FACTOR2_MIN_SIZE",
    "RDEDConfig",
    "patch_boxes",
    "rded",
    "resolve_factor",
    "stitch",
]

logger = logging.getLogger(__name__)

FACTOR2_MIN_SIZE = 64  # images at least this large are stitched 2x2 by default


class RDEDConfig(BaseModel):
    """RDED settings (RDED's defaults: 5 crops, 300 candidates, factor by resolution)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: int | None = Field(
        default=None,
        ge=1,
        le=8,
        description="patches per side of a stitched image; default 1 below "
        f"{FACTOR2_MIN_SIZE} px (RDED's CIFAR setting), else 2 (Tiny-ImageNet, ImageNet)",
    )
    num_crops: int = Field(
        default=5, ge=1, le=100, description="random crops scored per real image"
    )
    candidates: int = Field(
        default=300,
        ge=1,
        le=100_000,
        description="real images drawn per class (raised to ipc * factor**2 if needed)",
    )
    crop_scale: tuple[float, float] = Field(
        default=(0.5, 1.0), description="area fraction range of the random crops"
    )
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="side of the crops and stitched images; default the dataset's",
    )
    batch_size: int = Field(
        default=256, ge=1, le=65_536, description="crops scored per teacher call"
    )
    classes: list[int] | None = Field(
        default=None, description="class ids to distil (default: all classes)"
    )

    @model_validator(mode="after")
    def _check(self) -> RDEDConfig:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}"
            )
        if self.image_size is not None and self.image_size < (self.factor or 1):
            raise ValueError(
                f"image_size {self.image_size} is smaller than factor {self.factor}"
            )
        return self


def resolve_factor(config: RDEDConfig, size: tuple[int, int]) -> int:
    """The configured factor, else 1 below :data:`FACTOR2_MIN_SIZE` px and 2 above."""
    if config.factor is not None:
        return config.factor
    return 1 if min(size) < FACTOR2_MIN_SIZE else 2


def patch_boxes(size: tuple[int, int], factor: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the ``factor**2`` tiles, row-major.

    Tile edges are at ``round(i * side / factor)``, so sides not divisible by
    the factor give tiles that differ by at most one pixel.
    """
    h, w = size
    ys = [round(i * h / factor) for i in range(factor + 1)]
    xs = [round(i * w / factor) for i in range(factor + 1)]
    return [
        (ys[r], xs[c], ys[r + 1] - ys[r], xs[c + 1] - xs[c])
        for r in range(factor)
        for c in range(factor)
    ]


def stitch(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """Tile crops (K * factor**2, C, H, W) into K images (K, C, H, W), row-major.

    Each crop is shrunk (antialiased bilinear) to its tile of :func:`patch_boxes`.
    """
    per = factor * factor
    if len(patches) % per:
        raise InputError(f"{len(patches)} patches do not fill images of {per} tiles")
    n, c, h, w = patches.shape
    out = patches.new_empty(n // per, c, h, w)
    for t, (top, left, ph, pw) in enumerate(patch_boxes((h, w), factor)):
        tile = patches[t::per]
        if (ph, pw) != (h, w):
            tile = F.interpolate(
                tile,
                size=(ph, pw),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        out[:, :, top : top + ph, left : left + pw] = tile
    return out


@torch.no_grad()
def _score(
    teacher: nn.Module,
    views: torch.Tensor,
    cls: int,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Realism of each view (K,): -CE(teacher(view), cls)."""
    scores = []
    for s in range(0, len(views), batch_size):
        logits = teacher(views[s : s + batch_size].to(device)).float()
        target = torch.full((len(logits),), cls, dtype=torch.int64, device=device)
        scores.append(-F.cross_entropy(logits, target, reduction="none").cpu())
    return torch.cat(scores)


def _select_class(
    teacher: nn.Module,
    pool: torch.Tensor,
    cls: int,
    need: int,
    config: RDEDConfig,
    view: ViewConfig,
    seed: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``need`` most realistic crops (need, C, S, S) of a class and their scores."""
    crop_seed = derive_seed(seed, "rded-crops", cls)
    index = torch.arange(len(pool))
    best_score = torch.full((len(pool),), -torch.inf)
    best_crop = torch.zeros(len(pool), dtype=torch.int64)
    for j in range(config.num_crops):
        params = sample_view_params(pool, index, seed=crop_seed, epoch=j, config=view)
        views = render_views(pool, params, view, device="cpu")
        score = _score(teacher, views, cls, config.batch_size, device)
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_crop = torch.where(better, j, best_crop)
    # stable descending sort: equal scores keep the lower image index first
    order = torch.sort(best_score, descending=True, stable=True).indices[:need]
    crops = []
    for i in order.tolist():
        params = sample_view_params(
            pool, index[i : i + 1], seed=crop_seed, epoch=int(best_crop[i]), config=view
        )
        crops.append(render_views(pool, params, view, device="cpu")[0])
    return torch.stack(crops), best_score[order]


def rded(
    dataset: ImageDataset,
    teacher: nn.Module,
    ipc: int,
    config: RDEDConfig | None = None,
    run: RunOptions | None = None,
) -> DistilledSet:
    """Build ``ipc`` stitched images per class from the teacher-scored real crops.

    Args:
        dataset: real images (N, C, H, W) uint8 with labels.
        teacher: the observer; takes 0..255 images of ``image_size``.
        ipc: images per class; each needs ``factor**2`` real images.
        config: :class:`RDEDConfig`.
        run: seed (every crop derives from it), device (the teacher is moved
            there), progress (``callback(done_classes, num_classes)``) and
            teacher id; default :class:`RunOptions`.

    Raises:
        InputError: a class with fewer than ``ipc * factor**2`` images (names the
            largest IPC possible), images of mixed sizes, or a teacher whose
            class count differs from the dataset's.
    """
    config = config or RDEDConfig()
    run = run or RunOptions()
    seed, progress = run.seed, run.progress
    images = stacked_images(dataset, "rded")
    out_size = (int(images.shape[-2]), int(images.shape[-1]))
    if config.image_size is not None:
        out_size = (config.image_size, config.image_size)
    factor = resolve_factor(config, out_size)
    per = factor**2
    classes = _checked_classes(dataset, config, ipc, factor)
    device = resolve_device(run.device, teacher)
    teacher = teacher.to(device)
    num_classes = teacher_num_classes(teacher, images.shape[1], out_size, device)
    if num_classes != dataset.num_classes:
        raise InputError(
            f"the teacher has {num_classes} classes but {dataset.name} has "
            f"{dataset.num_classes}; use a teacher trained on this dataset"
        )
    view = ViewConfig(output_size=out_size, scale=config.crop_scale, flip_prob=0.0)
    need = ipc * per
    stitched, scores = [], []
    with eval_mode(teacher):
        for done, cls in enumerate(classes):
            pool_idx = torch.nonzero(dataset.labels == cls).reshape(-1)
            generator = torch.Generator().manual_seed(derive_seed(seed, "rded", cls))
            take = min(len(pool_idx), max(config.candidates, need))
            pick = torch.randperm(len(pool_idx), generator=generator)[:take]
            pool = images[pool_idx[pick.sort().values]]
            crops, best = _select_class(
                teacher, pool, cls, need, config, view, seed, device
            )
            stitched.append(stitch(crops, factor))
            scores.append(best)
            if progress is not None:
                progress(done + 1, len(classes))
    pixels = quantize(torch.cat(stitched))
    labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(ipc)
    all_scores = torch.cat(scores)
    resolved = _resolved(config, out_size, classes, seed, factor, all_scores)
    logger.info(
        "rded: %d images, mean patch score %.3f", len(pixels), all_scores.mean()
    )
    return DistilledSet(
        images=pixels,
        labels=labels,
        class_names=dataset.class_names,
        method="rded",
        ipc=ipc,
        source_fingerprint=dataset.fingerprint,
        teacher_id=teacher_identity(teacher, run.teacher_id),
        config=resolved,
    )


def _checked_classes(
    dataset: ImageDataset, config: RDEDConfig, ipc: int, factor: int
) -> list[int]:
    """The classes to distil, each checked to hold ``ipc * factor**2`` images."""
    per = factor**2
    classes = resolve_classes(config.classes, dataset.num_classes)
    counts = torch.bincount(dataset.labels, minlength=dataset.num_classes)[classes]
    names = tuple(dataset.class_names[c] for c in classes)
    check_ipc(ipc, counts, names)
    if ipc * per > int(counts.min()):
        worst = int(counts.argmin())
        have = int(counts[worst])
        raise InputError(
            f"ipc={ipc} with factor={factor} needs {ipc * per} real images "
            f"per class, but class {classes[worst]} ({names[worst]!r}) has only "
            f"{have}; use --ipc {have // per} or less, or a smaller factor"
        )
    return classes


def _resolved(
    config: RDEDConfig,
    out_size: tuple[int, int],
    classes: list[int],
    seed: int,
    factor: int,
    scores: torch.Tensor,
) -> dict[str, Any]:
    """The run's config as stored with the images, with the patch-score diagnostics."""
    resolved = config.model_dump(mode="json")
    resolved.update(
        image_size=list(out_size),
        classes=classes,
        seed=seed,
        factor=factor,
        patch_boxes=[list(b) for b in patch_boxes(out_size, factor)],
        diagnostics={
            "mean_patch_score": round(float(scores.mean()), 6),
            "min_patch_score": round(float(scores.min()), 6),
        },
    )
    return resolved
