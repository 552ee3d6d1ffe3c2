"""`torchrun -m labelzip relabel`: the teacher work split over gloo ranks on CPU gives
the single-process bytes, and faults end in one clear error per rank; `--resume`
(one process or ranks) continues an interrupted run to the same bytes."""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.cli.relabel import main
from labelzip.distill import DistilledSet
from labelzip.faults import FAULT_ENV
from labelzip.pipelines.partial import PART_TAG, find_partials, read_partial

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A saved 20-image, 10-class set and TorchScript teachers (10, 7 and another
    10 classes)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 28, 28), generator=g, dtype=torch.uint8)
    distilled = DistilledSet(
        images=images,
        labels=torch.arange(10).repeat_interleave(2),
        class_names=tuple("abcdefghij"),
        method="random",
        ipc=2,
    )
    paths = {"set": distilled.save(tmp_path / "set.safetensors")}
    for name, classes, seed in (("teacher", 10, 0), ("seven", 7, 0), ("other", 10, 1)):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.AvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, classes),
        )
        paths[name] = tmp_path / f"{name}.ts"
        with warnings.catch_warnings():  # TorchScript is deprecated, still works
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(model).save(str(paths[name]))
    return paths


def _argv(
    files: dict[str, Path], out: Path, *extra: str, teacher: str = "teacher"
) -> list[str]:
    head = [str(files["set"]), "--teacher-file", str(files[teacher]), "-o", str(out)]
    return [
        *head,
        "--quiet",
        "--json",
        "--chunk-size",
        "7",
        "--batch-size",
        "6",
        *extra,
    ]


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line
        for line in done.stderr.splitlines()
        if line.startswith("labelzip relabel: error:")
    ]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# case -> relabel options: chunks of 7 views, teacher batches of 6 (they straddle)
CASES = {
    "one-pass": ["--epochs", "5"],  # every view in the fit sample
    "two-pass": ["--epochs", "6", "--fit-views", "30", "--codec", "topk", "--k", "3"],
    "pruned": [
        *("--epochs", "6", "--fit-views", "30", "--codec", "topk", "--k", "2"),
        *("--prune-keep", "0.5", "--store-augmentations"),
    ],
    "vqae": [
        "--epochs",
        "6",
        "--fit-views",
        "30",
        "--codec",
        "vqae",
        "--opt",
        "steps=20",
    ],
    "context": [
        *("--epochs", "6", "--fit-views", "30", "--codec", "ctx-transform"),
        *("--opt", "prior_steps=10", "--prune-keep", "0.5"),
    ],
    # a target and no codec: rank 0 measures the candidates, the ranks follow
    "auto": [
        *("--epochs", "32", "--ratio", "2"),
        *("--auto-steps", "10", "--auto-confirm-steps", "20"),
    ],
}


@pytest.mark.parametrize(
    ("case", "ranks"),
    [
        ("one-pass", 2),
        ("two-pass", 3),
        ("pruned", 2),
        ("auto", 2),
        pytest.param("vqae", 3, marks=pytest.mark.slow),
        pytest.param("context", 2, marks=pytest.mark.slow),
    ],
)
def test_ranks_write_the_single_process_bytes(
    torchrun: Run,
    tmp_path: Path,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    case: str,
    ranks: int,
) -> None:
    one, many = tmp_path / "one.lz", tmp_path / "many.lz"
    assert main(_argv(files, one, *CASES[case])) == 0
    single = json.loads(capsys.readouterr().out)
    done = torchrun(ranks, ["relabel", *_argv(files, many, *CASES[case])])
    assert done.returncode == 0, done.stderr
    assert many.read_bytes() == one.read_bytes()
    report = json.loads(done.stdout)  # rank 0 reports, once
    assert report["total_bytes"] == single["total_bytes"]
    assert report["teacher_views"] >= single["teacher_views"]
    assert _leftovers(tmp_path) == []


