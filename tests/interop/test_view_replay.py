"""Replayed FKD-mix views against SRe2L's recipe, computed independently with PIL and numpy.

SRe2L's ``RandomResizedCropWithCoords`` replays a stored view with torchvision on a
PIL image: ``i = coords[0] * H`` (and j, h, w), ``img.crop((j, i, j + w, i + h))``,
a bilinear resize, then ``hflip``; the batch is then mixed by ``mix_aug``. The
references below follow that with PIL and numpy directly (torchvision does not
install here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelzip.errors import InputError
from labelzip.interop.view_replay import (
    MixParams,
    apply_mix,
    coords_to_boxes,
    crop_with_fill,
    replay_view,
    seeded_batches,
)

Image = pytest.importorskip("PIL.Image")


def _random_coords(gen: torch.Generator, height: int, width: int) -> torch.Tensor:
    """A RandomResizedCrop box as SRe2L stores it: (i/H, j/W, h/H, w/W) float32."""
    h = int(torch.randint(1, height + 1, (1,), generator=gen))
    w = int(torch.randint(1, width + 1, (1,), generator=gen))
    i = int(torch.randint(0, height - h + 1, (1,), generator=gen))
    j = int(torch.randint(0, width - w + 1, (1,), generator=gen))
    return torch.tensor([i / height, j / width, h / height, w / width])


def _pil_view(
    image: torch.Tensor, coords: torch.Tensor, flip: bool, size: int
) -> torch.Tensor:
    """SRe2L's replay of one view, on a PIL image."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    height, width = image.shape[-2:]
    i = coords[0].item() * height
    j = coords[1].item() * width
    h = coords[2].item() * height
    w = coords[3].item() * width
    out = pil.crop((j, i, j + w, i + h)).resize((size, size), Image.BILINEAR)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def _pil_crop(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    height, width = image.shape[-2:]
    i, j = coords[0].item() * height, coords[1].item() * width
    h, w = coords[2].item() * height, coords[3].item() * width
    out = pil.crop((j, i, j + w, i + h))
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def _replay(image: torch.Tensor, coords: torch.Tensor, flip: bool, size: int):
    sizes = torch.tensor([list(image.shape[-2:])])
    box = coords_to_boxes(coords.reshape(1, 4), sizes)[0]
    return replay_view(image, box, flip, (size, size))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_crop_boxes_equal_pil_crops(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    for k in range(40):
        height, width = 17 + 7 * k, 90 - k
        image = torch.randint(
            0, 256, (3, height, width), dtype=torch.uint8, generator=gen
        )
        coords = _random_coords(gen, height, width).to(dtype)
        box = coords_to_boxes(coords.reshape(1, 4), torch.tensor([[height, width]]))[0]
        mine = crop_with_fill(image, *(int(v) for v in box))
        assert torch.equal(mine, _pil_crop(image, coords)), (k, coords)


def test_overhanging_box_is_zero_filled_like_pil() -> None:
    image = torch.randint(1, 256, (3, 20, 30), dtype=torch.uint8)
    coords = torch.tensor(
        [0.9, -0.1, 0.3, 0.5]
    )  # leaves the image at the bottom and left
    box = coords_to_boxes(coords.reshape(1, 4), torch.tensor([[20, 30]]))[0]
    mine = crop_with_fill(image, *(int(v) for v in box))
    assert torch.equal(mine, _pil_crop(image, coords))
    assert int((mine == 0).all(dim=0).sum()) > 0


@pytest.mark.parametrize("flip", [False, True])
def test_views_match_pil_resize_and_flip(flip: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    worst = 0
    for k in range(12):
        height, width = 40 + 11 * k, 120 - 5 * k
        image = torch.randint(
            0, 256, (3, height, width), dtype=torch.uint8, generator=gen
        )
        image = (
            image.float().cumsum(-1).remainder(256).to(torch.uint8)
        )  # some structure
        coords = _random_coords(gen, height, width)
        mine = _replay(image, coords, flip, 32)
        ref = _pil_view(image, coords, flip, 32)
        assert mine.dtype == torch.uint8 and mine.shape == ref.shape == (3, 32, 32)
        diff = (mine.int() - ref.int()).abs()
        worst = max(worst, int(diff.max()))
        # PIL resizes in two 8-bit passes (their order depends on the Pillow
        # version); one float pass then rounding differs by one level at most.
        assert float(diff.float().mean()) < 0.25
    assert worst <= 1


def _sre2l_cutmix(images: np.ndarray, rand_index: np.ndarray, bbox) -> np.ndarray:
    out = images.copy()
    bbx1, bby1, bbx2, bby2 = bbox
    out[:, :, bbx1:bbx2, bby1:bby2] = images[rand_index, :, bbx1:bbx2, bby1:bby2]
    return out


def test_cutmix_and_mixup_equal_sre2l_formulas() -> None:
    gen = torch.Generator().manual_seed(2)
    views = torch.randn(6, 3, 16, 12, generator=gen)
    rand_index = torch.randperm(6, generator=gen)
    bbox = [
        np.int64(3),
        np.int64(1),
        np.int64(11),
        np.int64(7),
    ]  # rows 3..11, cols 1..7
    cut = apply_mix(views, MixParams("cutmix", rand_index, 0.4, tuple(bbox)))
    ref = _sre2l_cutmix(views.numpy(), rand_index.numpy(), bbox)
    assert torch.equal(cut, torch.from_numpy(ref))
    lam = 0.3125
    mixed = apply_mix(views, MixParams("mixup", rand_index, lam, None))
    ref_mix = lam * views.numpy() + (1 - lam) * views.numpy()[rand_index.numpy()]
    assert torch.allclose(mixed, torch.from_numpy(ref_mix), atol=1e-6)
    assert torch.equal(apply_mix(views, MixParams()), views)


def test_uint8_mix_index_as_lpqld_stores_it() -> None:
    views = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 4, 4).contiguous()
    index = torch.tensor([1, 0, 3, 2], dtype=torch.uint8)
    bbox = tuple(torch.tensor(v, dtype=torch.uint8) for v in (0, 0, 2, 2))
    out = apply_mix(views, MixParams("cutmix", index, 0.75, bbox))  # type: ignore[arg-type]
    assert float(out[0, 0, 0, 0]) == 1.0 and float(out[0, 0, 3, 3]) == 0.0


def test_seeded_batches_follow_sre2l_sampler() -> None:
    # SRe2L's get_img2batch_idx_list: one generator seeded once, advanced by
    # iterating a BatchSampler over a RandomSampler epoch after epoch.
    data = torch.utils.data.TensorDataset(torch.arange(10))
    generator = torch.Generator()
    generator.manual_seed(42)
    sampler = torch.utils.data.RandomSampler(data, generator=generator)
    batch_sampler = torch.utils.data.BatchSampler(
        sampler, batch_size=4, drop_last=False
    )
    expected = [list(batch_sampler) for _ in range(3)]
    for epoch in range(3):
        assert seeded_batches(10, 4, 42, epoch) == expected[epoch]
    assert [len(b) for b in expected[0]] == [4, 4, 2]
    assert expected[0] != expected[1]


def test_bad_parameters_are_one_line_errors() -> None:
    sizes = torch.tensor([[10, 10]])
    with pytest.raises(InputError, match="empty box"):
        coords_to_boxes(torch.tensor([[0.5, 0.5, 0.01, 0.5]]), sizes)
    with pytest.raises(InputError, match="NaN"):
        coords_to_boxes(torch.tensor([[float("nan"), 0.0, 1.0, 1.0]]), sizes)
    with pytest.raises(InputError, match=r"\(B, 4\)"):
        coords_to_boxes(torch.zeros(2, 3), sizes)
    views = torch.zeros(3, 1, 4, 4)
    with pytest.raises(InputError, match="mix index must lie"):
        apply_mix(views, MixParams("mixup", torch.tensor([0, 1, 3]), 0.5))
    with pytest.raises(InputError, match="does not fit"):
        apply_mix(
            views, MixParams("cutmix", torch.tensor([0, 1, 2]), 0.5, (0, 0, 5, 2))
        )
    with pytest.raises(InputError, match="lambda"):
        apply_mix(views, MixParams("mixup", torch.tensor([0, 1, 2]), None))
    with pytest.raises(InputError, match="epoch"):
        seeded_batches(10, 4, 42, -1)
