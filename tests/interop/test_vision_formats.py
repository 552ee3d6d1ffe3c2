"""Import / export of the vision label stores: lossless round trips, variants, errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labelzip.archive import ArchiveReader
from labelzip.errors import ConfigError, InputError
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import CodecChoice, export_archive, import_store
from labelzip.interop.formats import get_format
from labelzip.interop.safe_load import load_torch_file
from labelzip.rate import RateGoal

from .fixtures import (
    write_edc,
    write_fkd,
    write_gvbsm,
    write_lpld,
    write_lpqld,
    write_sre2l,
)
from .helpers import (
    CliRun,
    assert_same_store,
    expect_import_error,
    files_of,
    same,
)

SRE2L_OPTIONS = ImportOptions(sampler_seed=42, batch_size=4)


# name -> (format, writer, writer kwargs, import options, expected variant)
CASES: dict[str, tuple[str, Callable[..., Any], dict[str, Any], ImportOptions, str]] = {
    "sre2l-cutmix": ("sre2l", write_sre2l, {}, SRE2L_OPTIONS, "dense+cutmix"),
    "cda-mixup-fp32": (
        "cda",
        write_sre2l,
        {"mix_type": "mixup", "fp16": False},
        SRE2L_OPTIONS,
        "dense+mixup",
    ),
    "sre2l-nomix": ("sre2l", write_sre2l, {"mix_type": None}, SRE2L_OPTIONS, "dense"),
    "lpld": ("lpld", write_lpld, {}, ImportOptions(), "dense+cutmix"),
    "lpld-cutout": (
        "lpld",
        write_lpld,
        {"cutout": True, "prune_ratio": 0.25},
        ImportOptions(),
        "dense+cutout+cutmix",
    ),
    "lpqld-topk": (
        "lpqld",
        write_lpqld,
        {},
        ImportOptions(num_classes=9),
        "topk+cutmix",
    ),
    "lpqld-randaug": (
        "lpqld",
        write_lpqld,
        {"rand_aug": True},
        ImportOptions(num_classes=9),
        "topk+randaug+cutmix",
    ),
    "lpqld-dense": (
        "lpqld",
        write_lpqld,
        {"quantize": False},
        ImportOptions(),
        "dense+cutmix",
    ),
    "gvbsm": ("gvbsm", write_gvbsm, {}, ImportOptions(), "dense+cutmix"),
    "edc": ("edc", write_edc, {}, ImportOptions(), "dense+cutmix"),
    "fkd-k5": ("fkd", write_fkd, {}, ImportOptions(num_classes=12), "marginal_k5"),
    "fkd-k10-fp16": (
        "fkd",
        write_fkd,
        {"label_type": "marginal_smoothing_k10", "fp16": True},
        ImportOptions(num_classes=12, temperature=4.0),
        "marginal_k10",
    ),
    "fkd-smoothing": (
        "fkd",
        write_fkd,
        {"label_type": "smoothing"},
        ImportOptions(num_classes=12),
        "smoothing",
    ),
    "fkd-hard": (
        "fkd",
        write_fkd,
        {"label_type": "hard"},
        ImportOptions(num_classes=12),
        "hard",
    ),
}


def stored_labels(
    root: Path, fmt: str, variant: str
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(values, ids or None) of every file, in the store's label order."""
    if fmt == "fkd":
        paths = sorted(
            root.rglob("*.tar"), key=lambda p: p.relative_to(root).as_posix()
        )
    elif fmt == "lpqld":
        paths = sorted(
            root.glob("batch_*.tar"), key=lambda p: int(p.stem.split("_")[1])
        )
    else:
        paths = [
            p
            for e in sorted(
                root.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1])
            )
            for p in sorted(
                e.glob("batch_*.tar"), key=lambda p: int(p.stem.split("_")[1])
            )
        ]
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for path in paths:
        obj = load_torch_file(path)
        if fmt == "fkd":
            label = obj[2]
            if label.ndim == 1:
                out.append(
                    (torch.ones(len(label), 1), torch.from_numpy(label).reshape(-1, 1))
                )
            else:
                arr = torch.from_numpy(label.reshape(label.shape[0], 2, -1))
                out.append((arr[:, 1].float(), arr[:, 0].long()))
        elif variant.startswith("topk"):
            out.append((obj[-2].float(), obj[-1].long()))
        else:
            out.append((obj[-1 if fmt == "lpqld" else 5].float(), None))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_lossless_import_decompress_and_export_round_trip(
    tmp_path: Path, case: str
) -> None:
    fmt, writer, kwargs, options, variant = CASES[case]
    src = tmp_path / "store"
    writer(src, **kwargs)
    before = {n: (src / n).read_bytes() for n in files_of(src)}
    archive = tmp_path / "labels.lz"
    account = import_store(src, fmt, archive, options=options)
    assert account.side_bytes > 0
    with ArchiveReader(archive) as reader:
        doc = reader.header.user["interop"]
        assert doc["variant"] == variant and doc["lossless"] is True
        assert account.total_bytes == archive.stat().st_size
        decoded = reader.decode(slice(0, reader.num_labels))
    start = 0
    for values, ids in stored_labels(src, fmt, variant):
        rows = decoded[start : start + values.shape[0]]
        if ids is None:  # dense: the stored values exactly
            assert torch.equal(rows, values)
        else:  # top-k: stored values at their ids, -inf elsewhere
            assert torch.equal(rows.gather(1, ids), values)
            assert int(torch.isfinite(rows).sum()) == ids.numel()
        start += values.shape[0]
    assert start == decoded.shape[0]
    out = tmp_path / "exported"
    export_archive(archive, None, out)
    assert_same_store(src, out)
    assert {
        n: (src / n).read_bytes() for n in files_of(src)
    } == before  # input untouched


