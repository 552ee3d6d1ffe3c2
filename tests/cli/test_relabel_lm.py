"""``labelzip relabel-lm``: tiny teacher over user text files, JSON report, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelzip.archive import ArchiveReader
from labelzip.cli import main

from ..lm.conftest import save_tiny_teacher
from ..lm.test_relabel import write_documents


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("relabel_cli")
    return save_tiny_teacher(folder / "teacher"), write_documents(folder / "docs")


def _args(teacher: Path, docs: Path, out: Path, *extra: str) -> list[str]:
    return [
        "relabel-lm",
        "--teacher",
        str(teacher),
        "--corpus",
        str(docs),
        "--seq-len",
        "16",
        "--validation-fraction",
        "0.2",
        "--threads",
        "1",
        "-o",
        str(out),
        *extra,
    ]


def test_writes_an_archive_and_reports_json(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, docs = setup
    out = tmp_path / "tail.lz"
    code = main(
        _args(teacher, docs, out, "--codec", "topk-tail", "--ratio", "10", "--json")
        + ["--tokens", "160", "--fit-windows", "3", "--fit-positions", "30"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_sequences"] == 10 and report["seq_len"] == 16  # 160 tokens
    assert report["two_pass"] and report["fit_positions"] == 30
    assert report["teacher_positions"] == 160 + 3 * 16
    assert report["ratio"] >= 10 and report["total_bytes"] == out.stat().st_size
    assert report["peak_rss_mib"] > 0 and report["teacher"].startswith("teacher@")
    with ArchiveReader(out) as reader:
        assert reader.layout.shape == (10, 16)
        record = reader.header.user["lm"]
        assert record["corpus"]["config"]["max_train_windows"] == 10
        assert record["corpus"]["num_documents"] == 4


def test_text_report(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, docs = setup
    code = main(
        _args(teacher, docs, tmp_path / "k.lz", "--codec", "topk", "--k", "4")
        + ["--decoder", "mr", "--max-train-windows", "4", "--quiet"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "64 tokens (4 x 16) x V=262, codec topk, one pass" in out
    assert "bytes per token" in out and "peak RSS" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--seq-len", "100"],
            "seq_len 100 exceeds the teacher's maximum context of 64",
        ),
        (["--codec", "topk", "--k", "999"], "k=999 exceeds the 262 classes"),
        (
            ["--tokens", "10", "--max-train-windows", "2"],
            "--tokens or --max-train-windows",
        ),
        (["--codec", "topk", "--ratio", "100000"], "best reachable"),
        # pydantic errors: one line each (these were a traceback / three lines)
        (["--batch-size", "0"], "invalid relabel-lm options: batch_size: Input"),
        (["--ratio", "-1"], "ratio must be > 0, got -1.0"),
        (["--seq-len", "1"], "invalid corpus options: seq_len: Input should be"),
    ],
)
def test_bad_options_exit_2(
    setup: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    teacher, docs = setup
    assert main(_args(teacher, docs, tmp_path / "x.lz", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("labelzip relabel-lm: error:") and message in err
    assert err.count("\n") == 1  # one line, no traceback, no progress bars
    assert not (tmp_path / "x.lz").exists()


def test_bad_text_and_teacher_exit_2(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, docs = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("\n\n", encoding="utf-8")
    assert main(_args(teacher, empty, tmp_path / "x.lz")) == 2
    assert "is empty" in capsys.readouterr().err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("na\xefve".encode("latin-1"))
    assert main(_args(teacher, latin, tmp_path / "x.lz")) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert main(_args(tmp_path / "nope", docs, tmp_path / "x.lz")) == 2
    assert "neither 'smollm2-135m' nor an existing folder" in capsys.readouterr().err
    assert main(_args(teacher, docs, tmp_path / "no" / "x.lz")) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
