"""`labelzip relabel-lm --codec auto` (the default with a target), tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelzip.archive import ArchiveReader
from labelzip.cli import main
from labelzip.selection.auto import AUTO_KEY, LM_CANDIDATES

from .test_relabel_lm import _args, setup  # noqa: F401 (module fixture)

RUN = ["--tokens", "160", "--fit-windows", "3", "--fit-positions", "60"]
FAST = ["--auto-steps", "10", "--auto-confirm-steps", "20", "--quiet"]


def test_a_target_without_codec_chooses_among_lm_codecs_and_records(
    setup: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    teacher, docs = setup
    out = tmp_path / "a.lz"
    code = main(_args(teacher, docs, out, "--ratio", "10", "--json", *RUN, *FAST))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    rows = report["auto"]["candidates"]
    # an LM teacher: the LM candidates, whatever its (tiny) vocabulary
    assert {r["codec"] for r in rows} == {c for c, _ in LM_CANDIDATES}
    assert report["two_pass"]  # auto measures on the fitting sample
    auto = report["auto"]
    assert auto["fit_labels"] + auto["held_labels"] == report["fit_positions"] == 48
    with ArchiveReader(out) as reader:
        record = reader.header.user[AUTO_KEY]
        assert reader.info()["codec"] == record["chosen"]["codec"] == report["codec"]
    assert report["ratio"] >= 10 * 0.95

    text = tmp_path / "b.lz"
    argv = _args(teacher, docs, text, "--codec", "auto", "--ratio", "10")
    code = main([*argv, *RUN, *FAST])
    stdout = capsys.readouterr().out
    assert code == 0
    assert stdout.startswith("auto chose ")
    assert f"codec {record['chosen']['codec']}, two passes" in stdout
    assert text.read_bytes() == out.read_bytes()  # same seed, same bytes


def test_a_named_codec_and_no_target_still_work(
    setup: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    teacher, docs = setup
    argv = _args(teacher, docs, tmp_path / "t.lz", "--codec", "topk", "--ratio", "10")
    assert main([*argv, *RUN, "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "auto chose" not in stdout and "codec topk," in stdout
    assert main([*_args(teacher, docs, tmp_path / "d.lz"), *RUN, "--quiet"]) == 0
    assert "codec topk, one pass" in capsys.readouterr().out  # no target: topk
    with ArchiveReader(tmp_path / "t.lz") as reader:
        assert AUTO_KEY not in reader.header.user


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--codec", "auto"], "chooses for a target"),
        (["--ratio", "10", "--k", "4"], "need a named --codec"),
        (["--codec", "auto", "--ratio", "10", "--opt", "k=4"], "need a named --codec"),
        (["--ratio", "10", "--auto-temperature", "0"], "invalid --auto options"),
    ],
)
def test_auto_refuses_what_it_cannot_honour(
    setup: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    teacher, docs = setup
    out = tmp_path / "x.lz"
    assert main([*_args(teacher, docs, out, *extra), *RUN]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
