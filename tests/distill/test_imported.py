from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelzip.data import ImageDataset
from labelzip.distill import distill
from labelzip.errors import ConfigError, InputError


def _write(
    root: Path, folder: str, name: str, value: int, size: int = 8, mode: str = "RGB"
) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(
        root / folder / name
    )


@pytest.fixture
def sre2l_tree(tmp_path: Path) -> Path:
    """SRe2L-style layout: new000/, new002/ with class-indexed folders."""
    root = tmp_path / "released"
    for k in range(3):
        _write(root, "new000", f"class000_id{k:03d}.png", 10 + k)
        _write(root, "new002", f"class002_id{k:03d}.png", 100 + k)
    return root


def _names() -> ImageDataset:
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    return ImageDataset("three", images, torch.arange(3), ("cat", "dog", "new002"), "x")


def test_index_folders_map_by_trailing_digits(sre2l_tree: Path) -> None:
    ds = distill("import", None, folder=str(sre2l_tree))
    assert ds.method == "import" and ds.ipc == 3 and len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 0, 2, 2, 2]
    assert ds.class_names == ("new000", "class_1", "new002")
    assert ds.images.shape == (6, 3, 8, 8)
    assert ds.images[:, 0, 0, 0].tolist() == [10, 11, 12, 100, 101, 102]
    assert ds.config["class_map"] == "index"
    assert ds.config["sources"][0] == "new000/class000_id000.png"
    assert ds.source_fingerprint is not None
    again = distill("import", None, folder=str(sre2l_tree))
    assert again.fingerprint == ds.fingerprint


def test_names_ipc_cap_resize_and_channels(sre2l_tree: Path) -> None:
    gray = ImageDataset(
        "gray", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]),
        ("a", "b", "c"), "y",
    )  # fmt: skip
    ds = distill("import", gray, ipc=2, folder=str(sre2l_tree))
    assert ds.images.shape == (4, 1, 4, 4)  # the dataset's channels and size
    assert ds.labels.tolist() == [0, 0, 2, 2] and ds.ipc == 2
    assert ds.class_names == ("a", "b", "c")
    assert int(ds.images[0, 0, 0, 0]) == 10  # a flat image stays flat after resizing
    big = distill("import", None, folder=str(sre2l_tree), image_size=16, channels=3)
    assert big.images.shape == (6, 3, 16, 16)
    by_name = distill("import", _names(), folder=str(sre2l_tree), class_map="sorted")
    assert by_name.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_auto_prefers_class_names(tmp_path: Path) -> None:
    _write(tmp_path, "dog", "a.png", 1)
    _write(tmp_path, "cat", "b.png", 2)
    ds = distill("import", _names(), folder=str(tmp_path))
    assert ds.config["class_map"] == "name"
    assert ds.labels.tolist() == [0, 1]  # cat=0, dog=1 as in the dataset
    assert ds.class_counts().tolist() == [1, 1, 0]


def test_import_errors(tmp_path: Path, sre2l_tree: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        distill("import", None, folder=str(tmp_path / "nope"))
    with pytest.raises(
        InputError, match=r"class 0 \('new000'\) has only 3 images; use --ipc 3"
    ):
        distill("import", None, ipc=4, folder=str(sre2l_tree))
    with pytest.raises(InputError, match="are not class names of the dataset"):
        distill("import", _names(), folder=str(sre2l_tree), class_map="name")
    _write(tmp_path / "mixed", "x1", "a.png", 1, size=8)
    _write(tmp_path / "mixed", "x1", "b.png", 1, size=9)
    with pytest.raises(InputError, match="2 different sizes .* give image_size"):
        distill("import", None, folder=str(tmp_path / "mixed"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no class folders"):
        distill("import", None, folder=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="folder: Field required"):
        distill("import", None)
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        distill("import", None, folder=str(sre2l_tree), channels=2)
