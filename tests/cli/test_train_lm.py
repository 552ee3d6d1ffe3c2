"""``labelzip train-lm``: labels / online / CE students from a relabel-lm archive."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from labelzip.cli import main
from labelzip.lm.student import StudentConfig, build_student

from ..lm.conftest import make_tokenizer, save_tiny_teacher
from ..lm.test_relabel import write_documents

SMALL = ["--layers", "1", "--hidden", "32", "--heads", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("train_cli")
    teacher = save_tiny_teacher(folder / "teacher")
    docs = write_documents(folder / "docs")
    archive = folder / "labels.lz"
    code = main(
        [
            "relabel-lm",
            "--teacher",
            str(teacher),
            "--corpus",
            str(docs),
            "--seq-len",
            "16",
            "--validation-fraction",
            "0.2",
            "--max-train-windows",
            "12",
            "--codec",
            "topk-tail",
            "--k",
            "8",
            "--quiet",
            "-o",
            str(archive),
        ]
    )
    assert code == 0
    return teacher, docs, archive


def _train(teacher: Path, *extra: str) -> list[str]:
    return ["train-lm", "--teacher", str(teacher), *SMALL, "--steps", "3", *extra]


def test_three_modes_from_an_archive(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, _, archive = setup
    args = _train(teacher, "--labels", str(archive), "--batch-size", "4", "--json")
    assert main([*args, "--save-dir", str(tmp_path / "students")]) == 0
    report = json.loads(capsys.readouterr().out)
    # the corpus is rebuilt from the archive's recipe: 12 windows of 16 tokens
    assert report["train_windows"] == [12, 16]
    assert set(report["modes"]) == {"labels", "online", "ce"}
    for scores in report["modes"].values():
        assert scores["perplexity"] > 1 and scores["kl_to_teacher"] >= 0
        assert scores["tokens_seen"] == 3 * 4 * 16 and len(scores["history"]) == 1
    assert report["labels"]["codec"] == "topk-tail"
    assert "perplexity_gap_to_online" in report
    assert (tmp_path / "students" / "labels" / "config.json").is_file()


def test_text_table_and_default_modes(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, docs, _ = setup
    args = _train(teacher, "--corpus", str(docs), "--seq-len", "16", "--tokens", "128")
    assert main([*args, "--batch-size", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train 8 x 16 tokens" in out
    assert "online" in out and "ce" in out and "labels " not in out


def test_wrong_archive_tokenizer_or_student_exit_2(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, docs, archive = setup
    # another split seed: 12 windows of 16 tokens again, but other text
    args = _train(teacher, "--labels", str(archive), "--split-seed", "1")
    assert main(args) == 2
    assert "was made from another corpus" in capsys.readouterr().err
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher, other)
    make_tokenizer(extra_tokens=("zebra",)).save_pretrained(other)
    assert main(_train(other, "--labels", str(archive))) == 2
    assert "was made with another tokenizer" in capsys.readouterr().err
    student = tmp_path / "student"
    wide = build_student(StudentConfig(hidden_size=16, num_heads=2), vocab_size=263)
    wide.save_pretrained(student)
    make_tokenizer(extra_tokens=("zebra",)).save_pretrained(student)
    args = _train(teacher, "--labels", str(archive), "--student", str(student))
    assert main(args) == 2
    assert "student tokenizer does not match the teacher's" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--modes", "labels"], "mode 'labels' needs --labels ARCHIVE"),
        (["--modes", "ce,kd"], "--modes must list distinct modes"),
        (["--labels", "missing.lz"], "label archive 'missing.lz' does not exist"),
        (["--ce-weight", "2"], "invalid training options"),
        (["--batch-size", "999", "--modes", "ce"], "batch_size 999 exceeds the"),
    ],
)
def test_bad_options_exit_2(
    setup: tuple[Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    teacher, docs, _ = setup
    args = _train(teacher, "--corpus", str(docs), "--seq-len", "16", *extra)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("labelzip train-lm: error:") and message in err
