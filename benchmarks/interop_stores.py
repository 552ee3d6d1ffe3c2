"""Write soft-label stores in the vision frameworks' own layouts, for the interop benchmarks.

Each writer follows its framework's relabel script (read, not copied; see
``../shared/docs/interop.md`` for the repository and commit of each): the same
directory layout, file names, list structure, element types and dtypes, and the
framework's usual settings. The labels are real teacher logits handed in by the
caller (the benchmarks tile the EfficientNet-Lite0 views of
``/work/benchdata/effnet_views.safetensors``); the augmentation parameters are
drawn the way the writers draw them (RandomResizedCrop boxes as fractions,
flip bits, a CutMix permutation, lambda ~ Beta(1, 1) and the box of their
``rand_bbox``). Stores are written one file at a time, so a multi-GB store needs
no more memory than one batch.

Formats and the settings used (framework: layout, settings):

- ``sre2l`` (= CDA): ``epoch_{e}/batch_{b}.tar``; batch 1024, CutMix, ``--use-fp16``.
- ``lpld``: as ``sre2l`` with batch 128, ``drop_last``, only the first
  ``int(epochs * batches * (1 - prune_ratio))`` batches (40x: prune 0.975 of 300
  epochs), plus ``sampler_indices_epoch.json``.
- ``lpqld``: flat ``batch_{counter}.tar`` + ``sampler_indices_batch.json``;
  batch 128, fp16 coords, uint8 mix index and box, top-100 fp16 logits with
  int16 class ids (``--label_quantization MR-100``, the 40x setting).
- ``gvbsm``: ``sre2l`` + the batch's dataset indices; batch 1024.
- ``edc``: ``gvbsm`` + ``indices_status`` (int32 zeros (2, 2) per image); batch 100.
- ``fkd``: one ``<wnid>/<image>.tar`` per image with numpy arrays: coords and
  probabilities in fp16 (``--use_fp16``), flip bits, ``marginal_smoothing_k5``
  (ids as floats over the top-5 probabilities at ``--temp 1``); 500 crops.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelzip.interop.view_replay import seeded_epochs
from labelzip.io import atomic_path

__all__ = ["FORMATS", "StoreSpec", "write_store"]

LogitSource = Callable[[int, int], torch.Tensor]
"""``source(start, count)`` -> (count, C) float32 teacher logits of labels start.."""


@dataclass(frozen=True)
class StoreSpec:
    """Shape of a store: how many images, epochs, the batch size and the pruning."""

    num_images: int
    batch_size: int
    epochs: int
    prune_ratio: float = 0.0  # LPLD / LPQLD keep int(epochs * batches * (1 - ratio))
    drop_last: bool = False
    crops_per_image: int = 500  # fkd only


FORMATS = ("sre2l", "lpld", "lpqld", "gvbsm", "edc", "fkd")


def _save(obj: Any, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path.stat().st_size


def _crop_coords(rng: np.random.Generator, n: int) -> torch.Tensor:
    """RandomResizedCrop boxes (i/H, j/W, h/H, w/W), scale 0.08-1, ratio 3/4-4/3."""
    area = rng.uniform(0.08, 1.0, n)
    aspect = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), n))
    w = np.minimum(np.sqrt(area * aspect), 1.0)
    h = np.minimum(np.sqrt(area / aspect), 1.0)
    i = rng.uniform(0.0, 1.0, n) * (1.0 - h)
    j = rng.uniform(0.0, 1.0, n) * (1.0 - w)
    return torch.from_numpy(np.stack([i, j, h, w], axis=1)).float()


def _cutmix(
    rng: np.random.Generator, n: int, size: int
) -> tuple[torch.Tensor, float, list[np.int64]]:
    """A batch's CutMix as ``mix_aug`` draws it: permutation, lambda, rand_bbox box."""
    index = torch.from_numpy(rng.permutation(n)).long()
    lam = float(rng.beta(1.0, 1.0))
    cut = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(size * cut), int(size * cut)
    cx, cy = int(rng.integers(size)), int(rng.integers(size))
    box = [
        np.clip(cx - cut_w // 2, 0, size),
        np.clip(cy - cut_h // 2, 0, size),
        np.clip(cx + cut_w // 2, 0, size),
        np.clip(cy + cut_h // 2, 0, size),
    ]
    return index, lam, [np.int64(v) for v in box]


def _fkd_mix_file(
    fmt: str, rng: np.random.Generator, logits: torch.Tensor, index: list[int]
) -> list[Any]:
    n = logits.shape[0]
    coords = _crop_coords(rng, n)
    flip = torch.from_numpy(rng.random(n) < 0.5)
    mix_index, lam, box = _cutmix(rng, n, 224)
    if fmt == "lpqld":
        top = torch.topk(logits, 100, dim=1)
        return [
            coords.half(),
            flip,
            mix_index.to(torch.uint8),
            lam,
            [torch.tensor(int(v), dtype=torch.uint8) for v in box],
            top.values.half(),
            top.indices.short(),
        ]
    out: list[Any] = [coords, flip, mix_index, lam, box, logits.half()]
    if fmt in ("gvbsm", "edc"):
        out.append(torch.tensor(index, dtype=torch.int64))
    if fmt == "edc":
        out.append(torch.zeros(n, 2, 2, dtype=torch.int32))
    return out


def _write_fkd_mix(
    fmt: str, root: Path, spec: StoreSpec, source: LogitSource, seed: int
) -> tuple[int, int, int]:
    rng = np.random.default_rng(seed)
    epochs = list(
        seeded_epochs(
            spec.num_images, spec.batch_size, 42, spec.epochs, drop_last=spec.drop_last
        )
    )
    per_epoch = len(epochs[0])
    total = spec.epochs * per_epoch
    if spec.prune_ratio:
        total = int(spec.epochs * per_epoch * (1 - spec.prune_ratio))
    side: dict[str, list[int]] = {}
    labels = nbytes = files = 0
    for counter in range(total):
        epoch, batch = divmod(counter, per_epoch)
        index = epochs[epoch][batch]
        content = _fkd_mix_file(fmt, rng, source(labels, len(index)), index)
        if fmt == "lpqld":
            path = root / f"batch_{counter}.tar"
            side[str(counter)] = index
        else:
            path = root / f"epoch_{epoch}" / f"batch_{batch}.tar"
            side.setdefault(str(epoch), []).extend(index)
        nbytes += _save(content, path)
        labels += len(index)
        files += 1
    if fmt in ("lpld", "lpqld"):
        name = (
            "sampler_indices_epoch.json"
            if fmt == "lpld"
            else "sampler_indices_batch.json"
        )
        with atomic_path(root / name) as tmp:
            tmp.write_text(json.dumps(side))
        nbytes += (root / name).stat().st_size
        files += 1
    return labels, files, nbytes


def _write_fkd(
    root: Path, spec: StoreSpec, source: LogitSource, seed: int
) -> tuple[int, int, int]:
    rng = np.random.default_rng(seed)
    n = spec.crops_per_image
    labels = nbytes = files = 0
    for image in range(spec.num_images):
        probs = torch.softmax(source(labels, n), dim=1)  # --temp 1
        order = torch.argsort(probs, dim=1, descending=True)[:, :5]
        values = torch.gather(probs, 1, order)
        quantised = torch.stack([order.float(), values], dim=1).numpy()
        content = [
            np.float16(_crop_coords(rng, n).numpy()),
            rng.random(n) < 0.5,
            np.float16(quantised),
        ]
        wnid = f"n{image // 10:08d}"
        nbytes += _save(content, root / "train" / wnid / f"img_{image:06d}.tar")
        labels += n
        files += 1
    return labels, files, nbytes


def write_store(
    fmt: str, root: Path, spec: StoreSpec, source: LogitSource, seed: int = 0
) -> dict[str, int]:
    """Write a store of format ``fmt`` under ``root`` (created; must not exist).

    Returns:
        ``{"labels", "files", "bytes"}``: label count, file count and the sum
        of the files' sizes (the framework's own bytes).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    root.mkdir(parents=True, exist_ok=False)
    if fmt == "fkd":
        labels, files, nbytes = _write_fkd(root, spec, source, seed)
    else:
        labels, files, nbytes = _write_fkd_mix(fmt, root, spec, source, seed)
    return {"labels": labels, "files": files, "bytes": nbytes}


def tiled_source(logits: torch.Tensor) -> LogitSource:
    """Labels ``start..start+count`` taken cyclically from ``logits`` (N, C)."""

    def take(start: int, count: int) -> torch.Tensor:
        rows = (torch.arange(start, start + count) % logits.shape[0]).long()
        return logits[rows].float()

    return take
