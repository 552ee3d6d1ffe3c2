"""NeMo-Aligner top-k logit JSONL: lossless import, byte-equal export, variants, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveReader
from labelzip.bench.lm_stores import lm_logits, write_nemo
from labelzip.errors import InputError
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import CodecChoice, export_archive, import_store
from labelzip.interop.formats import get_format

V = 500


def make_store(root: Path, *, mixed: bool = False) -> Path:
    store = root / "logits"
    store.mkdir(parents=True)
    logits = lm_logits(5, 9, V)
    write_nemo(store / "train_with_logits_0.jsonl", logits[:3], k=10)
    precision = torch.float32 if mixed else torch.bfloat16
    write_nemo(
        store / "train_with_logits_1.jsonl", logits[3:, :7], k=10, precision=precision
    )
    return store


@pytest.mark.parametrize("mixed", [False, True], ids=["bf16", "bf16+fp32"])
def test_lossless_import_and_byte_equal_export(tmp_path: Path, mixed: bool) -> None:
    store = make_store(tmp_path, mixed=mixed)
    account = import_store(store, "nemo-aligner", tmp_path / "a.lz")
    assert account.num_labels == 3 * 9 + 2 * 7
    with ArchiveReader(tmp_path / "a.lz") as reader:
        doc = reader.header.user["interop"]
        assert doc["value_dtype"] == ("float32" if mixed else "bfloat16")
        assert doc["position_keys"] == [
            "tokens",
            "labels",
            "loss_mask",
            "contexts",
            "answers",
        ]
        values, ids = reader.codec.decode_topk(reader.read_chunk(0))  # type: ignore[attr-defined]
        row = json.loads(
            (store / "train_with_logits_0.jsonl").read_text().splitlines()[0]
        )
        assert values[:9].double().tolist() == row["topk_logits"]
        assert ids[:9].tolist() == row["topk_token_ids"]
    export_archive(tmp_path / "a.lz", None, tmp_path / "out")
    for name in ("train_with_logits_0.jsonl", "train_with_logits_1.jsonl"):
        assert (store / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_single_file_and_lossy_export(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    single = store / "train_with_logits_0.jsonl"
    import_store(
        single,
        "nemo-aligner",
        tmp_path / "b.lz",
        codec=CodecChoice(
            name="topk", options={"k": 4, "decoder": "ms", "temperature": 1.0}
        ),
    )
    export_archive(tmp_path / "b.lz", None, tmp_path / "out")
    rows = [
        json.loads(line)
        for line in (tmp_path / "out" / single.name).read_text().splitlines()
    ]
    original = [json.loads(line) for line in single.read_text().splitlines()]
    assert [list(r) for r in rows] == [
        list(r) for r in original
    ]  # same keys, same order
    for new, old in zip(rows, original, strict=True):
        assert new["tokens"] == old["tokens"] and new["metadata"] == old["metadata"]
        top = torch.tensor(new["topk_logits"])
        assert bool(
            (top[:, 0] == 0).all()
        )  # logits minus their maximum, as NeMo writes
        assert [r[:4] for r in new["topk_token_ids"]] == [
            r[:4] for r in old["topk_token_ids"]
        ]


def test_k_that_differs_across_files_is_named(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    write_nemo(store / "train_with_logits_2.jsonl", lm_logits(1, 5, V), k=7)
    with pytest.raises(
        InputError, match="train_with_logits_2.jsonl:1: 7 top-k entries"
    ):
        get_format("nemo-aligner").open(store, ImportOptions())


def test_truncated_or_incomplete_rows_are_named(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    path = store / "train_with_logits_1.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])
    with pytest.raises(
        InputError, match="train_with_logits_1.jsonl:2: not a JSON line"
    ):
        get_format("nemo-aligner").open(store, ImportOptions())
    row = json.loads(text.splitlines()[0])
    del row["log_sum_exp_logits"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(
        InputError, match="train_with_logits_1.jsonl:1: no log_sum_exp_logits"
    ):
        get_format("nemo-aligner").open(store, ImportOptions())
    (store / "train_with_logits_1.jsonl").unlink()
    (store / "train_with_logits_0.jsonl").unlink()
    with pytest.raises(InputError, match="no .jsonl files"):
        get_format("nemo-aligner").open(store, ImportOptions())


def test_num_classes_bounds_the_ids(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(InputError, match="--num-classes 50"):
        get_format("nemo-aligner").open(store, ImportOptions(num_classes=50))
    assert (
        get_format("nemo-aligner").open(store, ImportOptions(num_classes=V)).num_classes
        == V
    )
