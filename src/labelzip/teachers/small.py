"""Small teachers for grayscale or RGB images of any size, trained by labelzip.

Made for Fashion-MNIST (28x28 grayscale, hence the class names), they take 1 or
3 input channels (``in_channels``, from the training data) and any image size.
Like :class:`~labelzip.teachers.efficientnet.ImageNetTeacher`, every teacher
takes images in 0..255 (uint8 or float) and normalises inside, so augmented
views go straight in. The normalisation constants are Fashion-MNIST's for
every channel and every dataset: the first convolution has no bias and is
followed by BatchNorm, which absorbs any affine input scaling but at the
zero-padded border. Two architectures:

- ``convnet``: three conv-BN-ReLU layers (32-64-64 channels, two max-pools) and
  an MLP head on a 7x7 map (other sizes are average-pooled to 7x7), about 0.46M
  parameters and 6M MACs per 28x28 grayscale image. ``train_teacher`` trains
  it on crops (0.5-1) because it labels crop views: a teacher trained without
  crops is more accurate on whole images but far less on crops
  (docs/bench-vision.md, "The teacher and the quickstart's student recipe").
- ``resnet``: a narrow ResNet (16-32-64 channels, one basic block per stage),
  about 0.08M parameters; a second, differently biased teacher.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from labelzip.errors import ConfigError, InputError

__all__ = ["ARCHITECTURES", "GrayConvNet", "GrayResNet", "build_small_teacher"]

Architecture = Literal["convnet", "resnet"]
ARCHITECTURES: tuple[str, ...] = ("convnet", "resnet")
# Fashion-MNIST pixel mean and std (of x / 255), for input normalisation.
_MEAN, _STD = 0.2860, 0.3530


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class _GrayTeacher(nn.Module):
    """Shared input handling: (B, in_channels, H, W) in 0..255 -> normalised float."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {in_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            kind = "grayscale" if self.in_channels == 1 else "RGB"
            raise InputError(
                f"{type(self).__name__} was built for {kind} images "
                f"(B, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        return (images.to(torch.float32) / 255.0 - _MEAN) / _STD


class GrayConvNet(_GrayTeacher):
    """VGG-style ConvNet: (B, in_channels, H, W) -> (B, num_classes).

    Native size 28x28; other sizes (at least 4x4) are average-pooled (or
    repeated, when smaller) to the head's 7x7 map after the two max-pools.
    """

    def __init__(
        self, num_classes: int = 10, width: int = 32, in_channels: int = 1
    ) -> None:
        super().__init__(num_classes, in_channels)
        # One conv per resolution keeps it cheap (~6M MACs per image): the
        # expensive full-resolution layer has few input channels.
        self.features = nn.Sequential(
            *_conv_bn(in_channels, width),
            nn.MaxPool2d(2),  # 28 -> 14
            *_conv_bn(width, 2 * width),
            nn.MaxPool2d(2),  # 14 -> 7
            *_conv_bn(2 * width, 2 * width),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(2 * width * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )
        # No parameters: state dicts (and cached weights) are those of 28x28 nets.
        self.pool = nn.AdaptiveAvgPool2d((7, 7))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4 and min(images.shape[-2:]) < 4:
            raise InputError(
                f"GrayConvNet needs images of at least 4x4, got {tuple(images.shape)}"
            )
        x = self.features(self._normalise(images))
        if x.shape[-2:] != (7, 7):  # 28x28 inputs skip it: bit for bit as before
            x = self.pool(x)
        out: torch.Tensor = self.head(x)
        return out


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.skip(x))
        return out


class GrayResNet(_GrayTeacher):
    """Narrow ResNet for images of any size: (B, in_channels, H, W) -> (B, classes)."""

    def __init__(
        self, num_classes: int = 10, width: int = 16, in_channels: int = 1
    ) -> None:
        super().__init__(num_classes, in_channels)
        self.stem = nn.Sequential(*_conv_bn(in_channels, width))
        self.stages = nn.Sequential(
            _BasicBlock(width, width, 1),
            _BasicBlock(width, 2 * width, 2),
            _BasicBlock(2 * width, 4 * width, 2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.stages(self.stem(self._normalise(images))))
        return out


def build_small_teacher(
    arch: str, num_classes: int = 10, in_channels: int = 1
) -> nn.Module:
    """A freshly initialised small teacher (initialise under a seeded RNG).

    Raises:
        ConfigError: unknown architecture, ``in_channels`` not 1 or 3.
    """
    if arch == "convnet":
        return GrayConvNet(num_classes, in_channels=in_channels)
    if arch == "resnet":
        return GrayResNet(num_classes, in_channels=in_channels)
    raise ConfigError(f"unknown teacher arch {arch!r}; use one of {ARCHITECTURES}")
