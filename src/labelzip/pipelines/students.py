"""Student networks trained from (compressed) soft labels.

Every student takes views in 0..255, like the teachers, and normalises inside
with the per-channel mean and std of the distilled images (the only images a
student of a distilled set has). Architectures:

- ``convnet`` (default, CPU): the dataset-distillation ConvNet (depth x
  [conv3x3, instance norm, ReLU, avg-pool 2], then a linear head), width 32,
  about 2.5M multiply-adds per 28x28 view; any channel count and size.
- ``resnet``: the narrow ResNet of :mod:`labelzip.teachers` (16-32-64
  channels; 1 or 3 input channels, any size).
- ``resnet18``: ResNet-18 (64-128-256-512, BatchNorm), the paper's student,
  with a 3x3 stride-1 stem for views up to 64 px and the ImageNet 7x7/stride-2
  stem plus max-pool above. Meant for GPUs (about 54 views/s training on 2 CPU
  cores at 28 px).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from labelzip.errors import ConfigError
from labelzip.teachers.small import GrayResNet

__all__ = ["STUDENT_ARCHS", "ConvNetStudent", "ResNet18Student", "build_student"]

StudentArch = Literal["convnet", "resnet", "resnet18"]
STUDENT_ARCHS: tuple[str, ...] = ("convnet", "resnet", "resnet18")


class _Normalise(nn.Module):
    """(x - mean) / std per channel, for inputs in 0..255."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).float().clamp_min(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class ConvNetStudent(nn.Module):
    """The DD ConvNet: (B, ch, H, W) in 0..255 -> (B, num_classes) logits."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        mean: torch.Tensor,
        std: torch.Tensor,
        width: int = 32,
        depth: int = 3,
    ) -> None:
        super().__init__()
        self.norm = _Normalise(mean, std)
        layers: list[nn.Module] = []
        channels, (h, w) = in_channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),  # instance norm
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            channels, h, w = width, h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(
                f"a depth-{depth} ConvNet needs views of at least {2**depth} px, got "
                f"{image_size}"
            )
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(self.norm(x)).flatten(1))
        return out


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.skip(x))


class ResNet18Student(nn.Module):
    """ResNet-18: (B, ch, H, W) in 0..255 -> (B, num_classes) logits."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> None:
        super().__init__()
        self.norm = _Normalise(mean, std)
        if max(image_size) <= 64:  # CIFAR-style stem keeps small views' resolution
            stem: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)]
        stem += [nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        if max(image_size) > 64:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_Block(c_in, c_out, stride), _Block(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.blocks(self.stem(self.norm(x)))
        out: torch.Tensor = self.head(feats.mean(dim=(2, 3)))
        return out


def build_student(
    arch: str,
    num_classes: int,
    images: torch.Tensor,
    view_size: tuple[int, int],
    *,
    width: int = 32,
    depth: int = 3,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """A freshly initialised student (seed the global RNG first for determinism).

    Args:
        arch: one of :data:`STUDENT_ARCHS`.
        num_classes: C.
        images: the distilled images (M, ch, H, W) in 0..255: the channel count,
            and the normalisation statistics unless ``mean``/``std`` are given.
        view_size: (h, w) of the views the student is trained on.
        width, depth: ConvNet only.
        mean, std: per-channel input statistics in 0..255 units, e.g. of the
            real training data (synthetic images can have other statistics
            than the test images).

    Raises:
        ConfigError: unknown arch, or an arch that cannot take these images.
    """
    channels = int(images.shape[1])
    flat = images.float().transpose(0, 1).reshape(channels, -1)
    mu = torch.tensor(mean) if mean is not None else flat.mean(dim=1)
    sigma = torch.tensor(std) if std is not None else flat.std(dim=1)
    if mu.numel() != channels or sigma.numel() != channels:
        raise ConfigError(
            f"input mean/std need one value per channel ({channels}), got "
            f"{mean} and {std}"
        )
    if arch == "convnet":
        return ConvNetStudent(
            num_classes, channels, view_size, mu, sigma, width=width, depth=depth
        )
    if arch == "resnet":
        return GrayResNet(num_classes, in_channels=channels)
    if arch == "resnet18":
        return ResNet18Student(num_classes, channels, view_size, mu, sigma)
    raise ConfigError(f"unknown student arch {arch!r}; use one of {STUDENT_ARCHS}")