def test_a_teacher_that_fails_on_rank_0_stops_every_rank(
    torchrun: Run, tmp_path: Path, files: dict[str, Path]
) -> None:
    out = tmp_path / "never.lz"
    argv = _argv(files, out, "--epochs", "2", teacher="seven")
    done = torchrun(2, ["relabel", *argv])
    assert done.returncode != 0
    errors = _errors(done)
    assert len(errors) == 2, done.stderr
    assert all("the teacher outputs (6, 7)" in e for e in errors)
    assert any("rank 0 failed before encoding (fitting the codec)" in e for e in errors)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_full_disk_on_one_rank_leaves_nothing(
    torchrun: Run, tmp_path: Path, files: dict[str, Path]
) -> None:
    out = tmp_path / "full.lz"
    done = torchrun(
        2, ["relabel", *_argv(files, out, *CASES["two-pass"])], "enospc@1:2"
    )
    assert done.returncode != 0
    errors = _errors(done)
    assert len(errors) == 2 and all("No space left on device" in e for e in errors)
    assert any("rank 1 of 2 failed" in e for e in errors)
    assert not out.exists() and _leftovers(tmp_path) == []


def _interrupted(monkeypatch: pytest.MonkeyPatch, argv: list[str], chunks: int) -> int:
    """Run `labelzip relabel ARGV` in-process, SIGTERMed after ``chunks`` chunks."""
    with monkeypatch.context() as patch:
        patch.setenv(FAULT_ENV, f"term@0:{chunks}")
        return main(argv)


@pytest.mark.parametrize("case", ["one-pass", "two-pass", "pruned", "auto"])
def test_resume_after_an_interrupt_gives_the_same_bytes(
    tmp_path: Path,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    whole, out = tmp_path / "whole.lz", tmp_path / "resumed.lz"
    assert main(_argv(files, whole, *CASES[case])) == 0
    uninterrupted = json.loads(capsys.readouterr().out)
    argv = _argv(files, out, *CASES[case], "--resume")
    # a run started without --resume keeps its chunks too
    assert _interrupted(monkeypatch, argv[:-1], 3) == 130
    assert not out.exists()
    (partial,) = find_partials(out)
    assert len(read_partial(partial)[1]) == 3
    assert _leftovers(tmp_path) == [partial.name]
    capsys.readouterr()
    assert main(argv) == 0  # the views of 3 chunks are not labelled again
    assert out.read_bytes() == whole.read_bytes()
    assert _leftovers(tmp_path) == []
    views = json.loads(capsys.readouterr().out)["teacher_views"]
    if case in ("two-pass", "pruned"):  # the others label every view for the fit
        assert views < uninterrupted["teacher_views"]


def test_a_run_without_resume_removes_the_partial_file(
    tmp_path: Path,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "again.lz"
    argv = _argv(files, out, *CASES["two-pass"])
    assert _interrupted(monkeypatch, [*argv, "--resume"], 2) == 130
    assert len(find_partials(out)) == 1
    assert main(argv) == 0
    assert "removed 1 partial file(s)" in caplog.text and PART_TAG in caplog.text
    assert "not resumed: no --resume" in caplog.text
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "other",
    [
        ["--k", "4"],  # codec options
        ["--seed", "1"],  # the views
        ["--batch-size", "5"],  # the teacher batches
        ["--mix", "mixup"],  # the view recipe
        ["--teacher-file", "other"],  # the teacher (its weights name the input)
    ],
)
def test_a_resume_with_other_options_is_refused_in_one_line(
    tmp_path: Path,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    other: list[str],
) -> None:
    out = tmp_path / "other.lz"
    argv = _argv(files, out, *CASES["two-pass"], "--resume")
    assert _interrupted(monkeypatch, argv, 2) == 130
    (partial,) = find_partials(out)
    capsys.readouterr()
    if other[0] == "--teacher-file":
        changed = _argv(files, out, *CASES["two-pass"], "--resume", teacher="other")
    else:
        changed = [*argv, *other]
    code = main(changed)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--resume: the partial run in" in err and "drop --resume" in err
    assert partial.exists() and not out.exists()


def test_two_ranks_resume_an_interrupted_run(
    torchrun: Run, tmp_path: Path, files: dict[str, Path]
) -> None:
    whole, out = tmp_path / "whole.lz", tmp_path / "resumed.lz"
    assert main(_argv(files, whole, *CASES["two-pass"])) == 0
    argv = ["relabel", *_argv(files, out, *CASES["two-pass"], "--resume")]
    assert torchrun(2, argv, "term@1:2").returncode != 0
    partials = find_partials(out)
    assert sorted(w for _, _, w in partials.values()) == [2, 2]
    assert sum(len(read_partial(p)[1]) for p in partials) >= 2  # rank 1's two
    done = torchrun(2, argv)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert _leftovers(tmp_path) == []