def test_sre2l_records_sampler_and_side_tensors(tmp_path: Path) -> None:
    write_sre2l(tmp_path / "s", num_images=10, batch_size=4, epochs=2)
    import_store(tmp_path / "s", "sre2l", tmp_path / "a.lz", options=SRE2L_OPTIONS)
    with ArchiveReader(tmp_path / "a.lz") as reader:
        doc = reader.header.user["interop"]
        side = reader.side_tensors()
    assert doc["sampler"]["seed"] == 42 and doc["sampler"]["num_images"] == 10
    assert doc["epoch_batches"] == [3, 3]
    assert side["file_rows"].tolist() == [4, 4, 2, 4, 4, 2]
    assert side["coords"].shape == (20, 4) and side["coords"].dtype == torch.float32
    assert side["flip"].dtype == torch.bool and side["mix_lam"].dtype == torch.float64
    assert side["mix_bbox.0"].dtype == torch.int64 and side["mix_index"].shape == (20,)


def test_lpld_and_gvbsm_image_indices(tmp_path: Path) -> None:
    # int(4 epochs * 2 batches * 0.625) = 5 batches: epoch_2 holds one.
    write_lpld(tmp_path / "l", num_images=10, batch_size=4, epochs=4, prune_ratio=0.375)
    import_store(tmp_path / "l", "lpld", tmp_path / "l.lz")
    indices = json.loads((tmp_path / "l" / "sampler_indices_epoch.json").read_text())
    with ArchiveReader(tmp_path / "l.lz") as reader:
        doc = reader.header.user["interop"]
        got = reader.side_tensors()["image_index"].tolist()
    assert doc["epoch_batches"] == [2, 2, 1]
    assert got == [i for key in indices for i in indices[key]]
    batches = write_gvbsm(tmp_path / "g", epochs=2)
    import_store(tmp_path / "g", "gvbsm", tmp_path / "g.lz")
    with ArchiveReader(tmp_path / "g.lz") as reader:
        got = reader.side_tensors()["image_index"].tolist()
    assert got == [i for epoch in batches for batch in epoch for i in batch]


def test_lossy_import_then_export_writes_decoded_labels(tmp_path: Path) -> None:
    write_sre2l(tmp_path / "s", num_classes=16)
    choice = CodecChoice(name="topk", options={"k": 3, "decoder": "mr"})
    import_store(
        tmp_path / "s", "sre2l", tmp_path / "a.lz", options=SRE2L_OPTIONS, codec=choice
    )
    with ArchiveReader(tmp_path / "a.lz") as reader:
        assert (
            reader.codec_name == "topk"
            and reader.header.user["interop"]["lossless"] is False
        )
    export_archive(tmp_path / "a.lz", "sre2l", tmp_path / "out")
    for name in files_of(tmp_path / "s"):
        a, b = (
            load_torch_file(tmp_path / "s" / name),
            load_torch_file(tmp_path / "out" / name),
        )
        assert all(same(x, y) for x, y in zip(a[:5], b[:5], strict=True))
        assert b[5].dtype == torch.float16 and b[5].shape == a[5].shape
        assert torch.equal(b[5].argmax(1), a[5].argmax(1))
    write_lpqld(tmp_path / "q", num_classes=9, k=3)
    import_store(
        tmp_path / "q",
        "lpqld",
        tmp_path / "q.lz",
        options=ImportOptions(num_classes=9),
        codec=CodecChoice(name="dense", options={"dtype": "bf16"}),
    )
    export_archive(tmp_path / "q.lz", None, tmp_path / "q_out")
    a = load_torch_file(tmp_path / "q" / "batch_0.tar")
    b = load_torch_file(tmp_path / "q_out" / "batch_0.tar")
    assert b[-1].dtype == torch.int16 and b[-2].dtype == torch.float16
    assert torch.allclose(b[-2].float(), a[-2].float(), rtol=1e-2)


