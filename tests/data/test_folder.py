from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from labelzip.data import load_image_folder
from labelzip.errors import InputError


def _make_tree(root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    for cls, files in (("dog", ["b.png", "a.jpg"]), ("cat", ["x.png"])):
        (root / cls).mkdir(parents=True)
        for name in files:
            pixels = torch.randint(0, 256, (6, 6, 3), dtype=torch.uint8, generator=g)
            Image.fromarray(pixels.numpy(), mode="RGB").save(root / cls / name)
    (root / "dog" / "notes.txt").write_text("not an image")


def test_sorted_classes(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    ds = load_image_folder(tmp_path)
    assert ds.class_names == ("cat", "dog")
    assert ds.sources == ("cat/x.png", "dog/a.jpg", "dog/b.png")
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 3, 6, 6) and ds.images.dtype == torch.uint8
    gray = load_image_folder(tmp_path, channels=1)
    assert gray.images.shape == (3, 1, 6, 6)
    assert gray.fingerprint != ds.fingerprint
    assert ds.fingerprint == load_image_folder(tmp_path).fingerprint


def test_explicit_class_map(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    ds = load_image_folder(tmp_path, class_to_idx={"dog": 3, "cat": 0})
    assert ds.labels.tolist() == [0, 3, 3]
    assert ds.class_names == ("cat", "class_1", "class_2", "dog")
    with pytest.raises(
        InputError, match=r"class folders \['dog'\].*not in class_to_idx"
    ):
        load_image_folder(tmp_path, class_to_idx={"cat": 0})
    with pytest.raises(InputError, match="distinct ids"):
        load_image_folder(tmp_path, class_to_idx={"cat": 0, "dog": 0})


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(InputError, match="has no class folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(InputError, match="no .jpg/.jpeg/.png images"):
        load_image_folder(tmp_path)
