"""Label stores written the way each framework's own save loop writes them.

Written from the frameworks' code (repository @ commit in docs/interop.md),
independently of ``tests/interop/fixtures.py``, at other shapes and with the
loop quirks that decide which files exist:

- LPLD / LPQLD run ``total_steps // num_batches + 1`` epochs and stop at
  ``batch_counter == total_steps``; without pruning the loader keeps each
  epoch's short last batch; LPQLD lowers ``total_steps`` by one after every
  epoch, so its flat counter can stop mid-epoch;
- EDC's CIFAR / Tiny-ImageNet branches save G-VBSM's 7-list, its ImageNet
  branches add ``indices_status`` (``zeros(2, 2).int()`` per image);
- FKD applies ``--use_fp16`` only when ``num_crops > num_seg``;
- Megatron's saver flushes a shard per checkpoint, named by its last iteration;
- NeMo-Aligner appends ``json.dumps(obj, ensure_ascii=False)`` lines per batch.

Teacher outputs are seeded random numbers: the formats, not the values, are
under test.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard
from torch.utils.data import BatchSampler, RandomSampler, default_collate

__all__ = [
    "write_edc",
    "write_fkd",
    "write_gvbsm",
    "write_lpld",
    "write_lpqld",
    "write_megatron",
    "write_nemo",
]

_SIZE = 224  # the relabel crop size: cutmix boxes are drawn on it


class _Run:
    """The random state of one relabel run (python, numpy, torch)."""

    def __init__(self, seed: int) -> None:
        self.py = random.Random(seed)
        self.np = np.random.RandomState(seed)
        self.torch = torch.Generator().manual_seed(seed)

    def coords(self, n: int) -> torch.Tensor:
        """RandomResizedCropWithCoords: one ``torch.FloatTensor(4)`` per image."""
        return torch.stack(
            [
                torch.FloatTensor((self.py.random(), self.py.random(), 0.4, 0.6))
                for _ in range(n)
            ]
        )

    def flips(self, n: int) -> torch.Tensor:
        """RandomHorizontalFlipWithRes: a Python bool per image, collated."""
        return default_collate([self.py.random() < 0.5 for _ in range(n)])

    def cutout(self, n: int) -> torch.Tensor:
        """CutoutPILWithCoords (ImageNet-21K): centre, size, fill colour."""
        return torch.stack(
            [
                torch.FloatTensor(
                    [0.3, 0.6, 0.5, 0.5, *(self.py.randint(0, 255) for _ in range(3))]
                )
                for _ in range(n)
            ]
        )

    def mix(self, n: int, kind: str | None) -> tuple[Any, Any, Any]:
        """mix_aug: (rand_index, lam, bbox) of cutmix, mixup or none."""
        if kind is None:
            return None, None, None
        index = torch.randperm(n, generator=self.torch)
        if kind == "mixup":
            return index, self.np.beta(0.8, 0.8), None
        lam = self.np.beta(1.0, 1.0)
        cut = int(_SIZE * np.sqrt(1.0 - lam))
        cx, cy = self.np.randint(_SIZE), self.np.randint(_SIZE)
        box = [
            np.clip(cx - cut // 2, 0, _SIZE),
            np.clip(cy - cut // 2, 0, _SIZE),
            np.clip(cx + cut // 2, 0, _SIZE),
            np.clip(cy + cut // 2, 0, _SIZE),
        ]
        return index, lam, box

    def logits(self, n: int, num_classes: int) -> torch.Tensor:
        return torch.randn(n, num_classes, generator=self.torch) * 3

    def rand_params(self, n: int, ops: int = 2) -> list[Any]:
        """LPQLD's RandAugment triplets (op, decision, magnitude or -99),
        default-collated per op, floats halved (convert_to_half_precision)."""
        images = []
        for _ in range(n):
            triplets = []
            for _ in range(ops):
                decision = self.py.random()
                value = -99 if decision >= 0.5 else self.py.uniform(-30.0, 30.0)
                triplets.append((self.py.randint(0, 13), decision, value))
            images.append(triplets)
        return [
            [t.half() if t.is_floating_point() else t for t in op]
            for op in default_collate(images)
        ]


def _batches(num_images: int, batch_size: int, drop_last: bool) -> BatchSampler:
    generator = torch.Generator().manual_seed(42)  # --fkd-seed
    sampler = RandomSampler(range(num_images), generator=generator)
    return BatchSampler(sampler, batch_size, drop_last)


def write_lpld(
    root: Path,
    *,
    num_images: int,
    batch_size: int,
    epochs: int,
    prune_ratio: float,
    num_classes: int,
    mix: str | None = "cutmix",
    fp16: bool = True,
    cutout: bool = False,
) -> int:
    """LPLD ``generate_soft_label_pruning.py``; returns the number of batch files."""
    run = _Run(1)
    batches = _batches(num_images, batch_size, drop_last=prune_ratio > 0)
    total = int(epochs * len(batches) * (1 - prune_ratio))
    indices: dict[str, list[int]] = {}
    counter = 0
    for epoch in range(total // len(batches) + 1):
        folder = root / f"epoch_{epoch}"
        folder.mkdir(parents=True, exist_ok=True)
        for b, images in enumerate(batches):
            n = len(images)
            second = run.cutout(n) if cutout else run.flips(n)
            index, lam, box = run.mix(n, mix)
            output = run.logits(n, num_classes)
            output = output.half() if fp16 else output
            batch = [run.coords(n), second, index, lam, box, output]
            torch.save(batch, folder / f"batch_{b}.tar")
            indices.setdefault(str(epoch), []).extend(default_collate(images).tolist())
            counter += 1
            if counter == total:
                break
    with open(root / "sampler_indices_epoch.json", "w") as f:
        json.dump(indices, f)
    return counter


def write_lpqld(
    root: Path,
    *,
    num_images: int,
    batch_size: int,
    epochs: int,
    prune_ratio: float,
    num_classes: int,
    k: int | None,
    fp16: bool = True,
    mix: str | None = "cutmix",
    rand_aug: bool = False,
) -> int:
    """LPQLD ``generate_soft_label_pruning_batch.py``; returns the file count."""
    run = _Run(2)
    root.mkdir(parents=True, exist_ok=True)
    batches = _batches(num_images, batch_size, drop_last=prune_ratio > 0)
    total = int(epochs * len(batches) * (1 - prune_ratio))
    indices: dict[str, list[int]] = {}
    counter = 0
    for _ in range(total // len(batches) + 1):
        for images in batches:
            n = len(images)
            flips, params = run.flips(n), run.rand_params(n) if rand_aug else None
            index, lam, box = run.mix(n, mix)
            output = run.logits(n, num_classes)
            labels = [output]
            if k is not None:
                top = torch.topk(output, k, dim=1)
                labels = [top.values, top.indices.short()]
            if fp16:
                labels[0] = labels[0].half()
            index = None if index is None else index.to(torch.uint8)
            box = (
                None
                if box is None
                else [torch.tensor(x, dtype=torch.uint8) for x in box]
            )
            head = [run.coords(n).half(), flips] + ([params] if rand_aug else [])
            torch.save([*head, index, lam, box, *labels], root / f"batch_{counter}.tar")
            indices[str(counter)] = default_collate(images).tolist()
            counter += 1
            if counter == total:
                break
        total -= 1  # the writer's own decrement after every epoch
    with open(root / "sampler_indices_batch.json", "w") as f:
        json.dump(indices, f)
    return counter


def _ensemble_store(
    root: Path,
    *,
    num_images: int,
    batch_size: int,
    epochs: int,
    num_classes: int,
    mix: str | None,
    fp16: bool,
    indices_status: bool,
    seed: int,
) -> None:
    run = _Run(seed)
    batches = _batches(num_images, batch_size, drop_last=False)
    for epoch in range(epochs):
        folder = root / f"epoch_{epoch}"
        folder.mkdir(parents=True, exist_ok=True)
        for b, images in enumerate(batches):
            n = len(images)
            coords, flips = run.coords(n), run.flips(n)
            index, lam, box = run.mix(n, mix)
            output = torch.stack([run.logits(n, num_classes) for _ in range(3)]).mean(0)
            output = output.half() if fp16 else output
            batch = [coords, flips, index, lam, box, output, default_collate(images)]
            if indices_status:
                batch.append(torch.stack([torch.zeros(2, 2).int() for _ in range(n)]))
            torch.save(batch, folder / f"batch_{b}.tar")


def write_gvbsm(root: Path, **kwargs: Any) -> None:
    """G-VBSM ``generate_soft_label_with_db.py`` (every branch): the 7-list."""
    _ensemble_store(root, indices_status=False, seed=3, **kwargs)


def write_edc(root: Path, *, seven: bool = False, **kwargs: Any) -> None:
    """EDC ``generate_soft_label_with_db.py``: ImageNet branches' 8-list, or the
    CIFAR / Tiny-ImageNet branches' 7-list (``seven``)."""
    _ensemble_store(root, indices_status=not seven, seed=4, **kwargs)


