"""Small label stores written the way each framework's relabel script writes them.

Each writer follows its framework's save loop (repository @ commit in
docs/interop.md): the same list order, element types and dtypes, folder and
file names, JSON side files; the teacher is replaced by seeded random logits
and the images by their indices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "write_edc",
    "write_fkd",
    "write_gvbsm",
    "write_lpld",
    "write_lpqld",
    "write_sre2l",
]


def _batches(num_images: int, batch_size: int, seed: int, epochs: int, drop_last: bool):
    """Per epoch, the batches of image indices of a seeded RandomSampler, as the
    relabel DataLoader draws them (one generator across epochs)."""
    gen = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(range(num_images), generator=gen)
    batcher = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
    return [[list(b) for b in batcher] for _ in range(epochs)]


def _crop_and_flip(
    count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Collated RandomResizedCropWithCoords coords (FloatTensor(4) each) and
    RandomHorizontalFlipWithRes statuses (Python bools)."""
    coords = torch.stack(
        [torch.FloatTensor(list(rng.uniform(0, 1, 4))) for _ in range(count)]
    )
    flips = torch.utils.data.default_collate(
        [bool(rng.random() < 0.5) for _ in range(count)]
    )
    return coords, flips


def _mix(
    count: int, mix_type: str | None, rng: np.random.Generator
) -> tuple[Any, Any, Any]:
    """mix_aug of utils_fkd: (rand_index, lam, bbox) as the save loop stores them."""
    if mix_type is None:
        return None, None, None
    index = torch.randperm(count)
    if mix_type == "mixup":
        return index, float(rng.beta(0.8, 0.8)), None
    lam = float(rng.beta(1.0, 1.0))
    size = 224
    cut = int(size * np.sqrt(1.0 - lam))
    cx, cy = int(rng.integers(size)), int(rng.integers(size))
    box = [
        np.clip(cx - cut // 2, 0, size),
        np.clip(cy - cut // 2, 0, size),
        np.clip(cx + cut // 2, 0, size),
        np.clip(cy + cut // 2, 0, size),
    ]
    return index, lam, box


def _logits(count: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(count, num_classes, generator=gen) * 3


def write_sre2l(
    root: Path,
    *,
    num_images: int = 10,
    batch_size: int = 4,
    epochs: int = 3,
    num_classes: int = 7,
    seed: int = 42,
    mix_type: str | None = "cutmix",
    fp16: bool = True,
    extra: str | None = None,
) -> list[list[list[int]]]:
    """SRe2L relabel/generate_soft_label.py (``extra``: ``index`` for G-VBSM,
    ``index+status`` for EDC). Returns the image indices of every batch."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(num_images, batch_size, seed, epochs, False)
    for e, epoch in enumerate(batches):
        folder = root / f"epoch_{e}"
        folder.mkdir(parents=True)
        for b, images in enumerate(epoch):
            coords, flip = _crop_and_flip(len(images), rng)
            mix_index, lam, box = _mix(len(images), mix_type, rng)
            output = _logits(len(images), num_classes, gen)
            if fp16:
                output = output.half()
            config: list[Any] = [coords, flip, mix_index, lam, box, output.cpu()]
            if extra is not None:
                config.append(torch.tensor(images))
            if extra == "index+status":
                config.append(torch.zeros(len(images), 2, 2))
            torch.save(config, folder / f"batch_{b}.tar")
    return batches


def write_gvbsm(root: Path, **kwargs: Any) -> list[list[list[int]]]:
    """G-VBSM generate_soft_label_with_db.py: the SRe2L list + ``index``."""
    return write_sre2l(root, extra="index", **kwargs)


def write_edc(root: Path, **kwargs: Any) -> list[list[list[int]]]:
    """EDC generate_soft_label_with_db.py: + ``index`` + ``indices_status``."""
    return write_sre2l(root, extra="index+status", **kwargs)


def write_lpld(
    root: Path,
    *,
    num_images: int = 10,
    batch_size: int = 4,
    epochs: int = 4,
    prune_ratio: float = 0.5,
    num_classes: int = 7,
    seed: int = 42,
    mix_type: str | None = "cutmix",
    cutout: bool = False,
) -> None:
    """LPLD generate_soft_label_pruning.py: drop_last, the first
    ``int(epochs * batches * (1 - prune_ratio))`` batches, sampler_indices_epoch.json."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = num_images // batch_size
    total = int(epochs * per_epoch * (1 - prune_ratio))
    folders = total // per_epoch + 1
    batches = _batches(num_images, batch_size, seed, folders, True)
    indices: dict[str, list[int]] = {}
    counter = 0
    for e in range(folders):
        folder = root / f"epoch_{e}"
        folder.mkdir(parents=True)
        for b, images in enumerate(batches[e]):
            coords, flip = _crop_and_flip(len(images), rng)
            if cutout:
                flip = torch.stack(
                    [
                        torch.FloatTensor(list(rng.uniform(0, 1, 4)) + [1.0, 2.0, 3.0])
                        for _ in images
                    ]
                )
            mix_index, lam, box = _mix(len(images), mix_type, rng)
            output = _logits(len(images), num_classes, gen).half()
            torch.save(
                [coords, flip, mix_index, lam, box, output.cpu()],
                folder / f"batch_{b}.tar",
            )
            indices.setdefault(str(e), [])
            indices[str(e)] += torch.tensor(images).tolist()
            counter += 1
            if counter == total:
                break
    with open(root / "sampler_indices_epoch.json", "w") as f:
        json.dump(indices, f)


def write_lpqld(
    root: Path,
    *,
    num_images: int = 10,
    batch_size: int = 4,
    epochs: int = 4,
    prune_ratio: float = 0.5,
    num_classes: int = 9,
    k: int = 3,
    seed: int = 42,
    rand_aug: bool = False,
    quantize: bool = True,
) -> None:
    """LPQLD generate_soft_label_pruning_batch.py: flat batch_{counter}.tar,
    fp16 coords, uint8 mix index and boxes, top-k fp16 values + int16 ids."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = num_images // batch_size
    total = int(epochs * per_epoch * (1 - prune_ratio))
    batches = _batches(num_images, batch_size, seed, total // per_epoch + 1, True)
    root.mkdir(parents=True, exist_ok=True)
    indices: dict[str, list[int]] = {}
    counter = 0
    for epoch in batches:
        for images in epoch:
            coords, flip = _crop_and_flip(len(images), rng)
            mix_index, lam, box = _mix(len(images), "cutmix", rng)
            output = _logits(len(images), num_classes, gen)
            config: list[Any] = [coords.half(), flip]
            if rand_aug:  # two ops, each (op index, decision, magnitude) collated
                config.append(
                    [
                        [
                            torch.tensor(rng.integers(0, 14, len(images))),
                            torch.tensor(rng.random(len(images)) < 0.5),
                            torch.tensor(rng.random(len(images))).half(),
                        ]
                        for _ in range(2)
                    ]
                )
            config += [
                mix_index.to(torch.uint8),
                lam,
                [torch.tensor(v, dtype=torch.uint8) for v in box],
            ]
            if quantize:
                top = torch.topk(output, k, dim=1)
                config += [top.values.half().cpu(), top.indices.short().cpu()]
            else:
                config.append(output.half().cpu())
            torch.save(config, root / f"batch_{counter}.tar")
            indices[str(counter)] = torch.tensor(images).tolist()
            counter += 1
            if counter == total:
                break
        if counter == total:
            break
    with open(root / "sampler_indices_batch.json", "w") as f:
        json.dump(indices, f)


def write_fkd(
    root: Path,
    *,
    classes: int = 3,
    images_per_class: int = 2,
    num_crops: int = 5,
    num_classes: int = 12,
    label_type: str = "marginal_smoothing_k5",
    temp: float = 1.0,
    fp16: bool = False,
    seed: int = 0,
) -> None:
    """FKD FKD_SLG/generate_soft_label.py: one .tar per image under train/<wnid>/,
    [coords ndarray, flip ndarray, quantised label ndarray]."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(images_per_class):
            coords, flip = _crop_and_flip(num_crops, rng)
            probs = torch.softmax(_logits(num_crops, num_classes, gen) / temp, dim=1)
            rows = []
            for p in probs:
                if label_type == "hard":
                    rows.append(torch.argmax(p))
                elif label_type == "smoothing":
                    top = torch.argmax(p)
                    rows.append(torch.stack([top, p[top]], dim=0))
                else:
                    k = 10 if label_type.endswith("k10") else 5
                    order = torch.argsort(p, descending=True)
                    rows.append(torch.stack([order[:k], p[order[:k]]], dim=0))
            label = torch.stack(rows, dim=0).numpy()
            if fp16:
                state = [np.float16(coords.numpy()), flip.numpy(), np.float16(label)]
            else:
                state = [coords.numpy(), flip.numpy(), label]
            torch.save(state, folder / f"img_{i}.tar")
