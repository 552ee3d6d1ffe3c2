"""Train a small LLaMA student from compressed LM labels, and its two references.

Three modes, trained identically (same student initialisation, same windows in
the same order, same optimiser and schedule); only the target differs:

- ``labels``: forward KL to the distributions decoded from a label archive
  (``labelzip relabel-lm``), optionally mixed with next-token CE on the text;
- ``online``: the same loss with the teacher running live on each batch (the
  uncompressed reference: what the archive's labels approximate);
- ``ce``: next-token cross-entropy only (no teacher).

The KD loss on a (B, T) batch is ``T_kd^2 * mean over the B*T positions of
KL(softmax(z_t / T_kd) || softmax(z_s / T_kd))``; a decoded label that puts no
mass on a token (``-inf``, e.g. top-K renormalised) contributes nothing there.
With ``ce_weight = w`` the loss is ``(1 - w) * KD + w * CE`` (CE over the T - 1
positions whose next token is inside the window).

Distributed data parallel: when ``torch.distributed`` is initialised (e.g. the
CLI under ``torchrun``; gloo on CPU, nccl on CUDA) every rank takes an equal,
disjoint slice of each global batch and DDP averages the gradients, so R ranks
train the same model as one process with the whole batch.

Memory: a step holds the student's (B, T, V) logits, the target's and about
three more (B, T, V) float32 temporaries for the loss and its gradient:
B x T = 2048 positions at V = 49,152 is ~0.4 GB each.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.archive import ArchiveReader
from labelzip.errors import ConfigError, InputError
from labelzip.lm.evaluate import distribution_kl, next_token_nll

__all__ = [
    "MODES",
    "ArchiveLabels",
    "LabelSource",
    "Mode",
    "TeacherLabels",
    "TrainLMConfig",
    "TrainLMResult",
    "batch_order",
    "distributed_info",
    "init_distributed",
    "kd_loss",
    "learning_rate_at",
    "train_student",
]

logger = logging.getLogger(__name__)

Mode = Literal["labels", "ce", "online"]
MODES: tuple[str, ...] = ("labels", "online", "ce")


class TrainLMConfig(BaseModel):
    """Optimisation settings shared by every mode of a comparison."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(default=200, ge=1, le=10_000_000, description="optimiser steps")
    batch_size: int = Field(
        default=8, ge=1, le=65536, description="windows per step (global, all ranks)"
    )
    learning_rate: float = Field(
        default=2e-3, gt=0.0, le=1.0, description="peak AdamW learning rate"
    )
    weight_decay: float = Field(
        default=0.0, ge=0.0, le=1.0, description="AdamW weight decay"
    )
    warmup_steps: int = Field(
        default=20, ge=0, description="linear warm-up steps before the cosine decay"
    )
    min_lr_ratio: float = Field(
        default=0.1, ge=0.0, le=1.0, description="final learning rate / peak"
    )
    temperature: float = Field(
        default=1.0, gt=0.0, le=100.0, description="KD temperature T_kd"
    )
    ce_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="KD modes: weight w of next-token CE in (1 - w) KD + w CE",
    )
    grad_clip: float | None = Field(
        default=1.0, gt=0.0, description="gradient norm clip; None = off"
    )
    seed: int = Field(default=0, ge=0, description="seed of the window order")
    log_every: int = Field(
        default=10, ge=1, description="steps between history entries"
    )


@dataclass(frozen=True)
class TrainLMResult:
    """History and cost of one training run."""

    mode: str
    steps: int
    tokens_seen: int  # positions per step x steps, all ranks
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class LabelSource(Protocol):
    """Where KD targets come from: (b,) window ids + (b, T) ids -> (b, T, V) logits."""

    def logits(
        self, index: torch.Tensor, ids: torch.Tensor, device: torch.device
    ) -> torch.Tensor: ...


