"""Teachers whose logits labelzip compresses: a pretrained ImageNet model and
small Fashion-MNIST models trained (once, cached) by labelzip itself.

All teachers take images in 0..255 (uint8 or float) and return (B, C) logits.
"""

from __future__ import annotations

from labelzip.teachers.efficientnet import (
    EFFNET_INSTALL_HINT,
    ImageNetTeacher,
    load_efficientnet_lite0,
)
from labelzip.teachers.small import (
    ARCHITECTURES,
    GrayConvNet,
    GrayResNet,
    build_small_teacher,
)
from labelzip.teachers.train import (
    TeacherTrainConfig,
    TrainedTeacher,
    default_cache_dir,
    evaluate_teacher,
    predict_logits,
    train_teacher,
)

__all__ = [
    "ARCHITECTURES",
    "EFFNET_INSTALL_HINT",
    "GrayConvNet",
    "GrayResNet",
    "ImageNetTeacher",
    "TeacherTrainConfig",
    "TrainedTeacher",
    "build_small_teacher",
    "default_cache_dir",
    "evaluate_teacher",
    "load_efficientnet_lite0",
    "predict_logits",
    "train_teacher",
]
