"""Data-free recovery of images from a teacher: SRe2L, CDA and LPLD.

All three optimise images from Gaussian noise so that the teacher (in eval
mode, frozen) classifies an augmented view of each image as its target class
*and* the statistics of every BatchNorm layer's input over the batch match the
statistics the layer stored (its running mean and variance):

    loss = CE(teacher(view(x)), y) + bn_weight * sum_l w_l * (||mu_l(x) - mu_l||_2
                                                             + ||var_l(x) - var_l||_2)

with ``w_0 = first_bn_multiplier`` and ``w_l = 1`` otherwise, Adam and a cosine
learning rate. ``view`` is a random shift (``jitter`` pixels, shared by the
batch), a per-image RandomResizedCrop and a per-image horizontal flip.

- ``sre2l`` (Yin et al., NeurIPS'23): a fixed crop-scale range, batches that
  mix classes (one image per class per batch, ImageNet-style).
- ``cda`` (Yin & Shen, TMLR'24, "Dataset Distillation via Curriculum Data
  Synthesis"): the crop scale's lower bound is annealed from ``curriculum_start``
  (large, global crops) down to ``crop_scale[0]`` (small, local crops), so the
  first updates shape the global layout and later ones refine details.
- ``lpld`` (Xiao & He, NeurIPS'24): each batch holds one class, and the BN
  targets are that class's statistics measured on real images (the paper's
  "class-wise supervision"), which makes the images of a class more diverse;
  see docs/distill.md for what is approximated.

Settings default to SRe2L's ImageNet recipe for GPU users; on a CPU the number
of steps defaults to :data:`CPU_STEPS` (see :class:`RecoverConfig`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from labelzip.data.base import ImageDataset
from labelzip.distill._common import (
    class_names_for,
    derive_seed,
    eval_mode,
    quantize,
    resolve_classes,
    resolve_device,
    stacked_images,
    teacher_identity,
    teacher_num_classes,
)
from labelzip.distill.base import DistilledSet, ProgressCallback
from labelzip.errors import ConfigError, InputError

__all__ = [
    "CPU_IMAGE_SIZE",
    "CPU_STEPS",
    "PAPER_IMAGE_SIZE",
    "PAPER_STEPS",
    "CDAConfig",
    "LPLDConfig",
    "RecoverConfig",
    "RecoveryResult",
    "class_bn_statistics",
    "recover",
    "recover_batch",
    "running_statistics",
]

logger = logging.getLogger(__name__)

PAPER_STEPS = 1000  # SRe2L's ImageNet-1K recovery budget (CDA and LPLD also report 4K)
CPU_STEPS = 200  # default on CPU: measured in docs/distill.md
PAPER_IMAGE_SIZE = 224  # data-free default on GPU
CPU_IMAGE_SIZE = 64  # data-free default on CPU (EfficientNet-Lite0 runs ~10x faster)
# Pixels are parametrised as 255 * (MEAN + STD * z) with z ~ N(0, 1) at the start,
# the scale of ImageNet-normalised inputs SRe2L optimises (so its lr carries over).
_PIXEL_MEAN, _PIXEL_STD = 0.45, 0.225
_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop aspect range


class RecoverConfig(BaseModel):
    """SRe2L recovery settings (defaults: SRe2L's ImageNet-1K recipe)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=f"optimisation steps per batch; default {PAPER_STEPS} on GPU, "
        f"{CPU_STEPS} on CPU",
    )
    batch_size: int = Field(
        default=100, ge=1, le=10_000, description="images optimised together"
    )
    lr: float = Field(default=0.25, gt=0, le=10.0, description="Adam peak lr (cosine)")
    beta1: float = Field(default=0.5, ge=0, lt=1, description="Adam beta1")
    beta2: float = Field(default=0.9, ge=0, lt=1, description="Adam beta2")
    bn_weight: float = Field(
        default=0.01,
        ge=0,
        le=1e4,
        description="weight of the BN-statistics loss (r_bn)",
    )
    first_bn_multiplier: float = Field(
        default=10.0, ge=0, le=1e4, description="extra weight of the first BN layer"
    )
    jitter: int | None = Field(
        default=None,
        ge=0,
        description="max random shift in pixels; default image size // 7 (32 at 224)",
    )
    flip: bool = Field(default=True, description="random horizontal flips per step")
    crop_scale: tuple[float, float] = Field(
        default=(0.08, 1.0),
        description="RandomResizedCrop area range per step; (1, 1) disables cropping",
    )
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="side of the recovered images; default the dataset's, else "
        f"{PAPER_IMAGE_SIZE} on GPU / {CPU_IMAGE_SIZE} on CPU",
    )
    channels: int | None = Field(
        default=None, description="1 or 3; default the dataset's, else 3"
    )
    classes: list[int] | None = Field(
        default=None, description="class ids to recover (default: all classes)"
    )

    @model_validator(mode="after")
    def _check(self) -> RecoverConfig:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}"
            )
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        return self


