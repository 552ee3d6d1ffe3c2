"""Shared CLI fixtures: a tiny folder in Fashion-MNIST's IDX format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch


def _images(labels: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (len(labels), 1, 28, 28), generator=g)
    for n, label in enumerate(labels.tolist()):
        images[n, :, 2 * label + 4 : 2 * label + 7] += 180
    return images.clamp(0, 255).to(torch.uint8)


def _write_split(folder: Path, prefix: str, count: int, seed: int) -> None:
    labels = torch.arange(count) % 10
    pixels = _images(labels, seed)[:, 0].numpy().astype(np.uint8)
    ids = labels.numpy().astype(np.uint8)
    for name, array, rank in (("images-idx3", pixels, 3), ("labels-idx1", ids, 1)):
        dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(folder / f"{prefix}-{name}-ubyte.gz", "wb") as handle:
            handle.write(bytes([0, 0, 0x08, rank]) + dims + array.tobytes())


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """300 train and 50 test images in Fashion-MNIST's file format; a fresh cache."""
    folder = tmp_path / "fmnist"
    folder.mkdir()
    _write_split(folder, "train", 300, seed=0)
    _write_split(folder, "t10k", 50, seed=1)
    monkeypatch.setenv("LABELZIP_CACHE", str(tmp_path / "cache"))
    return folder
