from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from labelzip.data import (
    CIFAR100_CLASSES,
    decode_image,
    foolbox_data_dir,
    load_foolbox_samples,
)
from labelzip.errors import InputError

HAVE_FOOLBOX = importlib.util.find_spec("foolbox") is not None


def _png(array: torch.Tensor, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.numpy(), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_png_rgb_and_gray() -> None:
    rgb = torch.randint(
        0, 256, (5, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = decode_image(_png(rgb, "RGB"), 3)
    assert out.shape == (3, 5, 7) and torch.equal(out, rgb.permute(2, 0, 1))
    gray = decode_image(_png(rgb, "RGB"), 1)
    assert gray.shape == (1, 5, 7) and gray.dtype == torch.uint8
    with pytest.raises(InputError, match="cannot decode broken.png"):
        decode_image(b"not an image", 3, "broken.png")


def test_samples_from_a_folder(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    for num, label in ((1, 7), (0, 42)):
        pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g)
        (tmp_path / f"cifar100_{num:02d}_{label}.png").write_bytes(_png(pixels, "RGB"))
    (tmp_path / "cifar10_00_3.png").write_bytes(_png(pixels, "RGB"))
    ds = load_foolbox_samples("cifar100", folder=tmp_path)
    assert ds.labels.tolist() == [42, 7]  # sorted by image number
    assert ds.sources == ("cifar100_00_42.png", "cifar100_01_7.png")
    assert ds.images.shape == (2, 3, 32, 32)
    assert ds.class_names[42] == CIFAR100_CLASSES[42] and len(CIFAR100_CLASSES) == 100
    with pytest.raises(InputError, match="no mnist sample images"):
        load_foolbox_samples("mnist", folder=tmp_path)
    with pytest.raises(InputError, match="unknown sample set 'svhn'"):
        load_foolbox_samples("svhn", folder=tmp_path)  # type: ignore[arg-type]


def test_missing_foolbox_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps foolbox==3.3.4"):
        foolbox_data_dir()


@pytest.mark.skipif(not HAVE_FOOLBOX, reason="foolbox sample images not installed")
def test_real_samples() -> None:
    import sys

    imagenet = load_foolbox_samples("imagenet")
    assert "foolbox" not in sys.modules  # located, never imported
    assert len(imagenet) == 20 and imagenet.labels[0] == 243
    assert imagenet.sources[0] == "imagenet_00_243.jpg"
    first = imagenet.images[0]
    assert first.dtype == torch.uint8 and first.shape[0] == 3
    fmnist = load_foolbox_samples("fashionMNIST")
    assert fmnist.images.shape == (20, 1, 28, 28) and fmnist.labels[0] == 9
    assert imagenet.fingerprint == load_foolbox_samples("imagenet").fingerprint
