from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labelzip.data import ImageDataset
from labelzip.distill import (
    CDAConfig,
    RecoverConfig,
    class_bn_statistics,
    distill,
    recover_batch,
)
from labelzip.distill.bnstats import running_statistics
from labelzip.distill.recover import _crop_lower_bound
from labelzip.distill.recover_config import (
    SMALL_IMAGE_BN_WEIGHT,
    SMALL_IMAGE_CROP_SCALE,
    resolve_image_defaults,
)
from labelzip.errors import ConfigError, InputError
from labelzip.teachers import predict_logits


def _target_prob(
    teacher: nn.Module, images: torch.Tensor, targets: torch.Tensor
) -> float:
    probs = predict_logits(teacher, images).softmax(-1)
    return float(probs.gather(1, targets[:, None]).mean())


def test_loss_falls_and_images_move_toward_their_class(
    small_teacher: nn.Module,
) -> None:
    targets = torch.arange(10)
    config = RecoverConfig(steps=40)
    start = recover_batch(
        small_teacher,
        targets,
        (1, 28, 28),
        config,
        torch.Generator().manual_seed(0),
        steps=1,
    )
    result = recover_batch(
        small_teacher,
        targets,
        (1, 28, 28),
        config,
        torch.Generator().manual_seed(0),
        steps=40,
    )
    assert len(result.loss) == 40 and result.images.shape == (10, 1, 28, 28)
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 255
    head, tail = sum(result.loss[:5]) / 5, sum(result.loss[-5:]) / 5
    assert tail < 0.7 * head, (head, tail)
    assert sum(result.bn[-5:]) < sum(result.bn[:5])  # BN statistics get matched
    before = _target_prob(small_teacher, start.images, targets)
    after = _target_prob(small_teacher, result.images, targets)
    assert after > before + 0.2, (before, after)


