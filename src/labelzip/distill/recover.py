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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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
from labelzip.distill.base import DistilledSet, ProgressCallback, RunOptions
from labelzip.distill.bnstats import (
    BNMatcher,
    BNTargets,
    bn_layers,
    class_bn_statistics,
    running_statistics,
)
from labelzip.distill.recover_config import (
    CPU_IMAGE_SIZE,
    CPU_STEPS,
    PAPER_IMAGE_SIZE,
    PAPER_STEPS,
    SRE2L_CROP_SCALE,
    CDAConfig,
    LPLDConfig,
    RecoverConfig,
    resolve_image_defaults,
)
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
    "recover",
    "recover_batch",
]

logger = logging.getLogger(__name__)

# Pixels are parametrised as 255 * (MEAN + STD * z) with z ~ N(0, 1) at the start,
# the scale of ImageNet-normalised inputs SRe2L optimises (so its lr carries over).
_PIXEL_MEAN, _PIXEL_STD = 0.45, 0.225
_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop aspect range


@dataclass
class RecoveryResult:
    """One recovered batch: float pixels (B, C, H, W) in 0..255 and loss history."""

    images: torch.Tensor
    loss: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    bn: list[float] = field(default_factory=list)


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
    crop_hi = (config.crop_scale or SRE2L_CROP_SCALE)[1]
    end = (config.crop_scale or SRE2L_CROP_SCALE)[0]
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
    return min(end + (start - end) * shape, crop_hi)


def recover_batch(
    teacher: nn.Module,
    targets: torch.Tensor,
    image_shape: tuple[int, int, int],
    config: RecoverConfig,
    generator: torch.Generator,
    *,
    steps: int,
    bn_targets: Sequence[tuple[float, BNTargets]] | None = None,
    progress: ProgressCallback | None = None,
) -> RecoveryResult:
    """Optimise one batch of images (B, C, H, W) from noise toward ``targets`` (B,).

    Args:
        teacher: takes 0..255 images, returns (B, num_classes) logits; used in
            eval mode, its parameters are not modified (gradients flow to the
            images only). The images are optimised on its device.
        targets: (B,) int64 class ids.
        image_shape: (C, H, W).
        config: the recovery settings (``steps`` is given separately); unset
            ``crop_scale`` / ``bn_weight`` resolve by the image side
            (:func:`resolve_image_defaults`).
        generator: CPU generator for the initial noise and every view.
        steps: optimisation steps.
        bn_targets: ``(weight, [(mean, var) per BN layer])`` pairs to match;
            default the layers' running statistics with weight 1.
        progress: ``callback(step, steps)`` after every step.

    Returns:
        A :class:`RecoveryResult` with float pixels on the CPU and per-step
        losses (total, CE, weighted BN).
    """
    device = resolve_device(None, teacher)
    layers = bn_layers(teacher)
    c, h, w = image_shape
    jitter = config.jitter if config.jitter is not None else min(h, w) // 7
    config = resolve_image_defaults(config, min(h, w))
    crop_scale, bn_weight = config.crop_scale, config.bn_weight
    assert crop_scale is not None and bn_weight is not None
    noise = torch.randn(len(targets), c, h, w, generator=generator)
    z = noise.to(device).requires_grad_(True)
    z_lo, z_hi = -_PIXEL_MEAN / _PIXEL_STD, (1.0 - _PIXEL_MEAN) / _PIXEL_STD
    optimizer = torch.optim.Adam(
        [z], lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8
    )
    y = targets.to(device)
    result = RecoveryResult(images=torch.empty(0))
    matcher = BNMatcher(layers)
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
            views = _views(pixels, generator, lo, crop_scale[1], jitter, config.flip)
            ce = F.cross_entropy(teacher(views), y)
            bn = bn_weight * matcher.take(config.first_bn_multiplier)
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
    run: RunOptions | None = None,
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
        run: seed, device (the teacher is moved there), progress
            (``callback(done_steps, total_steps)`` over all batches) and teacher
            id; default :class:`RunOptions`.

    Raises:
        InputError: teacher without BN layers, class mismatch with the dataset.
        ConfigError: bad class ids.
    """
    if method not in ("sre2l", "cda", "lpld"):
        raise ConfigError(f"recover method must be sre2l, cda or lpld, got {method!r}")
    if ipc < 1:
        raise InputError(f"ipc must be >= 1, got {ipc}")
    run = run or RunOptions()
    seed, progress = run.seed, run.progress
    device = resolve_device(run.device, teacher)
    teacher = teacher.to(device)
    shape = _image_shape(config, dataset, device, method)
    config = resolve_image_defaults(config, min(shape[1:]))
    num_classes = teacher_num_classes(teacher, shape[0], shape[1:], device)
    names = class_names_for(dataset, teacher, num_classes)
    classes = resolve_classes(config.classes, num_classes)
    steps = config.steps or (PAPER_STEPS if device.type == "cuda" else CPU_STEPS)
    class_stats, bn_source = _lpld_statistics(
        method, config, dataset, teacher, classes, seed, device
    )
    job = _Job(method, shape, steps, seed, device)
    batches = _plan(method, classes, ipc, config.batch_size)
    images, first_loss, last_loss = _run_batches(
        teacher, batches, config, job, class_stats, progress
    )
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
        teacher_id=teacher_identity(teacher, run.teacher_id),
        config=resolved,
    )


@dataclass(frozen=True)
class _Job:
    """What every batch of one recovery run shares."""

    method: str
    shape: tuple[int, int, int]
    steps: int
    seed: int
    device: torch.device


def _run_batches(
    teacher: nn.Module,
    batches: Sequence[Sequence[tuple[int, int]]],
    config: RecoverConfig,
    job: _Job,
    class_stats: dict[int, BNTargets] | None,
    progress: ProgressCallback | None,
) -> tuple[dict[tuple[int, int], torch.Tensor], list[float], list[float]]:
    """Recover every batch; images keyed by (class, IPC index), first/last losses."""
    total = len(batches) * job.steps
    running = running_statistics(bn_layers(teacher))
    images: dict[tuple[int, int], torch.Tensor] = {}
    first_loss, last_loss = [], []
    for b, pairs in enumerate(batches):
        generator = torch.Generator().manual_seed(derive_seed(job.seed, job.method, b))
        targets = torch.tensor([cls for _, cls in pairs], dtype=torch.int64)
        bn_targets = None
        if class_stats is not None:  # lpld: the batch's class statistics
            assert isinstance(config, LPLDConfig)
            bn_targets = [(1.0, class_stats[pairs[0][1]])]
            if config.global_bn_weight > 0:
                bn_targets.append((config.global_bn_weight, running))

        def step_progress(step: int, _: int, done: int = b * job.steps) -> None:
            if progress is not None:
                progress(done + step, total)

        result = recover_batch(
            teacher, targets, job.shape, config, generator, steps=job.steps,
            bn_targets=bn_targets, progress=step_progress,
        )  # fmt: skip
        first_loss.append(result.loss[0])
        last_loss.append(result.loss[-1])
        logger.info(
            "%s batch %d/%d: loss %.3f -> %.3f (ce %.3f, bn %.3f)",
            job.method, b + 1, len(batches), result.loss[0], result.loss[-1],
            result.ce[-1], result.bn[-1],
        )  # fmt: skip
        for (k, cls), image in zip(pairs, result.images, strict=True):
            images[(cls, k)] = image
    return images, first_loss, last_loss


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
