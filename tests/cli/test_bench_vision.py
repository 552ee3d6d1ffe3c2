"""`labelzip bench vision`, in-process on a tiny Fashion-MNIST-format folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from labelzip.cli import main

torch.set_num_threads(1)


def test_bench_vision_json_and_report_files(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["bench", "vision", "--data-dir", str(data_dir), "--frameworks", "random"]
    argv += ["--ipcs", "3", "--epochs", "3:30", "--codecs", "topk-ms"]
    argv += ["--ratios", "2", "1e6", "--student-epochs", "2", "--teacher-epochs", "1"]
    argv += ["--baseline-epochs", "1", "--threads", "1", "--out-dir", str(out)]
    assert main([*argv, "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert [(r["codec"], r["target_ratio"]) for r in rows] == [
        ("dense", None), ("topk-ms", 2.0),
    ]  # fmt: skip
    # 30 images x 30 views x 10 classes x 2 B of dense fp16 logits
    assert report["settings"][0]["dense_fp16_bytes"] == 18000
    assert rows[1]["ratio"] >= 2.0 and rows[1]["ratio_vs_shipped"] == rows[1]["ratio"]
    assert rows[0]["retention"] == 1.0
    assert [(s["codec"], s["target_ratio"]) for s in report["skipped"]] == [
        ("topk-ms", 1e6)
    ]
    assert report["config"]["epochs_per_ipc"] == {"3": 30}
    assert report["full_data_baseline"]["images"] == 300
    assert sorted(report["files"]) == sorted(
        str(out / f"vision_bench.{ext}") for ext in ("json", "md", "png")
    )
    assert (out / "vision_archives" / "random_ipc3_topk-ms_2x.lz").is_file()
    # Markdown on stdout, progress lines on stderr; the teacher is cached now.
    again = ["--baseline-epochs", "0", "--ratios", "2", "--settings", "random:3"]
    assert main([*argv, *again, "--student-seeds", "2"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"\| topk-ms \| 2x \|.*\d%\ \(\d+\.\d / \d+\.\d\)", captured.out)
    assert "## random, IPC 3" in captured.out and "wrote " in captured.out
    assert "Full-data baseline" not in captured.out
    assert "[random IPC 3] student 2/2 trained" in captured.err
    assert "teacher test accuracy" in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--codecs", "zip"], r"invalid benchmark options: codecs: unknown codecs"),
        (["--epochs", "ten"], r"--epochs expects N or IPC:N .* got 'ten'"),
        (["--ratios", "0.5"], r"ratios must be > 1, got \[0.5\]"),
        (["--threads", "0"], r"--threads must be >= 1, got 0"),
        (["--student-seeds", "0"], r"student_seeds: .*greater than or equal to 1"),
        (["--archive-seeds", "0"], r"archive_seeds: .*greater than or equal to 1"),
        (["--distill-option", "steps=3"], r"expects FRAMEWORK:KEY=VALUE"),
        (["--settings", "sre2l"], r"--settings expects FRAMEWORK:IPC .* got 'sre2l'"),
        (["--frameworks", "fkd"], r"frameworks: unknown frameworks \['fkd'\]"),
    ],
)
def test_bench_vision_bad_options_are_one_line(
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = ["bench", "vision", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labelzip bench: error:") and len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_bench_lists_both_suites(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "lm" in text and "vision" in text
