"""Teachers whose logits labelzip compresses: a pretrained ImageNet model, small
models trained (once, cached) by labelzip itself on the user's data (Fashion-MNIST
by default), and any model from a TorchScript file.

All teachers take images in 0..255 (uint8 or float) and return (B, C) logits.
"""

from __future__ import annotations

from labelzip.teachers.efficientnet import (
    EFFNET_INSTALL_HINT,
    ImageNetTeacher,
    load_efficientnet_lite0,
)
from labelzip.teachers.files import (
    CONVERT_HINT,
    TRUST_PICKLE_HELP,
    load_teacher_file,
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
    teacher_cache_path,
    train_teacher,
)

__all__ = [
    "ARCHITECTURES",
    "CONVERT_HINT",
    "EFFNET_INSTALL_HINT",
    "GrayConvNet",
    "GrayResNet",
    "ImageNetTeacher",
    "TRUST_PICKLE_HELP",
    "TeacherTrainConfig",
    "TrainedTeacher",
    "build_small_teacher",
    "default_cache_dir",
    "evaluate_teacher",
    "load_efficientnet_lite0",
    "load_teacher_file",
    "predict_logits",
    "teacher_cache_path",
    "train_teacher",
]