def write_fkd(
    root: Path,
    *,
    classes: int,
    per_class: int,
    crops: int,
    num_classes: int,
    label_type: str = "marginal_smoothing_k5",
    fp16: bool = False,
    num_seg: int = 50,
) -> None:
    """FKD ``FKD_SLG/generate_soft_label.py``: one file per image under the last
    three folders of the image path, named up to the first dot."""
    run = _Run(5)
    for c in range(classes):
        for i in range(per_class):
            path = f"/data/imagenet/train/n{c:08d}/n{c:08d}_{i}.v2.JPEG"
            folder = root.joinpath(*path.split("/")[-4:-1])
            folder.mkdir(parents=True, exist_ok=True)
            probs = torch.softmax(run.logits(crops, num_classes) / 4.0, dim=1)
            rows = []
            for p in probs:
                if label_type == "hard":
                    rows.append(torch.argmax(p))
                elif label_type == "smoothing":
                    top = torch.argmax(p)
                    rows.append(torch.stack([top, p[top]]))
                else:
                    order = torch.argsort(p, descending=True)[
                        : 10 if label_type.endswith("k10") else 5
                    ]
                    rows.append(torch.stack([order, p[order]]))
            label = torch.stack(rows).numpy()
            coords, flips = run.coords(crops).numpy(), run.flips(crops).numpy()
            state = [coords, flips, label]
            if crops > num_seg and fp16:
                state = [np.float16(coords), flips, np.float16(label)]
            torch.save(state, folder / (path.split("/")[-1].split(".")[0] + ".tar"))


