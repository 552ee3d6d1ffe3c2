"""A tiny SRe2L-format store written the way SRe2L's relabel script writes one.

Follows VILA-Lab/SRe2L ``relabel/generate_soft_label.py`` and
``relabel/utils_fkd.py`` (read, not copied): a ``RandomSampler`` seeded once
with ``--fkd-seed`` and advanced epoch by epoch; per view a RandomResizedCrop
box drawn in pixels and stored as ``(i/H, j/W, h/H, w/W)`` float32, the crop
resized on a PIL image, an optional horizontal flip; ToTensor and Normalize;
then the batch's CutMix or Mixup; the teacher's fp16 logits of the mixed batch;
``torch.save([coords, flip, mix_index, mix_lam, mix_bbox, output])`` to
``epoch_{e}/batch_{b}.tar``. The rendered batches are returned too, so tests can
compare a replay with exactly what the teacher saw.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)


def normalise(view: torch.Tensor) -> torch.Tensor:
    """ToTensor (uint8 -> [0, 1]) then Normalize with the ImageNet statistics."""
    return (view.float() / 255.0 - MEAN) / STD


def _crop_params(rng: np.random.Generator, height: int, width: int) -> tuple[int, ...]:
    """A RandomResizedCrop box in pixels (scale 0.08-1, ratio 3/4-4/3, 10 tries)."""
    for _ in range(10):
        area = height * width * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = int(round(math.sqrt(area * aspect)))
        h = int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    return 0, 0, height, width


def _view(
    image: torch.Tensor, box: tuple[int, ...], flip: bool, size: int
) -> torch.Tensor:
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    i, j, h, w = box
    out = pil.crop((j, i, j + w, i + h)).resize((size, size), Image.BILINEAR)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return normalise(torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1))


def _rand_bbox(rng: np.random.Generator, size: int, lam: float) -> list[np.int64]:
    cut = math.sqrt(1.0 - lam)
    cut_w = cut_h = int(size * cut)
    cx, cy = int(rng.integers(size)), int(rng.integers(size))
    return [
        np.clip(cx - cut_w // 2, 0, size),
        np.clip(cy - cut_h // 2, 0, size),
        np.clip(cx + cut_w // 2, 0, size),
        np.clip(cy + cut_h // 2, 0, size),
    ]


def write_sre2l_store(
    root: Path,
    images: list[torch.Tensor],
    teacher: torch.nn.Module,
    *,
    epochs: int,
    batch_size: int,
    mix_type: str | None,
    size: int = 16,
    fkd_seed: int = 42,
) -> dict[tuple[int, int], torch.Tensor]:
    """Write the store; returns {(epoch, batch): the mixed batch the teacher saw}."""
    rng = np.random.default_rng(0)
    generator = torch.Generator()
    generator.manual_seed(fkd_seed)
    sampler = torch.utils.data.RandomSampler(range(len(images)), generator=generator)
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    seen: dict[tuple[int, int], torch.Tensor] = {}
    for epoch in range(epochs):
        folder = root / f"epoch_{epoch}"
        folder.mkdir(parents=True)
        for b, index in enumerate(batches):
            coords, flips, views = [], [], []
            for i in index:
                height, width = images[i].shape[-2:]
                box = _crop_params(rng, height, width)
                flip = bool(rng.random() < 0.5)
                views.append(_view(images[i], box, flip, size))
                coords.append(
                    torch.FloatTensor(
                        [
                            box[0] / height,
                            box[1] / width,
                            box[2] / height,
                            box[3] / width,
                        ]
                    )
                )
                flips.append(flip)
            batch = torch.stack(views)
            mix_index = mix_lam = mix_bbox = None
            if mix_type is not None:
                mix_index = torch.from_numpy(rng.permutation(len(index))).long()
                mix_lam = float(rng.beta(1.0, 1.0))
            if mix_type == "cutmix":
                mix_bbox = _rand_bbox(rng, size, mix_lam)
                x1, y1, x2, y2 = mix_bbox
                batch[:, :, x1:x2, y1:y2] = batch[mix_index, :, x1:x2, y1:y2]
            elif mix_type == "mixup":
                batch = mix_lam * batch + (1 - mix_lam) * batch[mix_index]
            with torch.no_grad():
                output = teacher(batch).half()
            content = [
                torch.stack(coords),
                torch.tensor(flips),
                mix_index,
                mix_lam,
                mix_bbox,
                output,
            ]
            torch.save(content, folder / f"batch_{b}.tar")
            seen[(epoch, b)] = batch
    return seen
