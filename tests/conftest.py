"""Shared, seeded fixtures: synthetic teacher logits shaped like a real classifier's.

``make_teacher_logits`` builds logits with the structure codecs care about: one
dominant class per label with a varying margin (some labels confident, some
ambiguous), a few related classes that carry real secondary mass, and a Gaussian
tail. For C=1000 the mean max probability is about 0.83 and logits span about
-7..16, close to an ImageNet teacher's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

__all__ = ["make_teacher_logits", "write_image_folder"]

# Test tensors are small: one intra-op thread is as fast, and avoids the 10x
# slowdowns of oversubscribed thread pools on a shared machine. Override with
# LABELZIP_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("LABELZIP_TEST_THREADS", "1")))


def make_teacher_logits(
    num_labels: int,
    num_classes: int,
    seed: int = 0,
    *,
    tail_std: float = 1.5,
    margin_mean: float = 2.5,
    margin_std: float = 2.0,
) -> torch.Tensor:
    """(N, C) float32 logits of a peaked, class-structured synthetic teacher.

    Args:
        num_labels: N.
        num_classes: C.
        seed: generator seed; equal arguments give equal tensors.
        tail_std: standard deviation of the non-target logits.
        margin_mean, margin_std: the target logit sits this far (in nats, normal
            distributed) above the log-sum-exp of all other logits.
    """
    g = torch.Generator().manual_seed(seed)
    dim = 16
    emb = torch.nn.functional.normalize(
        torch.randn(num_classes, dim, generator=g), dim=1
    )
    target = torch.randint(0, num_classes, (num_labels,), generator=g)
    # Classes similar to the target get extra logit, by a per-label amount.
    sim = (emb[target] @ emb.T).clamp_min(0) ** 2  # (N, C)
    strength = 8.0 * torch.rand(num_labels, 1, generator=g)
    logits = strength * sim + tail_std * torch.randn(
        num_labels, num_classes, generator=g
    )
    others = logits.scatter(1, target[:, None], float("-inf")).logsumexp(dim=1)
    margin = margin_mean + margin_std * torch.randn(num_labels, generator=g)
    logits[torch.arange(num_labels), target] = others + margin
    return logits.float()


_CACHE: dict[tuple[int, int, int], torch.Tensor] = {}


def _cached(num_labels: int, num_classes: int, seed: int) -> torch.Tensor:
    key = (num_labels, num_classes, seed)
    if key not in _CACHE:
        _CACHE[key] = make_teacher_logits(num_labels, num_classes, seed)
    return _CACHE[key].clone()  # tests may modify their copy


@pytest.fixture
def teacher_logits() -> torch.Tensor:
    """(512, 1000) realistic peaked logits (ImageNet-sized), seed 0."""
    return _cached(512, 1000, 0)


@pytest.fixture
def teacher_logits_c10() -> torch.Tensor:
    """(256, 10) peaked logits with 10 classes (CIFAR / Fashion-MNIST sized), seed 1."""
    return _cached(256, 10, 1)


@pytest.fixture
def make_logits() -> Callable[..., torch.Tensor]:
    """The generator itself, for tests that need other shapes or seeds."""
    return make_teacher_logits


def write_image_folder(
    root: Path,
    *,
    channels: int,
    per_class: int = 4,
    num_classes: int = 10,
    size: int | tuple[int, int] = 28,
    seed: int = 0,
) -> Path:
    """A class-per-subfolder tree of PNGs (``root/class<k>/<n>.png``), as a user's.

    Class k has its own brightness (per channel in RGB, so also its own colour)
    and a bright row at a class-specific height on noise: both survive crops and
    flips, so a small teacher learns the classes in a few steps. ``size`` is one
    side, one (H, W), or a list of them that the images cycle through.
    """
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    sides = size if isinstance(size, list) else [size]
    count = 0
    for k in range(num_classes):
        folder = root / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            side = sides[count % len(sides)]
            count += 1
            h, w = (side, side) if isinstance(side, int) else side
            levels = torch.tensor([20 + 22 * ((k + 3 * c) % 10) for c in range(3)])
            pixels = torch.randint(0, 40, (h, w, channels), generator=g)
            pixels += levels[:channels]
            row = (k * h) // num_classes
            pixels[row : row + max(1, h // 10)] += 60
            array = pixels.clamp(0, 255).to(torch.uint8).numpy()
            mode = "L" if channels == 1 else "RGB"
            Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(
                folder / f"{n:03d}.png"
            )
    return root


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file appears on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.fixture
def evil_pickle(tmp_path: Path) -> tuple[Path, Path]:
    """(a ``torch.save`` file whose unpickling creates a file, that file's path)."""
    marker = tmp_path / "unpickled-marker"
    path = tmp_path / "evil.pt"
    torch.save(_CreatesFile(marker), path)
    assert not marker.exists()
    return path, marker


@pytest.fixture
def image_folder() -> Callable[..., Path]:
    """:func:`write_image_folder`, for tests that build a user's image folder."""
    return write_image_folder
