"""Train a student from a relabel archive: replayed views, decoded labels, KD loss.

Student epoch e replays archive epoch ``e mod E`` (SRe2L trains as many
epochs as it relabelled). The loss is knowledge distillation at temperature
T, ``T^2 * KL(softmax(t / T) || softmax(s / T))`` with t the decoded label,
optionally mixed with cross-entropy on the images' classes (weighted by the
CutMix/Mixup lambda). Optimiser AdamW or SGD (momentum), cosine schedule with
linear warm-up, stepped per batch. Accuracy is measured on a real test set.

Data parallel: inside ``torchrun`` (``torch.distributed`` initialised), each
rank takes a disjoint shard of every epoch's image order, gradients are
all-reduced by :class:`~torch.nn.parallel.DistributedDataParallel`, and the
test set is split across ranks. Gloo on CPU, NCCL on CUDA.

The share of training time spent decoding labels is measured and reported
(the target is under 2% of the step).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from labelzip.errors import ConfigError, InputError
from labelzip.pipelines.imageset import ImageSet, check_image_tensor
from labelzip.pipelines.replay import ReplayBatch, ReplayDataset
from labelzip.pipelines.students import STUDENT_ARCHS, build_student

__all__ = [
    "EpochLog",
    "StudentConfig",
    "StudentResult",
    "evaluate_student",
    "kd_loss",
    "train_student",
]

logger = logging.getLogger(__name__)


class StudentConfig(BaseModel):
    """How the student is built and trained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["convnet", "resnet", "resnet18"] = Field(
        default="convnet", description=f"student architecture, one of {STUDENT_ARCHS}"
    )
    width: int = Field(default=32, ge=1, le=4096, description="convnet channels")
    depth: int = Field(default=3, ge=1, le=8, description="convnet blocks")
    epochs: int | None = Field(
        default=None, ge=1, le=100_000, description="default: the archive's epochs"
    )
    batch_size: int = Field(default=64, ge=1, le=65536, description="views per step")
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="optimiser")
    lr: float = Field(default=2e-3, gt=0, le=10.0, description="peak learning rate")
    weight_decay: float = Field(default=0.01, ge=0, le=1.0, description="decay")
    momentum: float = Field(default=0.9, ge=0, lt=1.0, description="SGD momentum")
    schedule: Literal["cosine", "constant"] = Field(
        default="cosine", description="learning-rate schedule after warm-up"
    )
    warmup_epochs: int = Field(default=0, ge=0, le=10_000, description="linear warm-up")
    temperature: float = Field(
        default=4.0, gt=0, le=100.0, description="KD temperature T (loss x T^2)"
    )
    ce_weight: float = Field(
        default=0.0, ge=0, le=1.0, description="weight of CE on image classes"
    )
    input_mean: tuple[float, ...] | None = Field(
        default=None,
        description="per-channel input mean in 0..255 (default: the distilled images')",
    )
    input_std: tuple[float, ...] | None = Field(
        default=None,
        description="per-channel input std in 0..255 (default: the distilled images')",
    )
    seed: int = Field(default=0, ge=0, description="init and batch-order seed")
    eval_every: int = Field(
        default=0, ge=0, description="test every N epochs (0: only after the last)"
    )
    eval_batch_size: int = Field(default=1000, ge=1, description="test batch size")


@dataclass(frozen=True)
class EpochLog:
    """One epoch of training (this process's view; loss averaged over ranks)."""

    epoch: int
    loss: float
    lr: float
    steps: int
    seconds: float  # training time of the epoch: rendering, decoding, steps
    decode_seconds: float
    render_seconds: float
    test_accuracy: float | None = None

    @property
    def decode_share(self) -> float:
        return self.decode_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StudentResult:
    """The trained student and how training went."""

    model: nn.Module
    history: list[EpochLog] = field(default_factory=list)
    accuracy: float | None = None  # final test accuracy

    @property
    def train_seconds(self) -> float:
        return sum(e.seconds for e in self.history)

    @property
    def decode_share(self) -> float:
        """Decoding time over training time, all epochs."""
        total = self.train_seconds
        return sum(e.decode_seconds for e in self.history) / total if total else 0.0