def test_lossy_import_with_a_ratio_counts_side_bytes(tmp_path: Path) -> None:
    write_sre2l(
        tmp_path / "s", num_images=200, batch_size=50, epochs=3, num_classes=100
    )
    choice = CodecChoice(
        name="topk", options={"decoder": "mr"}, goal=RateGoal(ratio=3.0)
    )
    account = import_store(
        tmp_path / "s",
        "sre2l",
        tmp_path / "a.lz",
        options=ImportOptions(sampler_seed=42, batch_size=50),
        codec=choice,
    )
    assert account.side_bytes > 0
    assert account.ratio >= 3.0


# -- errors -------------------------------------------------------------------------


def test_unknown_variant_is_named(tmp_path: Path) -> None:
    write_sre2l(tmp_path / "s", epochs=1)
    obj = torch.load(tmp_path / "s/epoch_0/batch_0.tar", weights_only=False)
    torch.save(obj[:5], tmp_path / "s/epoch_0/batch_0.tar")
    expect_import_error(
        tmp_path / "s",
        "sre2l",
        r"epoch_0/batch_0.tar is not a known sre2l variant",
        SRE2L_OPTIONS,
    )


def test_mixed_variants_are_named(tmp_path: Path) -> None:
    write_sre2l(tmp_path / "s", epochs=2)
    path = tmp_path / "s/epoch_1/batch_1.tar"
    obj = torch.load(path, weights_only=False)
    torch.save([obj[0], obj[1], None, None, None, obj[5]], path)
    expect_import_error(
        tmp_path / "s", "sre2l", r"mixed variants: epoch_1/batch_1.tar", SRE2L_OPTIONS
    )
    write_fkd(tmp_path / "f")
    path = sorted((tmp_path / "f").rglob("*.tar"))[-1]
    obj = torch.load(path, weights_only=False)
    torch.save([obj[0], obj[1], obj[2][:, :, :3]], path)
    expect_import_error(
        tmp_path / "f",
        "fkd",
        "mixed variants: train/n00000002/img_1.tar",
        ImportOptions(num_classes=12),
    )


def test_classes_differing_across_files(tmp_path: Path) -> None:
    write_gvbsm(tmp_path / "g", epochs=2)
    path = tmp_path / "g/epoch_1/batch_0.tar"
    obj = torch.load(path, weights_only=False)
    obj[5] = obj[5][:, :6]
    torch.save(obj, path)
    expect_import_error(
        tmp_path / "g", "gvbsm", r"epoch_1/batch_0.tar holds 6 classes but"
    )


def test_truncated_file_is_named(tmp_path: Path) -> None:
    write_edc(tmp_path / "e", epochs=2)
    path = tmp_path / "e/epoch_1/batch_1.tar"
    path.write_bytes(path.read_bytes()[:200])
    expect_import_error(
        tmp_path / "e", "edc", r"'epoch_1/batch_1.tar': truncated or corrupt"
    )


def test_missing_epoch_folder_and_batch(tmp_path: Path) -> None:
    write_sre2l(tmp_path / "s", epochs=3)
    for p in (tmp_path / "s/epoch_1").iterdir():
        p.unlink()
    (tmp_path / "s/epoch_1").rmdir()
    expect_import_error(tmp_path / "s", "sre2l", "epoch_1 is missing", SRE2L_OPTIONS)
    write_sre2l(tmp_path / "t", epochs=2)
    (tmp_path / "t/epoch_1/batch_1.tar").unlink()
    expect_import_error(
        tmp_path / "t", "sre2l", "epoch_1/batch_1.tar is missing", SRE2L_OPTIONS
    )
    write_lpqld(tmp_path / "q")
    (tmp_path / "q/batch_1.tar").unlink()
    expect_import_error(
        tmp_path / "q", "lpqld", "batch_1.tar is missing", ImportOptions(num_classes=9)
    )


