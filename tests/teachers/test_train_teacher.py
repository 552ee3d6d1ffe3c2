from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labelzip.data import ImageDataset, fingerprint_tensors, load_image_folder
from labelzip.errors import InputError
from labelzip.teachers import (
    TeacherTrainConfig,
    default_cache_dir,
    evaluate_teacher,
    predict_logits,
    teacher_cache_path,
    train_teacher,
)


@pytest.fixture(scope="module")
def toy() -> ImageDataset:
    """128 28x28 images whose class (0-3) is their brightness band: learnable fast."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (128,), generator=g)
    noise = torch.randint(0, 60, (128, 1, 28, 28), generator=g)
    images = (noise + 60 * labels[:, None, None, None]).to(torch.uint8)
    return ImageDataset(
        "toy", images, labels, ("a", "b", "c", "d"), fingerprint_tensors(images, labels)
    )


def _config(seed: int = 0, arch: str = "resnet") -> TeacherTrainConfig:
    # 16 steps: enough for the BatchNorm running statistics to settle
    return TeacherTrainConfig(
        arch=arch, epochs=2, seed=seed, batch_size=16, max_lr=3e-3
    )


def test_trains_once_then_loads(toy: ImageDataset, tmp_path: Path) -> None:
    first = train_teacher(toy, config=_config(), cache_dir=tmp_path)
    assert not first.from_cache and first.path.is_file()
    assert first.path.with_suffix(".json").is_file()
    assert evaluate_teacher(first.model, toy) > 0.9  # chance is 0.25
    mtime = first.path.stat().st_mtime_ns
    second = train_teacher(toy, config=_config(), cache_dir=tmp_path)
    assert second.from_cache and second.key == first.key
    assert second.path.stat().st_mtime_ns == mtime  # not rewritten
    assert second.train_seconds == pytest.approx(first.train_seconds, abs=1e-3)
    x = toy.images[:16]
    assert torch.equal(predict_logits(first.model, x), predict_logits(second.model, x))
    assert not second.model.training


def test_damaged_cache_entry_is_retrained(toy: ImageDataset, tmp_path: Path) -> None:
    small = toy.subset(range(32))
    first = train_teacher(small, config=_config(), cache_dir=tmp_path)
    first.path.write_bytes(b"garbage")
    again = train_teacher(small, config=_config(), cache_dir=tmp_path)
    assert not again.from_cache and again.path == first.path
    assert train_teacher(small, config=_config(), cache_dir=tmp_path).from_cache


def test_cache_key_covers_data_and_settings(toy: ImageDataset) -> None:
    key = _config().key(toy.fingerprint)
    assert key == _config().key(toy.fingerprint)
    assert key != _config(seed=1).key(toy.fingerprint)
    assert key != _config().key(toy.subset(range(10)).fingerprint)
    assert key != _config(arch="convnet").key(toy.fingerprint)
    no_crop = _config().model_copy(update={"crop_scale": None})
    assert key != no_crop.key(toy.fingerprint)


def test_cache_dir_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LABELZIP_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "teachers"
    monkeypatch.delenv("LABELZIP_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "labelzip" / "teachers"


def test_training_is_seeded(toy: ImageDataset, tmp_path: Path) -> None:
    small = toy.subset(range(32))  # the ConvNet here, the ResNet above
    a = train_teacher(small, config=_config(arch="convnet"), cache_dir=tmp_path / "a")
    b = train_teacher(small, config=_config(arch="convnet"), cache_dir=tmp_path / "b")
    x = small.images[:8]
    torch.testing.assert_close(predict_logits(a.model, x), predict_logits(b.model, x))
    plain = _config().model_copy(update={"crop_scale": None})
    c = train_teacher(small, config=plain, cache_dir=tmp_path / "plain")
    assert c.key != a.key and not c.from_cache
    state = torch.random.get_rng_state()
    train_teacher(small, config=_config(seed=3), cache_dir=tmp_path / "c")
    assert a.model.training is False and a.path.name.startswith("convnet-")
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


def test_same_weights_whatever_the_callers_thread_count(
    toy: ImageDataset, tmp_path: Path
) -> None:
    """The cache key cannot see torch's thread count, so training pins its own."""
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            trained = train_teacher(
                toy, config=_config(arch="convnet"), cache_dir=tmp_path / str(threads)
            )
            assert torch.get_num_threads() == threads  # restored afterwards
            weights.append(trained.path.read_bytes())
    finally:
        torch.set_num_threads(before)
    assert weights[0] == weights[1]


@pytest.mark.parametrize("arch", ["convnet", "resnet"])
def test_rgb_data_of_another_size(
    arch: str, tmp_path: Path, image_folder: Callable[..., Path]
) -> None:
    """A user's RGB folder at 20 px: the teacher takes 3 channels, learns the set and
    is cached by that data's fingerprint (another entry than the grayscale data's)."""
    rgb = load_image_folder(
        image_folder(tmp_path / "rgb", channels=3, per_class=8, num_classes=4, size=20)
    )
    gray = load_image_folder(
        image_folder(tmp_path / "gray", channels=1, per_class=8, num_classes=4, size=20)
    )
    config = _config(arch=arch).model_copy(update={"epochs": 8, "batch_size": 8})
    first = train_teacher(rgb, config=config, cache_dir=tmp_path / "cache")
    assert first.model.in_channels == 3 and first.key == config.key(rgb.fingerprint)
    assert first.path == teacher_cache_path(config, rgb.fingerprint, tmp_path / "cache")
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert record["image_shape"] == [3, 20, 20]
    assert record["dataset_fingerprint"] == rgb.fingerprint
    assert evaluate_teacher(first.model, rgb) > 0.9  # chance is 0.25
    assert train_teacher(rgb, config=config, cache_dir=tmp_path / "cache").from_cache
    other = train_teacher(gray, config=config, cache_dir=tmp_path / "cache")
    assert not other.from_cache and other.key != first.key
    assert other.model.in_channels == 1


def test_refuses_images_of_several_sizes(toy: ImageDataset, tmp_path: Path) -> None:
    mixed = ImageDataset(
        "mixed", [toy.images[0], toy.images[1][:, :20]], toy.labels[:2],
        toy.class_names, "f",
    )  # fmt: skip
    with pytest.raises(InputError, match="equal-size images only; resize them"):
        train_teacher(mixed, config=_config(), cache_dir=tmp_path)
