"""The vision benchmark end to end on a tiny synthetic dataset: rows, references, reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labelzip.archive import ArchiveReader
from labelzip.augment import ViewConfig
from labelzip.bench.vision import (
    SHIPPED_LABEL_RATIO,
    VisionBenchConfig,
    archive_seed_summary,
    markdown_report,
    run_vision_bench,
    shipped_ratio,
    write_report,
)
from labelzip.pipelines.quickstart import ROW_SPECS
from labelzip.pipelines.train_student import StudentConfig
from labelzip.selection.auto import AUTO_KEY, AutoConfig
from labelzip.storage import storage_table

from ..pipelines.conftest import LinearTeacher, make_dataset


def _config(**kw: object) -> VisionBenchConfig:
    base: dict[str, object] = {
        "frameworks": ("random", "lpld"),
        "ipcs": (5,),
        "epochs": 50,  # 20 images x 50 views = 1000 labels, 8 kB as fp16
        "codecs": ("topk-ms", "lpld"),
        "ratios": (2.0, 1e5),  # 1e5x is 0.08 bytes: unreachable for every codec
        "teacher_epochs": 1,
        "view": ViewConfig(output_size=28, scale=(0.5, 1.0), mix="cutmix"),
        "student": StudentConfig(width=8, depth=2, batch_size=10, lr=5e-3, epochs=3),
        "distill_options": {"lpld": {"steps": 2, "batch_size": 20}},
        "baseline_epochs": 1,
    }
    return VisionBenchConfig(**{**base, **kw})


def test_vision_bench_end_to_end(tmp_path: Path) -> None:
    train, test = make_dataset(200, seed=1), make_dataset(80, seed=2)
    lines: list[str] = []
    report = run_vision_bench(
        _config(),
        train_set=train,
        test_set=test,
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "teachers",
        log=lines.append,
    )
    rows = report["rows"]
    assert [(r["framework"], r["codec"], r["target_ratio"]) for r in rows] == [
        ("random", "dense", None), ("random", "topk-ms", 2.0), ("random", "lpld", 2.0),
        ("lpld", "dense", None), ("lpld", "topk-ms", 2.0), ("lpld", "lpld", 2.0),
    ]  # fmt: skip
    dense = {r["framework"]: r for r in rows if r["codec"] == "dense"}
    for row in rows:
        assert row["ipc"] == 5 and 0.0 <= row["accuracy"] <= 1.0
        # retention against the dense student of the same framework
        ref = dense[row["framework"]]["accuracy"]
        assert row["retention"] == pytest.approx(row["accuracy"] / ref)
        # both ratio references: dense fp16 (8,000 B) and the shipped labels
        assert row["ratio"] == pytest.approx(8000 / row["label_bytes"])
        shipped = 40.0 if row["framework"] == "lpld" else 1.0
        assert row["ratio_vs_shipped"] == pytest.approx(row["ratio"] / shipped)
        # 20 grayscale 28 px images in the storage module's JPEG model
        assert row["image_bytes"] == 20 * 480
        assert row["total_bytes"] == row["label_bytes"] + row["image_bytes"]
        stem = f"{row['framework']}_ipc5_{row['codec']}"
        stem += "" if row["codec"] == "dense" else "_2x"
        assert (tmp_path / "work" / f"{stem}.lz").stat().st_size == row["label_bytes"]
    for row in rows:
        if row["codec"] != "dense":
            assert row["ratio"] >= 2.0 and row["kl"] > 0
    # dense fp16 meets 2x only by keeping fewer views (LPLD pruning)
    assert [r["views_kept"] < 1.0 for r in rows if r["codec"] == "lpld"] == [True] * 2
    assert {r["views_kept"] for r in rows if r["codec"] == "dense"} == {1.0}
    skipped = report["skipped"]
    assert {(s["framework"], s["codec"], s["target_ratio"]) for s in skipped} == {
        (f, c, 1e5) for f in ("random", "lpld") for c in ("topk-ms", "lpld")
    }
    assert all("cannot meet" in s["reason"] or "bytes" in s["reason"] for s in skipped)
    assert report["shipped_ratios"] == {"random": 1.0, "lpld": 40.0}
    assert 0 <= report["teacher"]["accuracy"] <= 1
    assert 0 <= report["full_data_baseline"]["accuracy"] <= 1
    assert report["full_data_baseline"]["images"] == 200
    assert [s["num_views"] for s in report["settings"]] == [1000, 1000]
    assert any("student 3/3 trained" in line for line in lines)
    # storage: this run's setting and ImageNet-1K IPC 10/50 for context
    storage = {(s["dataset"], s["ipc"], s["framework"]) for s in report["storage"]}
    assert ("imagenet-1k", 50, "labelzip@2x") in storage
    assert ("synthetic", 5, "lpld") in storage
    (sre2l,) = storage_table(dataset="imagenet-1k", framework="sre2l", ipc=10)
    got = [
        s for s in report["storage"] if s["dataset"] == "imagenet-1k" and s["ipc"] == 10
    ]
    assert got[0]["label_total_bytes"] == sre2l.label_total_bytes
    at2 = next(s for s in got if s["framework"] == "labelzip@2x")
    assert at2["label_total_bytes"] == sre2l.reference_bytes // 2
    # the reports
    paths = write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == [
        "vision_bench.json", "vision_bench.md", "vision_bench.png",
    ]  # fmt: skip
    assert json.loads(paths[0].read_text())["rows"] == rows
    text = paths[1].read_text()
    assert text == markdown_report(report)
    assert "## lpld, IPC 5" in text and "| topk-ms | 100000x | skipped: " in text
    assert "## Storage" in text and "labelzip@2x" in text
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_reference_and_config_errors() -> None:
    assert shipped_ratio("lpld") == SHIPPED_LABEL_RATIO["lpld"] == 40.0
    assert shipped_ratio("sre2l") == shipped_ratio("rded") == 1.0
    assert VisionBenchConfig(codecs=("dense", "vqae")).codecs == ("vqae",)
    assert VisionBenchConfig(epochs_per_ipc={50: 100}).epochs_for(50) == 100
    assert VisionBenchConfig().epochs_for(10) == 300
    pairs = VisionBenchConfig(settings=(("random", 10), ("lpld", 50))).pairs()
    assert pairs == [("random", 10), ("lpld", 50)]
    assert VisionBenchConfig(ipcs=(10,), frameworks=("rded", "cda")).pairs() == [
        ("rded", 10), ("cda", 10),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown frameworks \['import'\]"):
        VisionBenchConfig(frameworks=("import",))
    with pytest.raises(ValueError, match=r"bad settings \[\('random', 0\)\]"):
        VisionBenchConfig(settings=(("random", 0),))
    with pytest.raises(ValueError, match=r"unknown codecs \['zip'\]"):
        VisionBenchConfig(codecs=("zip",))
    with pytest.raises(ValueError, match=r"ratios must be > 1, got \[1.0\]"):
        VisionBenchConfig(ratios=(1.0, 10.0))


def test_unreachable_fixed_rate_row_is_skipped_before_relabelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A row without auto-pruning is checked by the codec's own rate control.
    spec = {"codec": "topk", "options": {"decoder": "ms", "k": 2}}
    monkeypatch.setitem(ROW_SPECS, "topk-fixed", spec)
    config = _config(frameworks=("random",), codecs=("topk-fixed",), ratios=(50.0,))
    report = run_vision_bench(
        config.model_copy(update={"baseline_epochs": 0}),
        train_set=make_dataset(200, seed=1),
        test_set=make_dataset(40, seed=2),
        work_dir=tmp_path / "work",
        teacher=(LinearTeacher(4, seed=0), "linear"),  # a given teacher: no training
    )
    assert report["teacher"]["id"] == "linear" and not report["teacher"]["from_cache"]
    assert report["teacher"]["accuracy"] > 0.5  # the class blocks are easy
    assert report["full_data_baseline"] is None
    assert not (tmp_path / "teachers").exists()
    assert [r["codec"] for r in report["rows"]] == ["dense"]
    (item,) = report["skipped"]
    assert item["codec"] == "topk-fixed" and item["target_ratio"] == 50.0
    assert item["reason"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "random_ipc5_dense.lz"
    ]


def _run_random_2x(tmp_path: Path, codec: str, **kw: object) -> dict[str, Any]:
    """The random set at 2x, one compressed row, no full-data baseline."""
    config = _config(
        frameworks=("random",), codecs=(codec,), ratios=(2.0,), baseline_epochs=0, **kw
    )
    return run_vision_bench(
        config,
        train_set=make_dataset(200, seed=1),
        test_set=make_dataset(80, seed=2),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "teachers",
    )


def test_several_student_seeds_report_their_mean(tmp_path: Path) -> None:
    report = _run_random_2x(tmp_path, "topk-ms", student_seeds=2)
    rows = report["rows"]
    assert [r["codec"] for r in rows] == ["dense", "topk-ms"]
    for row in rows:
        assert len(row["accuracies"]) == 2
        assert row["accuracy"] == pytest.approx(sum(row["accuracies"]) / 2)
    assert rows[1]["retention"] == pytest.approx(
        rows[1]["accuracy"] / rows[0]["accuracy"]
    )
    table = markdown_report(report)
    each = " / ".join(f"{100 * a:.1f}" for a in rows[1]["accuracies"])
    assert f"({each})" in table


def test_archive_seeds_write_one_archive_each_and_report_their_spread(
    tmp_path: Path,
) -> None:
    report = _run_random_2x(tmp_path, "lpld", archive_seeds=2)
    rows = report["rows"]
    # dense once (its archive has no seed to vary), the pruned row per seed
    assert [(r["codec"], r["archive_seed"]) for r in rows] == [
        ("dense", 0), ("lpld", 0), ("lpld", 1),
    ]  # fmt: skip
    work = tmp_path / "work"
    first, second = (work / f"random_ipc5_lpld_2x_s{s}.lz" for s in (0, 1))
    assert first.read_bytes() != second.read_bytes()  # other kept views
    for path, seed in ((first, 0), (second, 1)):
        with ArchiveReader(path) as reader:
            assert reader.info()["prune"]["seed"] == seed
    (group,) = report["archive_summary"]
    means = [rows[1]["accuracy"], rows[2]["accuracy"]]
    assert group["archive_accuracies"] == means
    assert group["accuracy"] == pytest.approx(sum(means) / 2)
    assert group["accuracy_se"] == pytest.approx(abs(means[0] - means[1]) / 2)
    table = markdown_report(report)
    assert "| lpld (seed 1) | 2x |" in table
    assert "Across archive seeds" in table and "| lpld | 2x | 2 |" in table


def test_archive_seed_summary_groups_and_standard_error() -> None:
    def row(codec: str, target: float | None, acc: float, seed: int) -> dict:
        return {
            "framework": "random", "ipc": 10, "codec": codec, "target_ratio": target,
            "accuracy": acc, "retention": acc / 0.8, "ratio": 100.0 + seed,
            "views_kept": 0.04, "kl": 0.1, "archive_seed": seed,
        }  # fmt: skip

    rows = [
        row("dense", None, 0.8, 0),
        *(row("auto", 100.0, a, s) for s, a in enumerate((0.60, 0.64, 0.62, 0.66))),
        row("topk-ms", 100.0, 0.5, 0),  # one archive: no spread to report
    ]
    (group,) = archive_seed_summary(rows)
    assert group["codec"] == "auto" and group["archive_seeds"] == [0, 1, 2, 3]
    assert group["accuracy"] == pytest.approx(0.63)
    # sample standard deviation of the four means over sqrt(4)
    assert group["accuracy_se"] == pytest.approx(0.0129099, rel=1e-4)
    assert group["retention"] == pytest.approx(0.63 / 0.8)
    assert group["ratio"] == pytest.approx(101.5)
    # rows without a KL (e.g. the compress benchmark's) give the group none
    (bare,) = archive_seed_summary([{**r, "kl": None} for r in rows])
    assert bare["kl"] is None and bare["accuracy"] == group["accuracy"]


def test_auto_row_is_a_default_and_records_its_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = VisionBenchConfig().codecs
    assert {"auto", "vqae", "vqae-ctx", "ctx-transform"} <= set(defaults)
    fast = AutoConfig(steps=10, confirm_steps=20)
    monkeypatch.setitem(ROW_SPECS, "auto", {"codec": "auto", "auto": fast})
    config = _config(frameworks=("random",), codecs=("auto",), baseline_epochs=0)
    report = run_vision_bench(
        config,
        train_set=make_dataset(200, seed=1),
        test_set=make_dataset(40, seed=2),
        work_dir=tmp_path / "work",
        teacher=(LinearTeacher(4, seed=0), "linear"),
    )
    rows = {(r["codec"], r["target_ratio"]) for r in report["rows"]}
    assert rows == {("dense", None), ("auto", 2.0)}
    (item,) = report["skipped"]  # 1e5x: no candidate reaches it
    assert item["codec"] == "auto" and item["target_ratio"] == 1e5
    with ArchiveReader(tmp_path / "work" / "random_ipc5_auto_2x.lz") as reader:
        record = reader.header.user[AUTO_KEY]
        assert reader.info()["codec"] == record["chosen"]["codec"]