class CDAConfig(RecoverConfig):
    """CDA: the crop scale's lower bound follows a curriculum (global -> local)."""

    curriculum_start: float = Field(
        default=1.0, gt=0, le=1.0, description="crop scale lower bound at step 0"
    )
    curriculum_milestone: float = Field(
        default=1.0,
        gt=0,
        le=1.0,
        description="fraction of the steps after which the bound reaches crop_scale[0]",
    )
    curriculum: Literal["cosine", "linear"] = Field(
        default="cosine", description="shape of the annealing"
    )


class LPLDConfig(RecoverConfig):
    """LPLD: one class per batch, BN targets measured on that class's real images."""

    class_stats_images: int = Field(
        default=256,
        ge=2,
        le=100_000,
        description="real images per class used to measure class-wise BN statistics",
    )
    global_bn_weight: float = Field(
        default=0.0,
        ge=0,
        le=1e4,
        description="extra weight on matching the global running statistics too",
    )


@dataclass
class RecoveryResult:
    """One recovered batch: float pixels (B, C, H, W) in 0..255 and loss history."""

    images: torch.Tensor
    loss: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    bn: list[float] = field(default_factory=list)


BNTargets = list[tuple[torch.Tensor, torch.Tensor]]


def _bn_layers(teacher: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    layers = [
        m
        for m in teacher.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.running_mean is not None
        and m.running_var is not None
    ]
    if not layers:
        raise InputError(
            f"{type(teacher).__name__} has no BatchNorm layers with running statistics; "
            "data-free recovery (sre2l/cda/lpld) needs them: use method rded or random"
        )
    return layers


def _batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a BN input (B, C, ...)."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, unbiased=False)


class _BNMatcher:
    """Forward hooks that record each BN layer's statistic-matching loss."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers = list(layers)
        self.targets: list[BNTargets] = []  # each: one (mean, var) per layer
        self.weights: list[float] = []
        self.losses: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _BNMatcher:
        for idx, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._hook(idx)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, idx: int) -> Callable[..., None]:
        def record(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object
        ) -> None:
            mean, var = _batch_moments(inputs[0].float())
            term = mean.new_zeros(())
            for weight, targets in zip(self.weights, self.targets, strict=True):
                t_mean, t_var = targets[idx]
                term = term + weight * (
                    torch.linalg.vector_norm(mean - t_mean)
                    + torch.linalg.vector_norm(var - t_var)
                )
            self.losses.append(term)

        return record

    def take(self, first_multiplier: float) -> torch.Tensor:
        """Weighted sum of the losses recorded by the last forward; resets them."""
        losses, self.losses = self.losses, []
        total = losses[0] * first_multiplier
        for term in losses[1:]:
            total = total + term
        return total


def running_statistics(layers: Sequence[nn.modules.batchnorm._BatchNorm]) -> BNTargets:
    """The layers' stored (running_mean, running_var), as float32."""
    out: BNTargets = []
    for layer in layers:
        assert layer.running_mean is not None and layer.running_var is not None
        out.append(
            (layer.running_mean.detach().float(), layer.running_var.detach().float())
        )
    return out


def _views(
    pixels: torch.Tensor,
    generator: torch.Generator,
    crop_lo: float,
    crop_hi: float,
    jitter: int,
    flip: bool,
) -> torch.Tensor:
    """A differentiable random view per image: shift, crop-resize, flip (B, C, H, W)."""
    b = pixels.shape[0]
    if jitter > 0:
        dy, dx = (
            int(v)
            for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator)
        )
        pixels = torch.roll(pixels, shifts=(dy, dx), dims=(2, 3))
    area = crop_lo + (crop_hi - crop_lo) * torch.rand(
        b, generator=generator, dtype=torch.float64
    )
    log_r = torch.empty(b, dtype=torch.float64).uniform_(
        math.log(_RATIO[0]), math.log(_RATIO[1]), generator=generator
    )
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1.0 - w) * (
        2.0 * torch.rand(b, generator=generator, dtype=torch.float64) - 1.0
    )
    cy = (1.0 - h) * (
        2.0 * torch.rand(b, generator=generator, dtype=torch.float64) - 1.0
    )
    sign = torch.ones(b, dtype=torch.float64)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(device=pixels.device, dtype=pixels.dtype)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(
        pixels, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def _crop_lower_bound(config: RecoverConfig, step: int, steps: int) -> float:
    end = config.crop_scale[0]
    if not isinstance(config, CDAConfig):
        return end
    span = max(1.0, config.curriculum_milestone * steps)
    t = min(step / span, 1.0)
    shape = (
        0.5 * (1.0 + math.cos(math.pi * t))
        if config.curriculum == "cosine"
        else 1.0 - t
    )
    start = max(config.curriculum_start, end)
    return min(end + (start - end) * shape, config.crop_scale[1])


def recover_batch(
    teacher: nn.Module,
    targets: torch.Tensor,
    image_shape: tuple[int, int, int],
    config: RecoverConfig,
    generator: torch.Generator,
    *,
    steps: int,
    bn_targets: Sequence[tuple[float, BNTargets]] | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> RecoveryResult:
    """Optimise one batch of images (B, C, H, W) from noise toward ``targets`` (B,).

    Args:
        teacher: takes 0..255 images, returns (B, num_classes) logits; used in
            eval mode, its parameters are not modified (gradients flow to the
            images only).
        targets: (B,) int64 class ids.
        image_shape: (C, H, W).
        config: the recovery settings (``steps`` is given separately).
        generator: CPU generator for the initial noise and every view.
        steps: optimisation steps.
        bn_targets: ``(weight, [(mean, var) per BN layer])`` pairs to match;
            default the layers' running statistics with weight 1.
        device: where to optimise.
        progress: ``callback(step, steps)`` after every step.

    Returns:
        A :class:`RecoveryResult` with float pixels on the CPU and per-step
        losses (total, CE, weighted BN).
    """
    device = torch.device(device)
    layers = _bn_layers(teacher)
    c, h, w = image_shape
    jitter = config.jitter if config.jitter is not None else min(h, w) // 7
    noise = torch.randn(len(targets), c, h, w, generator=generator)
    z = noise.to(device).requires_grad_(True)
    z_lo, z_hi = -_PIXEL_MEAN / _PIXEL_STD, (1.0 - _PIXEL_MEAN) / _PIXEL_STD
    optimizer = torch.optim.Adam(
        [z], lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8
    )
    y = targets.to(device)
    result = RecoveryResult(images=torch.empty(0))
    matcher = _BNMatcher(layers)
    if bn_targets is None:
        bn_targets = [(1.0, running_statistics(layers))]
    matcher.weights = [float(weight) for weight, _ in bn_targets]
    matcher.targets = [
        [(m.to(device), v.to(device)) for m, v in t] for _, t in bn_targets
    ]
    with eval_mode(teacher), matcher:
        for step in range(steps):
            for group in optimizer.param_groups:  # cosine schedule, no warm-up
                group["lr"] = 0.5 * config.lr * (1.0 + math.cos(math.pi * step / steps))
            pixels = 255.0 * (_PIXEL_MEAN + _PIXEL_STD * z)
            lo = _crop_lower_bound(config, step, steps)
            views = _views(
                pixels, generator, lo, config.crop_scale[1], jitter, config.flip
            )
            ce = F.cross_entropy(teacher(views), y)
            bn = config.bn_weight * matcher.take(config.first_bn_multiplier)
            loss = ce + bn
            (grad,) = torch.autograd.grad(loss, [z])
            z.grad = grad
            optimizer.step()
            with torch.no_grad():
                z.clamp_(z_lo, z_hi)  # keep pixels in 0..255
            result.loss.append(float(loss.detach()))
            result.ce.append(float(ce.detach()))
            result.bn.append(float(bn.detach()))
            if progress is not None:
                progress(step + 1, steps)
    result.images = (
        (255.0 * (_PIXEL_MEAN + _PIXEL_STD * z.detach())).clamp(0, 255).cpu()
    )
    return result


@torch.no_grad()
def class_bn_statistics(
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    *,
    images_per_class: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> dict[int, BNTargets]:
    """Per-class mean and variance of every BN layer's input, on real images.

    Args:
        teacher: the frozen teacher (run in eval mode).
        images: (N, C, H, W) uint8 real images; labels: (N,) class ids.
        classes: the classes to measure.
        images_per_class: at most this many images of each class (drawn with
            ``generator``); all of a smaller class.

    Returns:
        ``{class: [(mean (C_l,), var (C_l,)) per BN layer]}`` as float32.
    """
    layers = _bn_layers(teacher)
    sums: list[list[torch.Tensor]] = []
    device = torch.device(device)

    def collect(idx: int) -> Callable[..., None]:
        def record(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object
        ) -> None:
            x = inputs[0].double()
            dims = [0, *range(2, x.dim())]
            count = x.numel() / x.shape[1]
            part = [x.sum(dims), (x * x).sum(dims), x.new_tensor(count)]
            if len(sums) <= idx:
                sums.append(part)
            else:
                sums[idx] = [a + b for a, b in zip(sums[idx], part, strict=True)]

        return record

    out: dict[int, BNTargets] = {}
    with eval_mode(teacher):
        handles = [
            layer.register_forward_hook(collect(i)) for i, layer in enumerate(layers)
        ]
        try:
            for cls in classes:
                pool = torch.nonzero(labels == cls).reshape(-1)
                if len(pool) < 2:
                    raise InputError(
                        f"class {cls} has {len(pool)} real images; class-wise BN "
                        "statistics need at least 2"
                    )
                order = torch.randperm(len(pool), generator=generator)
                chosen = pool[order[:images_per_class]].sort().values
                sums.clear()
                for start in range(0, len(chosen), batch_size):
                    teacher(images[chosen[start : start + batch_size]].to(device))
                stats: BNTargets = []
                for total, square, count in sums:
                    mean = total / count
                    var = (square / count - mean * mean).clamp_min(0.0)
                    stats.append((mean.float(), var.float()))
                out[cls] = stats
        finally:
            for handle in handles:
                handle.remove()
    return out


def _plan(
    method: str, classes: Sequence[int], ipc: int, batch_size: int
) -> list[list[tuple[int, int]]]:
    """Batches of (ipc index, class) pairs.

    sre2l/cda: for each IPC index, the classes cut into batches of ``batch_size``
    (one image per class per batch, as SRe2L); lpld: for each class, its IPC
    images cut into batches (one class per batch).
    """
    if method == "lpld":
        batches = []
        for cls in classes:
            pairs = [(k, cls) for k in range(ipc)]
            batches += [
                pairs[s : s + batch_size] for s in range(0, len(pairs), batch_size)
            ]
        return batches
    # SRe2L: one image per class per batch; a batch never mixes IPC indices
    return [
        [(k, cls) for cls in classes[s : s + batch_size]]
        for k in range(ipc)
        for s in range(0, len(classes), batch_size)
    ]


def _image_shape(
    config: RecoverConfig,
    dataset: ImageDataset | None,
    device: torch.device,
    method: str,
) -> tuple[int, int, int]:
    if dataset is not None and (config.image_size is None or config.channels is None):
        data = stacked_images(dataset, method)
        c, h, w = (int(v) for v in data.shape[1:])
    else:
        size = PAPER_IMAGE_SIZE if device.type == "cuda" else CPU_IMAGE_SIZE
        c, h, w = 3, size, size
    if config.image_size is not None:
        h = w = config.image_size
    if config.channels is not None:
        c = config.channels
    return c, h, w


def recover(
    method: str,
    dataset: ImageDataset | None,
    teacher: nn.Module,
    ipc: int,
    config: RecoverConfig,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
    teacher_id: str | None = None,
) -> DistilledSet:
    """Recover ``ipc`` images per class from ``teacher`` (sre2l, cda or lpld).

    Args:
        method: ``"sre2l"``, ``"cda"`` or ``"lpld"`` (with the matching config).
        dataset: the teacher's dataset: gives class names, the image shape and
            (lpld) the real images for class-wise statistics; ``None`` for a
            purely data-free run (ImageNet teacher).
        teacher: a frozen classifier with BatchNorm layers taking 0..255 images.
        ipc: images per class.
        config: :class:`RecoverConfig`, :class:`CDAConfig` or :class:`LPLDConfig`.
        seed: every random number derives from it.
        device: where to run (the teacher is moved there).
        progress: ``callback(done_steps, total_steps)`` over all batches.

    Raises:
        InputError: teacher without BN layers, class mismatch with the dataset.
        ConfigError: bad class ids.
    """
    if method not in ("sre2l", "cda", "lpld"):
        raise ConfigError(f"recover method must be sre2l, cda or lpld, got {method!r}")
    if ipc < 1:
        raise InputError(f"ipc must be >= 1, got {ipc}")
    device = resolve_device(device, teacher)
    teacher = teacher.to(device)
    shape = _image_shape(config, dataset, device, method)
    num_classes = teacher_num_classes(teacher, shape[0], shape[1:], device)
    names = class_names_for(dataset, teacher, num_classes)
    classes = resolve_classes(config.classes, num_classes)
    steps = config.steps or (PAPER_STEPS if device.type == "cuda" else CPU_STEPS)
    class_stats, bn_source = _lpld_statistics(
        method, config, dataset, teacher, classes, seed, device
    )
    batches = _plan(method, classes, ipc, config.batch_size)
    total = len(batches) * steps
    layers = _bn_layers(teacher)
    images: dict[tuple[int, int], torch.Tensor] = {}
    first_loss, last_loss = [], []
    for b, pairs in enumerate(batches):
        generator = torch.Generator().manual_seed(derive_seed(seed, method, b))
        targets = torch.tensor([cls for _, cls in pairs], dtype=torch.int64)
        bn_targets = None
        if class_stats is not None:
            assert isinstance(config, LPLDConfig)
            bn_targets = [(1.0, class_stats[pairs[0][1]])]
            if config.global_bn_weight > 0:
                bn_targets.append((config.global_bn_weight, running_statistics(layers)))
        done = b * steps

        def step_progress(step: int, _: int, done: int = done) -> None:
            if progress is not None:
                progress(done + step, total)

        result = recover_batch(
            teacher, targets, shape, config, generator,
            steps=steps, bn_targets=bn_targets, device=device, progress=step_progress,
        )  # fmt: skip
        first_loss.append(result.loss[0])
        last_loss.append(result.loss[-1])
        logger.info(
            "%s batch %d/%d: loss %.3f -> %.3f (ce %.3f, bn %.3f)",
            method, b + 1, len(batches), result.loss[0], result.loss[-1],
            result.ce[-1], result.bn[-1],
        )  # fmt: skip
        for (k, cls), image in zip(pairs, result.images, strict=True):
            images[(cls, k)] = image
    order = sorted(images)  # class-major, then ipc index
    pixels = quantize(torch.stack([images[key] for key in order]))
    labels = torch.tensor([cls for cls, _ in order], dtype=torch.int64)
    resolved = config.model_dump(mode="json")
    resolved.update(
        steps=steps,
        image_size=shape[1],
        channels=shape[0],
        classes=classes,
        jitter=config.jitter if config.jitter is not None else min(shape[1:]) // 7,
        bn_statistics=bn_source,
        seed=seed,
        diagnostics=_diagnostics(
            teacher, pixels, labels, device, first_loss, last_loss
        ),
    )
    return DistilledSet(
        images=pixels,
        labels=labels,
        class_names=names,
        method=method,
        ipc=ipc,
        source_fingerprint=dataset.fingerprint if dataset is not None else None,
        teacher_id=teacher_identity(teacher, teacher_id),
        config=resolved,
    )


def _lpld_statistics(
    method: str,
    config: RecoverConfig,
    dataset: ImageDataset | None,
    teacher: nn.Module,
    classes: Sequence[int],
    seed: int,
    device: torch.device,
) -> tuple[dict[int, BNTargets] | None, str]:
    """Class-wise BN targets for lpld (from real data), else the running statistics."""
    if method != "lpld":
        return None, "running"
    assert isinstance(config, LPLDConfig)
    if dataset is None:
        logger.warning(
            "lpld without real images: class-wise BN statistics cannot be measured, "
            "matching the global running statistics with one class per batch"
        )
        return None, "running"
    real = stacked_images(dataset, method)
    counts = torch.bincount(dataset.labels, minlength=dataset.num_classes)
    missing = [c for c in classes if int(counts[c]) < 2]
    if missing:
        raise InputError(
            f"lpld needs real images of every class for class-wise BN statistics; "
            f"{dataset.name} has fewer than 2 images of classes {missing[:10]}"
        )
    generator = torch.Generator().manual_seed(derive_seed(seed, "lpld-class-stats"))
    stats = class_bn_statistics(
        teacher, real, dataset.labels, classes,
        images_per_class=config.class_stats_images, generator=generator, device=device,
    )  # fmt: skip
    return stats, "class-wise"


@torch.no_grad()
def _diagnostics(
    teacher: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    first_loss: list[float],
    last_loss: list[float],
) -> dict[str, float]:
    """Teacher accuracy/confidence on the final uint8 images, and loss summary."""
    with eval_mode(teacher):
        logits = torch.cat(
            [
                teacher(pixels[s : s + 256].to(device)).float().cpu()
                for s in range(0, len(pixels), 256)
            ]
        )
    probs = logits.softmax(-1)
    target_prob = probs.gather(1, labels[:, None]).mean()
    return {
        "teacher_accuracy": round(
            float((logits.argmax(-1) == labels).float().mean()), 6
        ),
        "teacher_target_prob": round(float(target_prob), 6),
        "first_loss": round(sum(first_loss) / len(first_loss), 6),
        "final_loss": round(sum(last_loss) / len(last_loss), 6),
    }
