"""``labelzip bench lm`` on the tiny teacher: archives, students, report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelzip.archive import ArchiveReader
from labelzip.bench.lm import PAPER_TOKENS, PAPER_VOCAB, LMBenchConfig, markdown_table
from labelzip.cli import main
from labelzip.lm.train import TrainLMConfig
from labelzip.selection.auto import AUTO_KEY

from ..lm.conftest import save_tiny_teacher
from ..lm.test_relabel import write_documents


def test_bench_lm_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = save_tiny_teacher(tmp_path / "teacher")
    docs = write_documents(tmp_path / "docs")
    args = [
        "bench", "lm", "--teacher", str(teacher), "--corpus", str(docs),
        "--tokens", "160", "--seq-len", "16", "--validation-windows", "4",
        "--codecs", "topk", "topk-tail", "--ratios", "10", "2000",
        "--steps", "2", "--batch-size", "2", "--layers", "1", "--hidden", "32",
        "--heads", "2", "--threads", "1", "--quiet", "--json",
        "--out-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"online", "ce", "topk@10x", "topk-tail@10x"}
    assert report["train_windows"] == [10, 16]
    for name in ("topk@10x", "topk-tail@10x"):
        row = rows[name]
        assert row["ratio"] >= 10 and row["bytes_per_token"] <= 262 * 2 / 10
        assert row["scores"]["perplexity"] > 1 and row["gap_to_online"] is not None
        assert row["paper_scale_bytes"] > 0
        assert set(row["seconds"]) == {"train", "relabel"}
        assert row["seconds"]["train"]["total"] > 0
        assert row["seconds"]["relabel"]["encode_codec"] > 0
    assert rows["ce"]["gap_to_ce"] == 0.0
    # 2000x is out of reach for both: skipped with the reason, not an error
    assert {s["codec"] for s in report["skipped"]} == {"topk", "topk-tail"}
    assert report["paper"]["tokens"] == PAPER_TOKENS == 1_114_112
    assert report["paper"]["dense_fp16_bytes"] == PAPER_TOKENS * PAPER_VOCAB * 2
    assert round(report["paper"]["claimed_ratio"]) == 560
    out = tmp_path / "out"
    assert json.loads((out / "lm_bench.json").read_text())["rows"] == report["rows"]
    assert (out / "lm_bench.md").read_text() == markdown_table(report)
    assert (out / "lm_bench.png").stat().st_size > 0
    assert (out / "lm_archives" / "lm_topk-tail_10x.lz").is_file()


def test_bench_lm_bad_options_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "lm", "--steps", "0", "--out-dir", str(tmp_path)]) == 2
    assert "invalid benchmark options" in capsys.readouterr().err


def test_bench_lm_auto_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"auto", "vqae-sparse", "vqae-rs"} <= set(LMBenchConfig().codecs)
    teacher = save_tiny_teacher(tmp_path / "teacher")
    docs = write_documents(tmp_path / "docs")
    args = [
        "bench", "lm", "--teacher", str(teacher), "--corpus", str(docs),
        "--tokens", "160", "--seq-len", "16", "--validation-windows", "4",
        "--codecs", "auto", "--ratios", "10", "2000",
        "--steps", "2", "--batch-size", "2", "--layers", "1", "--hidden", "32",
        "--heads", "2", "--threads", "1", "--quiet", "--json",
        "--out-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in report["rows"]} == {"online", "ce", "auto@10x"}
    # 2000x: no LM candidate reaches it
    assert [(s["codec"], s["target_ratio"]) for s in report["skipped"]] == [
        ("auto", 2000.0)
    ]
    path = tmp_path / "out" / "lm_archives" / "lm_auto_10x.lz"
    with ArchiveReader(path) as reader:
        record = reader.header.user[AUTO_KEY]
        assert reader.info()["codec"] == record["chosen"]["codec"]


def test_bench_lm_auto_scores_at_the_students_temperature(tmp_path: Path) -> None:
    from labelzip.archive import Layout
    from labelzip.bench.lm import _outputs

    layout = Layout(("window", "position"), (64, 16))
    for temperature in (1.0, 2.0):
        config = LMBenchConfig(
            codecs=("auto", "rskd"),
            ratios=(10.0,),
            train=TrainLMConfig(temperature=temperature),
        )
        outputs, _ = _outputs(config, tmp_path, layout, 2000)
        auto = {out.codec: out.auto for out in outputs}
        assert auto["rskd"] is None
        assert auto["auto"] is not None and auto["auto"].temperature == temperature