def kd_loss(
    student_logits: torch.Tensor, label_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * mean KL(softmax(t/T) || softmax(s/T))``; ``t`` may hold -inf.

    Args:
        student_logits: (B, C).
        label_logits: (B, C) decoded labels (logits or log-probabilities).
    """
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=1)
    log_p = F.log_softmax(label_logits.float() / t, dim=1)
    p = log_p.exp()
    log_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))
    kl = (p * (log_p - log_q)).sum(dim=1)
    return kl.mean() * (t * t)


def _mixed_ce(
    logits: torch.Tensor, labels: torch.Tensor, batch: ReplayBatch
) -> torch.Tensor:
    """CE on the image's class and its mix partner's, weighted by lambda."""
    device = logits.device
    own = labels[batch.index].to(device)
    other = labels[batch.partner.clamp_min(0)].to(device)
    other = torch.where(batch.partner.to(device) >= 0, other, own)
    lam = batch.lam.to(device, torch.float32)
    ce_own = F.cross_entropy(logits, own, reduction="none")
    ce_other = F.cross_entropy(logits, other, reduction="none")
    return (lam * ce_own + (1 - lam) * ce_other).mean()


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _schedule(
    config: StudentConfig, total_steps: int, warmup_steps: int
) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def _optimizer(model: nn.Module, config: StudentConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.momentum > 0,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )


@torch.inference_mode()
def evaluate_student(
    model: nn.Module,
    test_set: ImageSet,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1000,
) -> float:
    """Top-1 accuracy on ``test_set`` (split across ranks under torch.distributed)."""
    rank, world = _dist()
    images = check_image_tensor(test_set.images, "test images")
    labels = test_set.labels
    device = torch.device(device if device is not None else "cpu")
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    index = torch.arange(rank, len(images), world)
    for start in range(0, len(index), batch_size):
        sel = index[start : start + batch_size]
        pred = model(images[sel].to(device, torch.float32)).argmax(dim=1)
        correct[0] += (pred.cpu() == labels[sel]).sum().item()
        correct[1] += len(sel)
    if world > 1:
        dist.all_reduce(correct)
    model.train(was_training)
    return float(correct[0] / correct[1].clamp_min(1))


def _check_test_set(test_set: ImageSet | None, replay: ReplayDataset) -> None:
    if test_set is None:
        return
    images = check_image_tensor(test_set.images, "test images")
    want = (replay.images.shape[1], *replay.view.output_size)
    if tuple(images.shape[1:]) != want:
        raise InputError(
            f"test images have shape {tuple(images.shape[1:])} but the student is "
            f"trained on {want} views; resize the test set to the view size"
        )
    if len(test_set.class_names) != replay.num_classes:
        raise InputError(
            f"the test set has {len(test_set.class_names)} classes, the archive "
            f"{replay.num_classes}"
        )


def train_student(
    replay: ReplayDataset,
    config: StudentConfig | None = None,
    *,
    test_set: ImageSet | None = None,
    model: nn.Module | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> StudentResult:
    """Train a student on ``replay``'s views and decoded labels.

    Args:
        replay: the distilled set + archive (its device is the training device).
        config: architecture, optimiser, schedule, temperature, seed.
        test_set: real test images (N, ch, h, w) and labels for accuracy.
        model: a student to train instead of building ``config.arch``.
        on_epoch: called with each epoch's :class:`EpochLog`.

    Returns:
        :class:`StudentResult` (the model unwrapped from DDP, on the device).

    Raises:
        CodecMismatchError: the model's class count differs from the archive's.
        InputError: a test set whose images do not match the views.

    Example:
        >>> replay = ReplayDataset(distilled, "labels.lz")
        >>> result = train_student(replay, StudentConfig(), test_set=fmnist_test)
        >>> result.accuracy, result.decode_share
    """
    config = config or StudentConfig()
    device = replay.device
    _check_test_set(test_set, replay)
    model = model if model is not None else _build(replay, config)
    model.to(device)
    _check_classes(model, replay)
    rank, world = _dist()
    net: nn.Module = model
    if world > 1:
        ids = (
            [device.index]
            if device.type == "cuda" and device.index is not None
            else None
        )
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    epochs = config.epochs or replay.num_epochs
    steps = math.ceil(math.ceil(replay.num_images / world) / config.batch_size)
    optimizer = _optimizer(net, config)
    warmup = config.warmup_epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(config, epochs * steps, warmup)
    )
    result = StudentResult(model)
    for epoch in range(epochs):
        log = _train_epoch(
            net, replay, optimizer, scheduler, config, epoch, rank, world
        )
        due = config.eval_every and (epoch + 1) % config.eval_every == 0
        if test_set is not None and (due or epoch == epochs - 1):
            acc = evaluate_student(
                model, test_set, device=device, batch_size=config.eval_batch_size
            )
            log = EpochLog(**{**log.__dict__, "test_accuracy": acc})
            result.accuracy = acc
        result.history.append(log)
        if on_epoch is not None:
            on_epoch(log)
        logger.info(
            "student epoch %d: loss %.4f, %.1f s (decode %.2f%%), test %s",
            epoch + 1, log.loss, log.seconds, 100 * log.decode_share, log.test_accuracy,
        )  # fmt: skip
    model.eval()
    return result


def _build(replay: ReplayDataset, config: StudentConfig) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_student(
            config.arch,
            replay.num_classes,
            replay.images.cpu(),
            replay.view.output_size,
            width=config.width,
            depth=config.depth,
            mean=config.input_mean,
            std=config.input_std,
        )


def _check_classes(model: nn.Module, replay: ReplayDataset) -> None:
    probe = replay.images[:1].float()
    h, w = replay.view.output_size
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            out = model(torch.zeros((1, probe.shape[1], h, w), device=replay.device))
        except RuntimeError as exc:
            raise InputError(
                f"the student cannot run on views of shape {(probe.shape[1], h, w)}: "
                f"{exc}"
            ) from exc
        model.train(was)
    if out.dim() != 2:
        raise ConfigError(
            f"the student must output (B, C) logits, got {tuple(out.shape)}"
        )
    replay.check_num_classes(int(out.shape[1]), "the student")


def _train_epoch(
    net: nn.Module,
    replay: ReplayDataset,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    config: StudentConfig,
    epoch: int,
    rank: int,
    world: int,
) -> EpochLog:
    net.train()
    decode0, render0 = replay.decode_seconds, replay.render_seconds
    start = time.perf_counter()
    totals = torch.zeros(2, dtype=torch.float64, device=replay.device)
    steps = 0
    lr = float(optimizer.param_groups[0]["lr"])
    batches = replay.batches(
        epoch % replay.num_epochs,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        rank=rank,
        world_size=world,
    )
    for batch in batches:
        logits = net(batch.views)
        loss = kd_loss(logits, batch.logits, config.temperature)
        if config.ce_weight > 0:
            ce = _mixed_ce(logits, replay.labels, batch)
            loss = (1 - config.ce_weight) * loss + config.ce_weight * ce
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        totals[0] += float(loss.detach()) * len(batch)
        totals[1] += len(batch)
        steps += 1
    if replay.device.type == "cuda":
        torch.cuda.synchronize(replay.device)
    seconds = time.perf_counter() - start
    if world > 1:
        dist.all_reduce(totals)
    return EpochLog(
        epoch=epoch,
        loss=float(totals[0] / totals[1].clamp_min(1)),
        lr=lr,
        steps=steps,
        seconds=seconds,
        decode_seconds=replay.decode_seconds - decode0,
        render_seconds=replay.render_seconds - render0,
    )
