"""Stores written as the frameworks write them (``writers.py``), through the CLI as
a user runs it: import, info, decompress, export, compare element by element."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import zstandard
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from labelzip.interop.safe_load import load_torch_file
from labelzip.interop.training import ImportedViews, StoredBatchSampler

from ..helpers import CliRun, assert_same_store, files_of, same
from .writers import (
    write_edc,
    write_fkd,
    write_gvbsm,
    write_lpld,
    write_lpqld,
    write_megatron,
    write_nemo,
)

_LPLD = {"num_images": 37, "batch_size": 8, "num_classes": 11}
_LPQLD = {"num_images": 29, "batch_size": 6, "num_classes": 13}
_ENSEMBLE = {"num_images": 21, "batch_size": 8, "epochs": 2, "num_classes": 7}
_MEGATRON = {"seq": 5, "micro_batch": 2, "microbatches": 2, "iterations": 3}

# name -> (--format, writer, import flags, expected variant)
CASES: dict[str, tuple[str, Callable[[Path], Any], list[Any], str]] = {
    # int(3 * 4 * 0.6) = 7 batches: epoch_1 stops after 3
    "lpld-pruned": (
        "lpld",
        partial(write_lpld, **_LPLD, epochs=3, prune_ratio=0.4),
        [],
        "dense+cutmix",
    ),
    # total 4 = one epoch exactly: the writer's loop then runs a whole second one
    "lpld-whole-epochs-fp32-mixup": (
        "lpld",
        partial(
            write_lpld, **_LPLD, epochs=2, prune_ratio=0.5, mix="mixup", fp16=False
        ),
        [],
        "dense+mixup",
    ),
    "lpld-unpruned-cutout": (
        "lpld",
        partial(write_lpld, **_LPLD, epochs=1, prune_ratio=0.0, mix=None, cutout=True),
        [],
        "dense+cutout",
    ),
    "lpqld-topk-fp32": (
        "lpqld",
        partial(write_lpqld, **_LPQLD, epochs=3, prune_ratio=0.5, k=4, fp16=False),
        ["--num-classes", 13],
        "topk+cutmix",
    ),
    # unpruned: every epoch's short last batch stays, mid-counter
    "lpqld-unpruned-dense": (
        "lpqld",
        partial(write_lpqld, **_LPQLD, epochs=2, prune_ratio=0.0, k=None, mix=None),
        [],
        "dense",
    ),
    "lpqld-unpruned-randaug": (
        "lpqld",
        partial(write_lpqld, **_LPQLD, epochs=1, prune_ratio=0.0, k=3, rand_aug=True),
        ["--num-classes", 13],
        "topk+randaug+cutmix",
    ),
    "gvbsm-mixup-fp16": (
        "gvbsm",
        partial(write_gvbsm, **_ENSEMBLE, mix="mixup", fp16=True),
        [],
        "dense+mixup",
    ),
    "edc-imagenet": (
        "edc",
        partial(write_edc, **_ENSEMBLE, mix="cutmix", fp16=True),
        [],
        "dense+cutmix",
    ),
    "edc-cifar-7list": (
        "edc",
        partial(write_edc, **_ENSEMBLE, mix=None, fp16=False, seven=True),
        [],
        "dense-7list",
    ),
    "fkd-k10-fp16-segments": (
        "fkd",
        partial(
            write_fkd,
            classes=2,
            per_class=2,
            crops=12,
            num_seg=4,
            num_classes=23,
            label_type="marginal_smoothing_k10",
            fp16=True,
        ),
        ["--num-classes", 23, "--temperature", 4],
        "marginal_k10",
    ),
    "fkd-smoothing": (
        "fkd",
        partial(
            write_fkd,
            classes=3,
            per_class=1,
            crops=3,
            num_classes=6,
            label_type="smoothing",
        ),
        ["--num-classes", 6],
        "smoothing",
    ),
    "megatron-bf16-17bit-ids": (
        "megatron",
        partial(
            write_megatron,
            **_MEGATRON,
            vocab=70_000,
            k=6,
            p=None,
            save_dtype="bf16",
            ranks=(1, 2),
            flush_every=2,
        ),
        ["--num-classes", 70_000],
        "top-k",
    ),
    "megatron-top-p-fp32": (
        "megatron",
        partial(
            write_megatron,
            **_MEGATRON,
            vocab=50,
            k=12,
            p=0.6,
            save_dtype="fp32",
            ranks=(2, 1),
            flush_every=3,
        ),
        ["--num-classes", 50],
        "top-p",
    ),
    "nemo-bf16-chunks": (
        "nemo-aligner",
        partial(
            write_nemo,
            vocab=40,
            k=5,
            precision=torch.bfloat16,
            rows=5,
            batch_size=2,
            max_len=6,
            chunks=2,
        ),
        ["--num-classes", 40],
        "topk-logits",
    ),
}


def megatron_payloads(root: Path) -> dict[str, Any]:
    """Every shard's members: ``_meta.json`` bytes, decoded payload dicts."""
    out: dict[str, Any] = {}
    for name in files_of(root):
        with tarfile.open(root / name) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if member.name != "_meta.json":
                    raw = zstandard.ZstdDecompressor().decompress(data)
                    data = torch.load(io.BytesIO(raw), weights_only=True)
                out[f"{name}:{member.name}"] = data
    return out


