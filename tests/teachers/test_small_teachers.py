from __future__ import annotations

import hashlib
from collections.abc import Callable

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


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("channels", [1, 3])
def test_any_channels_and_size(arch: str, channels: int) -> None:
    torch.manual_seed(0)
    model = build_small_teacher(arch, num_classes=5, in_channels=channels).eval()
    for h, w in ((28, 28), (32, 32), (16, 20), (64, 48), (4, 4)):
        images = torch.randint(0, 256, (2, channels, h, w), dtype=torch.uint8)
        assert model(images).shape == (2, 5)
    kind = "grayscale" if channels == 1 else "RGB"
    with pytest.raises(InputError, match=f"built for {kind} images"):
        model(torch.zeros(2, 4 - channels, 28, 28))


def test_fashion_mnist_teachers_are_unchanged(
    skip_if_other_floats: Callable[[bool, str], None],
) -> None:
    """The 1-channel 28x28 nets keep their parameters, init and outputs, so the
    teachers cached before RGB support load and give the same labels."""
    digests = {}
    for arch in ARCHITECTURES:
        torch.manual_seed(0)
        model = build_small_teacher(arch, 10).eval()
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode() + tensor.numpy().tobytes())
        images = torch.randint(0, 256, (4, 1, 28, 28)).float()
        digest.update(model(images).detach().numpy().tobytes())
        digests[arch] = digest.hexdigest()[:16]
    # sha256 of the state dicts and outputs before 3-channel support (torch 2.13 CPU).
    want = {"convnet": "14ee4e70e11a837f", "resnet": "c3fb5e685c345181"}
    skip_if_other_floats(digests == want, "the teachers' weights and outputs")
    assert digests == want


def test_input_checks() -> None:
    net = GrayConvNet().eval()
    with pytest.raises(
        InputError,
        match=r"built for grayscale images \(B, 1, H, W\), got \(2, 3, 28, 28\)",
    ):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(InputError, match="needs images of at least 4x4"):
        net(torch.zeros(2, 1, 3, 28))
    with pytest.raises(ConfigError, match="in_channels must be 1 or 3, got 2"):
        build_small_teacher("resnet", in_channels=2)
    with pytest.raises(ConfigError, match="unknown teacher arch 'vit'"):
        build_small_teacher("vit")