def test_sre2l_set_shapes_determinism_and_teacher_untouched(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    state = copy.deepcopy(small_teacher.state_dict())
    grads = [
        None if p.grad is None else p.grad.clone() for p in small_teacher.parameters()
    ]
    small_teacher.train()  # the caller's mode must come back
    seen: list[tuple[int, int]] = []
    kwargs = dict(ipc=2, seed=3, steps=6, batch_size=8, classes=[1, 4, 9])
    a = distill(
        "sre2l",
        fmnist_slice,
        small_teacher,
        progress=lambda d, t: seen.append((d, t)),
        **kwargs,
    )  # type: ignore[arg-type]
    assert small_teacher.training
    small_teacher.eval()
    for name, value in small_teacher.state_dict().items():
        assert torch.equal(value, state[name]), name
    for before, param in zip(grads, small_teacher.parameters(), strict=True):
        assert (before is None and param.grad is None) or torch.equal(
            before, param.grad
        )
    assert a.images.shape == (6, 1, 28, 28) and a.images.dtype == torch.uint8
    assert a.labels.tolist() == [1, 1, 4, 4, 9, 9] and a.ipc == 2
    assert a.class_names == fmnist_slice.class_names and a.method == "sre2l"
    assert a.source_fingerprint == fmnist_slice.fingerprint
    assert a.teacher_id is not None and a.teacher_id.startswith("GrayConvNet:")
    assert a.config["steps"] == 6 and a.config["jitter"] == 4  # 28 // 7
    assert a.config["bn_statistics"] == "running"
    assert seen[-1] == (12, 12) and len(seen) == 12  # 2 batches (IPC index 0, 1)
    b = distill("sre2l", fmnist_slice, small_teacher, **kwargs)  # type: ignore[arg-type]
    assert torch.equal(a.images, b.images) and a.fingerprint == b.fingerprint
    c = distill("sre2l", fmnist_slice, small_teacher, **{**kwargs, "seed": 4})  # type: ignore[arg-type]
    assert not torch.equal(a.images, c.images)


def test_cda_anneals_the_crop_scale_lower_bound() -> None:
    cda = CDAConfig(crop_scale=(0.08, 1.0), curriculum_start=1.0)
    bounds = [_crop_lower_bound(cda, s, 100) for s in range(100)]
    assert bounds[0] == pytest.approx(1.0)
    assert bounds == sorted(bounds, reverse=True)
    assert bounds[50] == pytest.approx(0.54)  # cosine midpoint
    assert bounds[-1] == pytest.approx(0.08, abs=1e-3)
    half = CDAConfig(curriculum_milestone=0.5, curriculum="linear")
    assert _crop_lower_bound(half, 25, 100) == pytest.approx(0.54)
    assert _crop_lower_bound(half, 60, 100) == pytest.approx(0.08)
    sre2l = RecoverConfig()
    assert {_crop_lower_bound(sre2l, s, 100) for s in (0, 50, 99)} == {0.08}


def test_unset_crop_scale_and_bn_weight_resolve_by_image_side(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    small = resolve_image_defaults(RecoverConfig(), 28)
    assert small.crop_scale == SMALL_IMAGE_CROP_SCALE == (0.5, 1.0)
    assert small.bn_weight == SMALL_IMAGE_BN_WEIGHT == 0.3
    large = resolve_image_defaults(RecoverConfig(), 64)  # SRe2L from 64 px on
    assert large.crop_scale == (0.08, 1.0) and large.bn_weight == 0.01
    mine = resolve_image_defaults(RecoverConfig(crop_scale=(0.2, 0.9)), 28)
    assert mine.crop_scale == (0.2, 0.9) and mine.bn_weight == 0.3
    mine = resolve_image_defaults(RecoverConfig(bn_weight=0.01), 28)
    assert mine.crop_scale == (0.5, 1.0) and mine.bn_weight == 0.01
    cda = resolve_image_defaults(CDAConfig(curriculum="linear"), 28)
    assert isinstance(cda, CDAConfig) and cda.curriculum == "linear"
    # the set records the values it was recovered with
    ds = distill("sre2l", fmnist_slice, small_teacher, ipc=1, steps=1, classes=[0])
    assert ds.config["crop_scale"] == [0.5, 1.0] and ds.config["bn_weight"] == 0.3
    ds = distill(
        "lpld", fmnist_slice, small_teacher, ipc=1, steps=1, classes=[0],
        crop_scale=(0.08, 1.0), bn_weight=0.01,
    )  # fmt: skip
    assert ds.config["crop_scale"] == [0.08, 1.0] and ds.config["bn_weight"] == 0.01


def test_cda_and_lpld_sets(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    for method in ("cda", "lpld"):
        ds = distill(
            method, fmnist_slice, small_teacher, ipc=2, seed=0, steps=4, classes=[0, 5]
        )
        assert ds.method == method and ds.labels.tolist() == [0, 0, 5, 5]
        again = distill(
            method, fmnist_slice, small_teacher, ipc=2, seed=0, steps=4, classes=[0, 5]
        )
        assert again.fingerprint == ds.fingerprint
    assert ds.config["bn_statistics"] == "class-wise"


def test_lpld_class_statistics_differ_by_class(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    stats = class_bn_statistics(
        small_teacher, fmnist_slice.images, fmnist_slice.labels, [1, 8],
        images_per_class=16, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    running = running_statistics(
        [m for m in small_teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    )
    assert len(stats[1]) == len(stats[8]) == len(running) >= 3
    for (m1, v1), (m8, _), (rm, _) in zip(stats[1], stats[8], running, strict=True):
        assert m1.shape == rm.shape and bool((v1 >= 0).all())
        assert not torch.allclose(m1, m8, atol=1e-3)
    # first layer sees the normalised pixels: its mean is the class's mean pixel
    pixels = fmnist_slice.images[fmnist_slice.labels == 1].float() / 255.0
    assert float(stats[1][0][0][0]) == pytest.approx(
        float((pixels.mean() - 0.2860) / 0.3530), abs=0.3
    )


def test_recovery_needs_batchnorm_and_a_teacher(fmnist_slice: ImageDataset) -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(InputError, match="has no BatchNorm layers"):
        distill("sre2l", fmnist_slice, plain, ipc=1, steps=1)
    with pytest.raises(ConfigError, match="needs a teacher"):
        distill("sre2l", fmnist_slice, None, ipc=1)
    with pytest.raises(ConfigError, match="crop_scale must satisfy"):
        distill("sre2l", fmnist_slice, plain, ipc=1, crop_scale=(0.5, 0.2))
    with pytest.raises(
        ConfigError, match="steps: Input should be greater than or equal to 1"
    ):
        distill("cda", fmnist_slice, plain, ipc=1, steps=0)


def test_teacher_with_other_class_count(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    three = ImageDataset(
        "three", fmnist_slice.images[:3], torch.tensor([0, 1, 2]), ("a", "b", "c"), "x"
    )
    with pytest.raises(InputError, match="the teacher has 10 classes but three has 3"):
        distill("sre2l", three, small_teacher, ipc=1, steps=1)


def test_batching_mixes_classes_for_sre2l_and_not_for_lpld() -> None:
    from labelzip.distill.recover import _plan

    sre2l = _plan("sre2l", list(range(1000)), 2, 100)  # SRe2L's ImageNet batching
    assert len(sre2l) == 20 and all(len(b) == 100 for b in sre2l)
    assert all(
        len({c for _, c in b}) == 100 and len({k for k, _ in b}) == 1 for b in sre2l
    )
    assert sre2l[10][0] == (1, 0)
    small = _plan(
        "cda", [0, 3, 5], 4, 100
    )  # few classes: small batches, one per IPC index
    assert [len(b) for b in small] == [3, 3, 3, 3]
    lpld = _plan("lpld", [0, 3], 5, 2)
    assert [[c for _, c in b] for b in lpld] == [
        [0, 0],
        [0, 0],
        [0],
        [3, 3],
        [3, 3],
        [3],
    ]
    assert sorted(p for b in lpld for p in b) == sorted(
        (k, c) for c in (0, 3) for k in range(5)
    )


def test_teacher_id_matches_the_relabel_pipelines_model_id(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    from labelzip.pipelines.imageset import model_id

    ds = distill("sre2l", fmnist_slice, small_teacher, ipc=1, steps=1, classes=[0])
    assert ds.teacher_id == model_id(small_teacher)
    named = distill(
        "sre2l",
        fmnist_slice,
        small_teacher,
        ipc=1,
        steps=1,
        classes=[0],
        teacher_id="convnet:abc",
    )
    assert named.teacher_id == "convnet:abc"