def store_items(root: Path, fmt: str) -> dict[str, Any]:
    """File (or member) name -> its loaded content, for any of the formats here."""
    if fmt == "megatron":
        return megatron_payloads(root)
    if fmt == "nemo-aligner":
        return {
            n: [json.loads(line) for line in (root / n).read_text().splitlines()]
            for n in files_of(root)
        }
    return {
        n: (root / n).read_bytes() if n.endswith(".json") else load_torch_file(root / n)
        for n in files_of(root)
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_outside_store_round_trips_through_the_cli(
    tmp_path: Path, cli: Callable[..., CliRun], case: str
) -> None:
    fmt, writer, flags, variant = CASES[case]
    store, archive = tmp_path / "store", tmp_path / "labels.lz"
    writer(store)
    before = {n: (store / n).read_bytes() for n in files_of(store)}
    assert cli("import", "--format", fmt, store, *flags, "-o", archive).code == 0
    info = cli("info", archive, "--json", "--verify")
    doc = json.loads(info.out)
    assert info.code == 0 and doc["user"]["interop"]["variant"] == variant
    assert cli("decompress", archive, "-o", tmp_path / "labels.safetensors").code == 0
    (decoded,) = load_file(tmp_path / "labels.safetensors").values()
    assert decoded.shape[-1] == doc["num_classes"]  # LM layouts: (sequence, position)
    assert decoded.reshape(-1, doc["num_classes"]).shape[0] == doc["num_labels"]
    out = tmp_path / "exported"
    assert cli("export", archive, "-o", out).code == 0
    if fmt in ("megatron", "nemo-aligner"):
        assert files_of(out) == files_of(store)
        assert same(store_items(out, fmt), store_items(store, fmt))
    else:
        assert_same_store(store, out)
    assert {n: (store / n).read_bytes() for n in files_of(store)} == before


def same_structure(a: Any, b: Any) -> bool:
    """Same types, dtypes, shapes, keys and lengths all the way down; values aside."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape
    if hasattr(a, "dtype") and hasattr(a, "shape"):  # numpy arrays
        return bool(a.dtype == b.dtype and a.shape == b.shape)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same_structure, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_structure(a[k], b[k]) for k in a)
    return True


# each with the number of elements per file (or per line) a re-encoding may change
LOSSY = {
    "lpld-pruned": 1,
    "lpqld-topk-fp32": 2,
    "edc-imagenet": 1,
    "fkd-smoothing": 1,
    "megatron-top-p-fp32": 3,
    "nemo-bf16-chunks": 3,
}


@pytest.mark.parametrize("case", sorted(LOSSY))
def test_outside_store_re_encoded_keeps_the_framework_structure(
    tmp_path: Path, cli: Callable[..., CliRun], case: str
) -> None:
    fmt, writer, flags, _ = CASES[case]
    store, archive = tmp_path / "store", tmp_path / "labels.lz"
    writer(store)
    run = cli("import", "--format", fmt, store, *flags, "-o", archive,
              "--codec", "topk", "--k", 2)  # fmt: skip
    assert run.code == 0, run.err
    assert cli("export", archive, "-o", tmp_path / "out").code == 0
    a, b = store_items(store, fmt), store_items(tmp_path / "out", fmt)
    assert list(a) == list(b) and same_structure(a, b)
    changed = 0
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, bytes):
            assert x == y, name  # JSON side files, _meta.json
            continue
        rows = x if fmt == "nemo-aligner" else [x]
        for u, v in zip(rows, y if fmt == "nemo-aligner" else [y], strict=True):
            parts = list(u.values()) if isinstance(u, dict) else u
            other = list(v.values()) if isinstance(v, dict) else v
            differing = sum(not same(p, q) for p, q in zip(parts, other, strict=True))
            assert differing <= LOSSY[case], name
            changed += differing
    assert changed > 0


def test_randaug_magnitudes_collated_as_int64_in_some_batches(
    tmp_path: Path, cli: Callable[..., CliRun]
) -> None:
    """A batch whose magnitudes are all ints (-99: op not applied) holds an int64
    column where the others hold float16: one store, restored per file."""
    store, archive = tmp_path / "store", tmp_path / "labels.lz"
    write_lpqld(store, num_images=16, batch_size=2, epochs=1, prune_ratio=0.25,
                num_classes=13, k=3, rand_aug=True)  # fmt: skip
    dtypes = {
        load_torch_file(p)[2][op][2].dtype
        for p in store.glob("batch_*.tar")
        for op in range(2)
    }
    assert dtypes == {torch.int64, torch.float16}
    flags = ("--num-classes", 13, "-o", archive)
    assert cli("import", "--format", "lpqld", store, *flags).code == 0
    assert cli("export", archive, "-o", tmp_path / "out").code == 0
    assert_same_store(store, tmp_path / "out")


def test_flat_store_with_short_batches_serves_the_json_images(
    tmp_path: Path, cli: Callable[..., CliRun]
) -> None:
    """Unpruned LPQLD: short batches inside the counter; the sampler serves each
    stored batch with the images its JSON lists, and the stored labels."""
    store, archive = tmp_path / "store", tmp_path / "labels.lz"
    count = write_lpqld(store, **_LPQLD, epochs=2, prune_ratio=0.0, k=None, mix="mixup")
    assert cli("import", "--format", "lpqld", store, "-o", archive).code == 0
    listed = json.loads((store / "sampler_indices_batch.json").read_text())
    assert {len(v) for v in listed.values()} == {6, 5}  # 29 = 4 * 6 + 5
    images = torch.randint(0, 256, (29, 3, 12, 10), dtype=torch.uint8)
    views = ImportedViews(archive, images, output_size=8)
    loader = DataLoader(views, batch_sampler=StoredBatchSampler(archive))
    served = list(loader)
    assert len(served) == count
    for b, (view, soft_label, image_index) in enumerate(served):
        stored = load_torch_file(store / f"batch_{b}.tar")
        assert image_index.tolist() == listed[str(b)]
        assert torch.equal(soft_label, stored[-1].float())
        assert view.shape == (len(listed[str(b)]), 3, 8, 8)
