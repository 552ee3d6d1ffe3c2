"""BatchNorm statistics for data-free recovery: matching losses and class-wise targets.

Every BN layer normalises its input with stored statistics (running mean and
variance of the real training data). :class:`BNMatcher` hooks each BN layer and
measures how far a batch's input statistics are from target statistics (the
running ones, or per-class ones from :func:`class_bn_statistics` for LPLD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from labelzip.distill._common import eval_mode
from labelzip.errors import InputError

__all__ = [
    "BNMatcher",
    "BNTargets",
    "batch_moments",
    "bn_layers",
    "class_bn_statistics",
    "running_statistics",
]

BNTargets = list[tuple[torch.Tensor, torch.Tensor]]


def bn_layers(teacher: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The teacher's BN layers that store running statistics, in module order.

    Raises:
        InputError: there are none (recovery has nothing to match).
    """
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


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a BN input (B, C, ...)."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, unbiased=False)


class BNMatcher:
    """Forward hooks that record each BN layer's statistic-matching loss."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers = list(layers)
        self.targets: list[BNTargets] = []  # each: one (mean, var) per layer
        self.weights: list[float] = []
        self.losses: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> BNMatcher:
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
            mean, var = batch_moments(inputs[0].float())
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
    layers = bn_layers(teacher)
    sums: dict[int, list[torch.Tensor]] = {}  # layer -> [sum, sum of squares, count]
    device = torch.device(device)

    def collect(idx: int) -> Callable[..., None]:
        def record(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object
        ) -> None:
            x = inputs[0].double()
            dims = [0, *range(2, x.dim())]
            count = x.numel() / x.shape[1]
            part = [x.sum(dims), (x * x).sum(dims), x.new_tensor(count)]
            if idx in sums:
                part = [a + b for a, b in zip(sums[idx], part, strict=True)]
            sums[idx] = part

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
                for idx in range(len(layers)):
                    total, square, count = sums[idx]
                    mean = total / count
                    var = (square / count - mean * mean).clamp_min(0.0)
                    stats.append((mean.float(), var.float()))
                out[cls] = stats
        finally:
            for handle in handles:
                handle.remove()
    return out
