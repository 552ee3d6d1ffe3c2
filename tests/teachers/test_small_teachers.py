from __future__ import annotations

import pytest
import torch

from labelzip.errors import ConfigError, InputError
from labelzip.teachers import ARCHITECTURES, GrayConvNet, build_small_teacher


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shapes_and_uint8_input(arch: str) -> None:
    torch.manual_seed(0)
    model = build_small_teacher(arch, num_classes=7).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    torch.testing.assert_close(model(images.float()), logits)


def test_input_checks() -> None:
    net = GrayConvNet().eval()
    with pytest.raises(
        InputError, match=r"grayscale images \(B, 1, H, W\), got \(2, 3, 28, 28\)"
    ):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(InputError, match="needs 28x28 images"):
        net(torch.zeros(2, 1, 32, 32))
    resnet = build_small_teacher("resnet").eval()
    assert resnet(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="unknown teacher arch 'vit'"):
        build_small_teacher("vit")