def test_missing_options_and_json(tmp_path: Path) -> None:
    write_sre2l(tmp_path / "s", epochs=1)
    expect_import_error(tmp_path / "s", "cda", "--sampler-seed and --batch-size")
    expect_import_error(
        tmp_path / "s",
        "sre2l",
        "--batch-size 8 does not match",
        ImportOptions(sampler_seed=1, batch_size=8),
    )
    write_lpqld(tmp_path / "q")
    expect_import_error(tmp_path / "q", "lpqld", "--num-classes")
    expect_import_error(
        tmp_path / "q",
        "lpqld",
        "class id 8, outside --num-classes 5",
        ImportOptions(num_classes=5),
    )
    (tmp_path / "q/sampler_indices_batch.json").unlink()
    expect_import_error(
        tmp_path / "q",
        "lpqld",
        "no sampler_indices_batch.json",
        ImportOptions(num_classes=9),
    )
    with pytest.raises(ConfigError, match="unknown label-store format 'srel2'"):
        import_store(tmp_path / "s", "srel2", tmp_path / "a.lz")


def test_object_arrays_and_code_in_pickles_are_refused(tmp_path: Path) -> None:
    write_fkd(tmp_path / "f", classes=1, images_per_class=1)
    path = next((tmp_path / "f").rglob("*.tar"))
    obj = torch.load(path, weights_only=False)
    torch.save([obj[0], obj[1], np.array([1, "x"], dtype=object)], path)
    expect_import_error(
        tmp_path / "f", "fkd", "img_0.tar.*object array", ImportOptions(num_classes=12)
    )
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    torch.save([Payload()], path)
    expect_import_error(
        tmp_path / "f",
        "fkd",
        r"refusing to load 'train/n00000000/img_0.tar'",
        ImportOptions(num_classes=12),
    )
    assert not marker.exists()


# -- CLI ----------------------------------------------------------------------------


def test_cli_import_export_and_destination_rules(
    tmp_path: Path, cli: Callable[..., CliRun]
) -> None:
    write_lpqld(tmp_path / "q")
    archive = tmp_path / "q.lz"
    run = cli("import", tmp_path / "q", "--format", "lpqld", "--num-classes", 9,
              "-o", archive, "--json")  # fmt: skip
    assert run.code == 0 and json.loads(run.out)["codec"] == "topk"
    out = tmp_path / "out"
    assert cli("export", archive, "-o", out).code == 0
    assert_same_store(tmp_path / "q", out)
    assert cli("export", archive, "-o", out).refused("not empty")
    assert cli("export", archive, "-o", out, "--force").code == 0
    assert_same_store(tmp_path / "q", out)
    run = cli("export", archive, "--format", "sre2l", "-o", tmp_path / "x")
    assert run.refused("export them with --format lpqld")
    assert cli("export", archive, "-o", tmp_path, "--force").refused(
        "holds the archive"
    )
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind
    run = cli("import", tmp_path / "q", "--format", "lpqld", "-o", tmp_path / "b.lz",
              "--num-classes", 9, "--ratio", "0.05",  # side information dominates
              "--auto-steps", 5, "--auto-confirm-steps", 10)  # fmt: skip
    assert run.code == 0 and run.out.startswith("auto chose "), run.err  # target: auto
    with ArchiveReader(tmp_path / "b.lz") as reader:
        record = reader.info()["user"]["auto"]
    assert record["chosen"]["codec"] == reader.info()["codec"]
    # an imported store has no view recipe: every candidate keeps every label
    # (a small archive stores the choice alone; the printed table has every row)
    assert record["chosen"]["keep_fraction"] == 1.0
    rows = [line for line in run.out.splitlines() if " keep " in line]
    assert rows and all(" keep 1 " in line for line in rows)


def test_fkd_lossy_import_keeps_the_reader_distribution(tmp_path: Path) -> None:
    """FKD labels re-encoded: export gives back the top-k probabilities."""
    write_fkd(tmp_path / "f", temp=4.0)
    options = ImportOptions(num_classes=12, temperature=4.0)
    choice = CodecChoice(name="dense", options={"dtype": "fp32"})
    import_store(
        tmp_path / "f", "fkd", tmp_path / "a.lz", options=options, codec=choice
    )
    export_archive(tmp_path / "a.lz", None, tmp_path / "out")
    for name in files_of(tmp_path / "f"):
        a = load_torch_file(tmp_path / "f" / name)
        b = load_torch_file(tmp_path / "out" / name)
        assert (
            same(a[:2], b[:2]) and b[2].dtype == a[2].dtype and b[2].shape == a[2].shape
        )
        assert np.array_equal(
            b[2][:, 0], a[2][:, 0]
        )  # same class ids in the same order
        assert np.allclose(b[2][:, 1], a[2][:, 1], atol=1e-5)


