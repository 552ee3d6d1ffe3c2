from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelzip.augment import ViewConfig, make_views
from labelzip.data import ImageDataset
from labelzip.distill import distill, patch_boxes, stitch
from labelzip.errors import InputError
from labelzip.teachers import predict_logits


def test_patch_boxes_tile_the_image() -> None:
    assert patch_boxes((28, 28), 2) == [
        (0, 0, 14, 14),
        (0, 14, 14, 14),
        (14, 0, 14, 14),
        (14, 14, 14, 14),
    ]
    boxes = patch_boxes((28, 28), 3)  # not divisible: tiles of 9 or 10 pixels
    cover = torch.zeros(28, 28, dtype=torch.int64)
    for top, left, h, w in boxes:
        cover[top : top + h, left : left + w] += 1
    assert bool((cover == 1).all()) and {h for _, _, h, _ in boxes} == {9, 10}
    assert patch_boxes((5, 7), 1) == [(0, 0, 5, 7)]


def test_stitch_places_each_crop_in_its_tile() -> None:
    crops = torch.arange(8, dtype=torch.float32).reshape(8, 1, 1, 1).expand(8, 1, 4, 4)
    out = stitch(crops.contiguous(), 2)  # 2 images of 4 tiles each
    assert out.shape == (2, 1, 4, 4)
    assert out[0, 0].tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 3, 3],
        [2, 2, 3, 3],
    ]
    assert out[1, 0, 3, 3] == 7
    assert torch.equal(stitch(crops.contiguous(), 1), crops)
    with pytest.raises(InputError, match="do not fill images of 4 tiles"):
        stitch(crops[:6].contiguous(), 2)


def test_rded_set(fmnist_slice: ImageDataset, small_teacher: nn.Module) -> None:
    seen: list[tuple[int, int]] = []
    kwargs = dict(
        ipc=2, seed=0, factor=2, candidates=12, num_crops=3, classes=[2, 6, 8]
    )
    ds = distill(
        "rded",
        fmnist_slice,
        small_teacher,
        progress=lambda d, t: seen.append((d, t)),
        **kwargs,
    )  # type: ignore[arg-type]
    assert ds.method == "rded" and ds.ipc == 2
    assert ds.images.shape == (6, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [2, 2, 6, 6, 8, 8]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert ds.config["factor"] == 2 and ds.config["patch_boxes"][3] == [14, 14, 14, 14]
    again = distill("rded", fmnist_slice, small_teacher, **kwargs)  # type: ignore[arg-type]
    assert again.fingerprint == ds.fingerprint
    other = distill("rded", fmnist_slice, small_teacher, **{**kwargs, "seed": 1})  # type: ignore[arg-type]
    assert other.fingerprint != ds.fingerprint


def test_rded_keeps_the_more_realistic_crops(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    # factor 1: each image is one selected crop; it must score at least as well as
    # the average random crop of the same class.
    ds = distill(
        "rded",
        fmnist_slice,
        small_teacher,
        ipc=4,
        seed=0,
        factor=1,
        candidates=40,
        num_crops=4,
        classes=[6],
    )
    chosen = -F.cross_entropy(
        predict_logits(small_teacher, ds.images), ds.labels, reduction="none"
    )
    pool = fmnist_slice.images[fmnist_slice.labels == 6]
    views, _ = make_views(
        pool,
        torch.arange(len(pool)),
        seed=9,
        epoch=0,
        config=ViewConfig(output_size=28, scale=(0.5, 1.0), flip_prob=0.0),
    )
    random_crops = -F.cross_entropy(
        predict_logits(small_teacher, views),
        torch.full((len(pool),), 6),
        reduction="none",
    )
    assert float(chosen.mean()) > float(random_crops.mean())
    assert float(chosen.min()) >= float(random_crops.median())


def test_rded_ipc_limit_counts_the_patches(
    fmnist_slice: ImageDataset, small_teacher: nn.Module
) -> None:
    with pytest.raises(
        InputError,
        match=r"ipc=11 with factor=2 needs 44 real images per class, .* has only 40; use --ipc 10 or less",
    ):
        distill("rded", fmnist_slice, small_teacher, ipc=11, factor=2)
    with pytest.raises(InputError, match="has only 40 images; use --ipc 40"):
        distill("rded", fmnist_slice, small_teacher, ipc=41, factor=1)


def test_rded_resizes_to_image_size(fmnist_slice: ImageDataset) -> None:
    resnet_like = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    ).eval()
    ds = distill(
        "rded",
        fmnist_slice,
        resnet_like,
        ipc=1,
        candidates=4,
        num_crops=1,
        image_size=20,
        classes=[0],
    )
    assert ds.images.shape == (1, 1, 20, 20) and ds.config["image_size"] == [20, 20]
    assert ds.config["factor"] == 1  # RDED's low-resolution setting below 64 px
    big = distill(
        "rded",
        fmnist_slice,
        resnet_like,
        ipc=1,
        candidates=4,
        num_crops=1,
        image_size=64,
        classes=[0],
    )
    assert big.config["factor"] == 2 and big.images.shape == (1, 1, 64, 64)
