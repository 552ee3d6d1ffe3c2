"""Data-free recovery from the real ImageNet-1K teacher (EfficientNet-Lite0)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from labelzip.distill import RecoverConfig, distill, recover_batch

pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def effnet() -> nn.Module:
    from labelzip.teachers import load_efficientnet_lite0

    return load_efficientnet_lite0()


def test_sre2l_data_free_class_subset(effnet: nn.Module) -> None:
    classes = [1, 207, 948]  # goldfish, golden retriever, granny smith
    ds = distill(
        "sre2l", None, effnet, ipc=1, seed=0, steps=2, image_size=32, classes=classes
    )
    assert ds.images.shape == (3, 3, 32, 32) and ds.labels.tolist() == classes
    assert ds.num_classes == 1000 and ds.class_names[207] == "imagenet_207"
    assert ds.source_fingerprint is None
    assert ds.teacher_id is not None and ds.teacher_id.startswith("efficientnet-lite0:")
    assert ds.config["image_size"] == 32 and ds.config["channels"] == 3
    assert ds.config["jitter"] == 4


def test_recovery_loss_falls_on_the_imagenet_teacher(effnet: nn.Module) -> None:
    targets = torch.tensor([1, 207, 948, 300])
    config = RecoverConfig(crop_scale=(0.5, 1.0))
    result = recover_batch(
        effnet, targets, (3, 32, 32), config, torch.Generator().manual_seed(0), steps=10
    )
    # the BN term dominates at first (49 layers); both it and the total fall
    assert sum(result.loss[-3:]) < 0.95 * sum(result.loss[:3])  # measured: 0.90
    assert result.bn[-1] < result.bn[0]


def test_lpld_without_real_images_falls_back(
    effnet: nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="labelzip.distill.recover"):
        ds = distill(
            "lpld", None, effnet, ipc=2, seed=0, steps=2, image_size=32, classes=[5]
        )
    assert "class-wise BN statistics cannot be measured" in caplog.text
    assert ds.config["bn_statistics"] == "running" and ds.labels.tolist() == [5, 5]
