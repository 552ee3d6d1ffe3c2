"""Student training: the KD loss, end to end from each kind of archive, DDP on gloo."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.augment import ViewConfig
from labelzip.data.base import ImageDataset
from labelzip.distill import DistilledSet
from labelzip.errors import CodecMismatchError, ConfigError, InputError
from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel
from labelzip.pipelines.replay import ReplayDataset
from labelzip.pipelines.students import build_student
from labelzip.pipelines.train_student import (
    StudentConfig,
    evaluate_student,
    kd_loss,
    train_student,
)

VIEW = ViewConfig(output_size=28, scale=(0.5, 1.0), mix="cutmix", mix_prob=0.5)
STUDENT = StudentConfig(width=8, depth=2, batch_size=8, lr=5e-3, seed=0)


def test_kd_loss_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for temp in (1.0, 4.0):
        p = torch.softmax(t / temp, 1)
        ref = (p * (p.log() - torch.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
        torch.testing.assert_close(kd_loss(s, t, temp), ref)
    assert float(kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    # -inf labels (top-k MR) carry no mass and give finite loss and gradients.
    masked = t.clone()
    masked[:, 3:] = float("-inf")
    s.requires_grad_(True)
    loss = kd_loss(s, masked, 2.0)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and s.grad is not None
    assert bool(torch.isfinite(s.grad).all())


@pytest.fixture
def world(
    tmp_path: Path,
    set_factory: Callable[..., DistilledSet],
    dataset_factory: Callable[..., ImageDataset],
    teacher: nn.Module,
) -> tuple[DistilledSet, ImageDataset, dict[str, Path]]:
    """A 24-image set, a 200-image test set and dense / topk / pruned archives."""
    image_set = set_factory(6, seed=0)
    outs = {
        "dense": RelabelOutput(path=tmp_path / "dense.lz"),
        "topk": RelabelOutput(
            path=tmp_path / "topk.lz", codec="topk", options={"k": 2, "decoder": "mr"}
        ),
        "prune": RelabelOutput(path=tmp_path / "prune.lz", keep_fraction=0.34),
    }
    config = RelabelConfig(epochs=6, view=VIEW, batch_size=64)
    relabel(image_set, teacher, list(outs.values()), config)
    paths = {name: out.path for name, out in outs.items()}
    return image_set, dataset_factory(200, seed=5), paths


@pytest.mark.parametrize("name", ["dense", "topk", "prune"])
def test_student_learns_from_each_archive(
    world: tuple[DistilledSet, ImageDataset, dict[str, Path]], name: str
) -> None:
    image_set, test_set, paths = world
    replay = ReplayDataset(image_set, paths[name])
    config = STUDENT.model_copy(update={"epochs": 12, "eval_every": 6})
    logs = []
    result = train_student(replay, config, test_set=test_set, on_epoch=logs.append)
    losses = [log.loss for log in result.history]
    assert len(losses) == 12 and logs == result.history
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])  # KD loss decreases
    accs = [log.test_accuracy for log in result.history]
    assert accs[5] is not None and accs[11] == result.accuracy and accs[0] is None
    assert result.accuracy is not None and result.accuracy > 0.5  # 4 classes
    assert 0 < result.decode_share < 1
    assert all(log.steps == 3 for log in result.history)  # 24 images / 8


def test_training_is_deterministic_and_uses_the_ce_mix(
    world: tuple[DistilledSet, ImageDataset, dict[str, Path]],
) -> None:
    image_set, _, paths = world
    config = STUDENT.model_copy(update={"epochs": 2, "ce_weight": 0.5})
    runs = [
        train_student(ReplayDataset(image_set, paths["dense"]), config)
        for _ in range(2)
    ]
    for a, b in zip(
        runs[0].model.parameters(), runs[1].model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    pure = train_student(
        ReplayDataset(image_set, paths["dense"]),
        config.model_copy(update={"ce_weight": 0.0}),
    )
    assert pure.history[0].loss != runs[0].history[0].loss


def test_students_normalise_with_given_or_image_statistics() -> None:
    images = torch.full((4, 1, 28, 28), 100, dtype=torch.uint8)
    images[:2] = 50
    own = build_student("convnet", 4, images, (28, 28))
    assert float(own.norm.mean) == pytest.approx(75.0)
    given = build_student("resnet18", 4, images, (28, 28), mean=(72.9,), std=(90.0,))
    assert float(given.norm.mean) == pytest.approx(72.9)
    assert float(given.norm.std) == pytest.approx(90.0)
    assert given(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    with pytest.raises(ConfigError, match="one value per channel"):
        build_student("convnet", 4, images, (28, 28), mean=(1.0, 2.0), std=(1.0,))
    with pytest.raises(ConfigError, match="unknown student arch"):
        build_student("vit", 4, images, (28, 28))


def test_student_and_test_set_mismatches(
    world: tuple[DistilledSet, ImageDataset, dict[str, Path]],
    dataset_factory: Callable[..., ImageDataset],
) -> None:
    image_set, test_set, paths = world
    replay = ReplayDataset(image_set, paths["dense"])
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(784, 7))
    with pytest.raises(CodecMismatchError, match="student has 7 classes.*4-class"):
        train_student(replay, STUDENT, model=wrong)
    small = ImageDataset(
        name="small",
        images=test_set.images[:, :, :14, :14].contiguous(),
        labels=test_set.labels,
        class_names=test_set.class_names,
        fingerprint="x",
    )
    with pytest.raises(InputError, match=r"test images have shape \(1, 14, 14\)"):
        train_student(replay, STUDENT, test_set=small)


def test_evaluate_student_counts_correct_predictions(
    dataset_factory: Callable[..., ImageDataset],
) -> None:
    data = dataset_factory(10, seed=1)

    class Oracle(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(len(x), 4)
            out[torch.arange(len(x)), data.labels[: len(x)]] = 1.0
            out[:3] = torch.tensor([0.0, 0.0, 0.0, 5.0])  # 3 wrong unless class 3
            return out

    expected = 7 + int((data.labels[:3] == 3).sum())
    acc = evaluate_student(Oracle(), data, batch_size=10)
    assert acc == pytest.approx(expected / 10)
