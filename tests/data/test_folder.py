from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from labelzip.data import load_image_folder, require_one_size, resize_image
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


def test_channels_come_from_the_files(
    tmp_path: Path, image_folder: Callable[..., Path]
) -> None:
    gray = load_image_folder(image_folder(tmp_path / "g", channels=1, per_class=2))
    rgb = load_image_folder(image_folder(tmp_path / "c", channels=3, per_class=2))
    assert gray.images.shape == (20, 1, 28, 28) and rgb.images.shape == (20, 3, 28, 28)
    # Explicit and detected channel counts give the same pixels and fingerprint.
    forced = load_image_folder(tmp_path / "g", channels=1)
    assert forced.fingerprint == gray.fingerprint
    assert torch.equal(forced.images, gray.images)
    as_rgb = load_image_folder(tmp_path / "g", channels=3)
    assert as_rgb.images.shape == (20, 3, 28, 28)
    assert torch.equal(as_rgb.images[:, 0], gray.images[:, 0])


def test_palette_images_count_by_their_palette(tmp_path: Path) -> None:
    for name, colour in (("gray", (90, 90, 90)), ("red", (200, 10, 10))):
        (tmp_path / name / "k").mkdir(parents=True)
        image = Image.new("RGB", (5, 5), colour).convert("P")
        image.putpalette([v for i in range(256) for v in (i, i, i)])
        if name == "red":
            image.putpalette([v for i in range(256) for v in (i, 0, 0)])
        image.save(tmp_path / name / "k" / "a.png")
        assert Image.open(tmp_path / name / "k" / "a.png").mode == "P"
    assert load_image_folder(tmp_path / "gray").images.shape[1] == 1
    assert load_image_folder(tmp_path / "red").images.shape[1] == 3


def test_mixed_channels_name_the_odd_file(
    tmp_path: Path, image_folder: Callable[..., Path]
) -> None:
    root = image_folder(tmp_path, channels=1, per_class=2, num_classes=3)
    pixels = torch.zeros((28, 28, 3), dtype=torch.uint8).numpy()
    Image.fromarray(pixels, mode="RGB").save(root / "class1" / "zz.png")
    with pytest.raises(
        InputError,
        match=r"mix grayscale and RGB: 'class1/zz.png' is RGB but 'class0/000.png' "
        r"is grayscale; .*channels=1\|3",
    ):
        load_image_folder(root)
    assert load_image_folder(root, channels=3).images.shape == (7, 3, 28, 28)


def test_image_size_resizes_only_other_sizes(
    tmp_path: Path, image_folder: Callable[..., Path]
) -> None:
    mixed = image_folder(tmp_path / "m", channels=3, per_class=2, size=[20, (24, 16)])
    loose = load_image_folder(mixed)
    assert isinstance(loose.images, list)
    with pytest.raises(InputError, match=r"'class0/001.png' is 24x16 but "
                       r"'class0/000.png' is 20x20; pass --image-size"):  # fmt: skip
        require_one_size(loose, "pass --image-size N")
    fixed = load_image_folder(mixed, image_size=20)
    assert require_one_size(fixed, "") is fixed.images
    assert fixed.images.shape == (20, 3, 20, 20)
    assert torch.equal(fixed.images[0], loose.images[0])  # already 20x20: untouched
    assert fixed.fingerprint != loose.fingerprint
    # A size every file already has changes nothing, fingerprint included.
    same = image_folder(tmp_path / "s", channels=1, per_class=1, size=12)
    assert load_image_folder(same, image_size=12).fingerprint == (
        load_image_folder(same).fingerprint
    )


def test_resize_image() -> None:
    image = torch.arange(2 * 8 * 8, dtype=torch.uint8).reshape(2, 8, 8)
    assert resize_image(image, (8, 8)) is image
    small = resize_image(image, (4, 2))
    assert small.shape == (2, 4, 2) and small.dtype == torch.uint8
    flat = torch.full((1, 6, 6), 77, dtype=torch.uint8)
    assert torch.equal(resize_image(flat, (3, 9)), torch.full((1, 3, 9), 77).byte())