def write_megatron(
    root: Path,
    *,
    vocab: int,
    k: int,
    p: float | None,
    save_dtype: str,
    seq: int,
    micro_batch: int,
    microbatches: int,
    ranks: tuple[int, int],
    iterations: int,
    flush_every: int,
) -> None:
    """Megatron-LM ``LogitsSaverHooks`` (277c4f8): top-k log-probs per microbatch,
    17-bit ids split, one tar per (cp, dp) and checkpoint flush."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    gen = torch.Generator().manual_seed(6)
    meta = {
        "hash": "5f0c2d6e1b7a4c3d9e8f7a6b5c4d3e2f",
        "identifiers": {"seed": 1234, "train_samples": 64, "blend": {"kind": "mock"}},
        "saver": {"k": k, "p": p, "min_k": 1, "save_dtype": save_dtype},
    }
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    root.mkdir(parents=True, exist_ok=True)
    for cp in range(ranks[0]):
        for dp in range(ranks[1]):
            pending: dict[int, bytes] = {}
            for iteration in range(1, iterations + 1):
                payload: dict[str, list[torch.Tensor]] = {
                    "values": [],
                    "indices_low": [],
                    "bit_17": [],
                }
                for _ in range(microbatches):
                    logits = torch.randn(seq, micro_batch, vocab, generator=gen) * 3
                    top, ids = torch.topk(logits, min(k, vocab), dim=-1)
                    values = top - torch.logsumexp(logits, dim=-1, keepdim=True)
                    if p is not None:
                        probs = values.exp()
                        keep = (probs.cumsum(-1) - probs) < p
                        keep[..., 0] = True
                        width = int(keep.sum(-1).max())
                        keep, values, ids = (
                            keep[..., :width],
                            values[..., :width],
                            ids[..., :width],
                        )
                        values = torch.where(keep, values, -1e3)
                        ids = torch.where(keep, ids, -1)
                    payload["values"].append(values.to(dtype[save_dtype]))
                    payload["indices_low"].append((ids & 0xFFFF).to(torch.uint16))
                    payload["bit_17"].append((ids >> 16).to(torch.bool))
                buffer = io.BytesIO()
                torch.save(payload, buffer)
                pending[iteration] = buffer.getvalue()
                if iteration % flush_every and iteration != iterations:
                    continue
                name = root / f"cp{cp}_dp{dp}__{max(pending)}.tar"
                with tarfile.open(name, mode="w") as tar:
                    members = [("_meta.json", meta_bytes)] + [
                        (f"{i}.pt.zst", zstandard.ZstdCompressor(level=3).compress(d))
                        for i, d in pending.items()
                    ]
                    for member, data in members:
                        info = tarfile.TarInfo(member)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
                pending = {}


def write_nemo(
    root: Path,
    *,
    vocab: int,
    k: int,
    precision: torch.dtype,
    rows: int,
    batch_size: int,
    max_len: int,
    chunks: int,
) -> None:
    """NeMo-Aligner ``compute_topk_logits.py`` ``write_generations``: SFT batch
    keys padded to the batch, then top-k shifted logits, ids, log-sum-exp, index."""
    gen = torch.Generator().manual_seed(7)
    root.mkdir(parents=True, exist_ok=True)
    index = 0
    for chunk in range(chunks):
        path = root / f"train_with_logits_{chunk}.jsonl"
        for start in range(0, rows, batch_size):
            n = min(batch_size, rows - start)
            lengths = torch.randint(3, max_len + 1, (n,), generator=gen).tolist()
            width = max(lengths)
            tokens = torch.zeros(n, width, dtype=torch.long)
            for r, length in enumerate(lengths):
                tokens[r, :length] = torch.randint(0, vocab, (length,), generator=gen)
            logits = (torch.randn(n, width, vocab, generator=gen) * 2).to(precision)
            shifted = logits - logits.max(-1, keepdim=True).values
            top, ids = torch.topk(shifted, k, dim=-1)
            batch: dict[str, Any] = {
                "tokens": tokens.tolist(),
                "labels": tokens.roll(-1, 1).tolist(),
                "loss_mask": (tokens > 0).long().tolist(),
                "contexts": tokens[:, :2].tolist(),
                "context_lengths": [2] * n,
                "answers": tokens[:, 2:].tolist(),
                "metadata": [{"system": "Grüße — ok", "mask": "User"}] * n,
            }
            lse = torch.logsumexp(shifted.float(), dim=-1).tolist()
            with open(path, "a", encoding="utf-8") as f:
                for i in range(n):
                    obj = {key: value[i] for key, value in batch.items()}
                    obj["topk_logits"] = top[i].tolist()
                    obj["topk_token_ids"] = ids[i].tolist()
                    obj["log_sum_exp_logits"] = lse[i]
                    obj["index"] = index
                    index += 1
                    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