def test_import_and_export_hold_one_file_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every loaded file's tensors are freed before the next file but one is read."""
    import gc
    import weakref

    import labelzip.interop.fkd_mix as fkd_mix

    write_sre2l(tmp_path / "s", num_images=24, batch_size=4, epochs=3)
    live: list[list[weakref.ref[torch.Tensor]]] = []
    peak = 0

    def tracked(path: Path, *, root: Path | None = None) -> Any:
        nonlocal peak
        gc.collect()
        alive = sum(any(r() is not None for r in refs) for refs in live)
        peak = max(peak, alive)
        obj = load_torch_file(path, root=root)
        live.append([weakref.ref(x) for x in obj if isinstance(x, torch.Tensor)])
        return obj

    monkeypatch.setattr(fkd_mix, "load_torch_file", tracked)
    import_store(tmp_path / "s", "sre2l", tmp_path / "a.lz", options=SRE2L_OPTIONS)
    assert len(live) > 18 and peak <= 1
    saved: list[weakref.ref[torch.Tensor]] = []
    real_save = torch.save

    def save(obj: Any, path: Path) -> None:
        nonlocal peak
        gc.collect()
        peak = max(peak, sum(r() is not None for r in saved))
        saved.extend(weakref.ref(x) for x in obj if isinstance(x, torch.Tensor))
        real_save(obj, path)

    peak = 0
    monkeypatch.setattr(torch, "save", save)
    export_archive(tmp_path / "a.lz", None, tmp_path / "out")
    assert len(saved) > 18 * 3 and peak <= 4  # at most the previous file's tensors


def test_fkd_reader_option(tmp_path: Path) -> None:
    write_fkd(tmp_path / "f", classes=1, images_per_class=1)
    renorm = ImportOptions(num_classes=12, extra={"reader": "renorm"})
    store = get_format("fkd").open(tmp_path / "f", renorm)
    record = next(iter(store.records()))
    probs = torch.softmax(store.to_dense(record), dim=1)
    assert record.topk_values is not None and record.topk_ids is not None
    kept = record.topk_values.double() / record.topk_values.double().sum(
        1, keepdim=True
    )
    assert torch.allclose(probs.gather(1, record.topk_ids).double(), kept, atol=1e-5)
    with pytest.raises(InputError, match="reader='x'"):
        get_format("fkd").open(
            tmp_path / "f", ImportOptions(num_classes=12, extra={"reader": "x"})
        )


def test_non_finite_logits_name_the_file(tmp_path: Path) -> None:
    write_sre2l(tmp_path / "s", epochs=1)
    path = tmp_path / "s/epoch_0/batch_1.tar"
    obj = torch.load(path, weights_only=False)
    obj[5][0, 0] = float("inf")  # an fp16 overflow
    torch.save(obj, path)
    expect_import_error(
        tmp_path / "s", "sre2l", r"^epoch_0/batch_1.tar: .*NaN or Inf", SRE2L_OPTIONS
    )


def test_recorded_sampler_rebuilds_the_batches(tmp_path: Path) -> None:
    """SRe2L files name no images: seed, batch size and image count rebuild them."""
    batches = write_sre2l(tmp_path / "s", num_images=10, batch_size=4, epochs=3)
    import_store(tmp_path / "s", "sre2l", tmp_path / "a.lz", options=SRE2L_OPTIONS)
    with ArchiveReader(tmp_path / "a.lz") as reader:
        sampler = reader.header.user["interop"]["sampler"]
    gen = torch.Generator().manual_seed(sampler["seed"])
    order = torch.utils.data.RandomSampler(range(sampler["num_images"]), generator=gen)
    batcher = torch.utils.data.BatchSampler(order, sampler["batch_size"], False)
    assert [[list(b) for b in batcher] for _ in range(3)] == batches


def test_unknown_format_is_one_line(tmp_path: Path, cli: Callable[..., CliRun]) -> None:
    write_sre2l(tmp_path / "store")
    run = cli(
        "import", "--format", "fkd-mix", tmp_path / "store", "-o", tmp_path / "a.lz"
    )
    assert run.refused("unknown label-store format 'fkd-mix'") and "sre2l" in run.err
    assert not (tmp_path / "a.lz").exists()


def test_output_inside_the_store_is_refused(
    tmp_path: Path, cli: Callable[..., CliRun]
) -> None:
    store = tmp_path / "store"
    write_sre2l(store)
    before = sorted(p.name for p in store.rglob("*"))
    run = cli("import", "--format", "sre2l", store, "--sampler-seed", 42,
              "--batch-size", 4, "-o", store / "labels.lz")  # fmt: skip
    assert run.refused("inside the store")
    assert sorted(p.name for p in store.rglob("*")) == before