class ArchiveLabels:
    """Targets decoded from a ``("sequence", "position")`` label archive.

    Window n's labels are flat labels ``n * T .. n * T + T - 1``; the reader
    decodes only the chunks they live in (one window per chunk by default).
    """

    def __init__(self, reader: ArchiveReader) -> None:
        if len(reader.layout.shape) != 2:
            raise InputError(
                f"archive layout {list(reader.layout.dims)} is not (sequence, position)"
            )
        self.reader = reader
        self.seq_len = reader.layout.shape[1]

    def logits(
        self, index: torch.Tensor, ids: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        positions = torch.arange(self.seq_len)
        flat = self.reader.layout.ravel(index.cpu()[:, None], positions[None])
        return self.reader.decode(flat, device=device)  # (b, T, V)


class TeacherLabels:
    """Targets from the teacher running live (online KD)."""

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher

    @torch.no_grad()
    def logits(
        self, index: torch.Tensor, ids: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        return self.teacher(input_ids=ids).logits.float()


def kd_loss(
    student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * mean KL(p_T || q_T)`` over positions of (..., V) logits (scalar)."""
    kl = distribution_kl(target_logits.detach(), student_logits, temperature)
    return kl.mean() * temperature**2


def learning_rate_at(step: int, config: TrainLMConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to ``min_lr_ratio`` x peak."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_order(
    num_windows: int, batch_size: int, steps: int, seed: int
) -> Iterator[torch.Tensor]:
    """(batch_size,) window ids per step: a seeded permutation per epoch, cut into
    batches (the ``num_windows % batch_size`` left over are skipped that epoch)."""
    if num_windows < batch_size:
        raise ConfigError(
            f"batch_size {batch_size} exceeds the {num_windows} training windows; "
            "lower batch_size or add text"
        )
    g = torch.Generator().manual_seed(seed)
    per_epoch = num_windows // batch_size
    step = 0
    while step < steps:
        perm = torch.randperm(num_windows, generator=g)
        for b in range(min(per_epoch, steps - step)):
            yield perm[b * batch_size : (b + 1) * batch_size]
            step += 1


def distributed_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), if any.

    gloo on CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``). Returns the
    device this rank trains on.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = torch.distributed
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def train_student(
    student: Any,
    windows: torch.Tensor,
    labels: LabelSource | None,
    config: TrainLMConfig | None = None,
    *,
    mode: str | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> TrainLMResult:
    """Train ``student`` in place on (N, T) windows; KD to ``labels`` or CE only.

    Args:
        student: a causal LM with the teacher's vocabulary (trained in place).
        windows: (N, T) int64 training windows; with an archive, the windows it
            labels (``check_lm_archive``).
        labels: KD targets (:class:`ArchiveLabels`, :class:`TeacherLabels`), or
            None for CE only.
        config: optimisation settings.
        mode: name recorded in the result (default from ``labels``).
        device: where the student trains (default: its current device).
        progress: called with 1 after every step.

    Returns:
        A :class:`TrainLMResult` with the loss history.

    Raises:
        ConfigError: batch size not divisible by the number of ranks, or larger
            than the number of windows.
    """
    config = config or TrainLMConfig()
    if mode is None:
        mode = "ce" if labels is None else type(labels).__name__.lower()
    device = torch.device(device) if device is not None else _device_of(student)
    rank, world = distributed_info()
    if config.batch_size % world:
        raise ConfigError(
            f"batch_size {config.batch_size} must be a multiple of the {world} ranks"
        )
    if windows.dim() != 2 or windows.dtype != torch.long:
        raise InputError(f"windows must be (N, T) int64, got {tuple(windows.shape)}")
    student.to(device)
    student.train()
    model = _wrap_ddp(student, device, world)
    optimizer = torch.optim.AdamW(
        student.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=config.weight_decay,
    )
    history: list[dict[str, float]] = []
    seconds = {"labels": 0.0, "step": 0.0}
    sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0, "count": 0.0}
    order = batch_order(windows.shape[0], config.batch_size, config.steps, config.seed)
    for step, global_index in enumerate(order):
        index = global_index[rank::world]
        ids = windows[index].to(device)
        t0 = time.perf_counter()
        target = labels.logits(index, ids, device) if labels is not None else None
        t1 = time.perf_counter()
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        parts = _step(model, student, optimizer, ids, target, config)
        seconds["labels"] += t1 - t0
        seconds["step"] += time.perf_counter() - t1
        for key, value in parts.items():
            sums[key] += value
        sums["count"] += 1
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            history.append(_log_entry(step, lr, sums, world))
            sums = dict.fromkeys(sums, 0.0)
        if progress is not None:
            progress(1)
    student.eval()
    tokens = config.steps * config.batch_size * windows.shape[1]
    return TrainLMResult(mode, config.steps, tokens, history, seconds)


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def _wrap_ddp(student: Any, device: torch.device, world: int) -> Any:
    if world == 1:
        return student
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(student, device_ids=ids)


def _step(
    model: Any,
    student: Any,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    target: torch.Tensor | None,
    config: TrainLMConfig,
) -> dict[str, float]:
    logits = model(input_ids=ids).logits  # (b, T, V)
    ce = next_token_nll(logits, ids).mean()
    if target is None:
        loss, kd_value = ce, 0.0
    else:
        if target.shape != logits.shape:
            raise InputError(
                f"KD targets have shape {tuple(target.shape)} but the student outputs "
                f"{tuple(logits.shape)}; labels and student must share windows and V"
            )
        kd = kd_loss(logits, target, config.temperature)
        w = config.ce_weight
        loss = (1 - w) * kd + w * ce if w else kd
        kd_value = float(kd.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
    optimizer.step()
    return {"loss": float(loss.detach()), "kd": kd_value, "ce": float(ce.detach())}


def _log_entry(
    step: int, lr: float, sums: dict[str, float], world: int
) -> dict[str, float]:
    values = torch.tensor([sums["loss"], sums["kd"], sums["ce"], sums["count"]])
    if world > 1:  # average the ranks' local losses
        torch.distributed.all_reduce(values)
        values[:3] /= world
    count = float(values[3]) / world
    return {
        "step": float(step + 1),
        "lr": lr,
        "loss": float(values[0]) / count,
        "kd": float(values[1]) / count,
        "ce": float(values[2]) / count,
    }
