"""`torchrun -m labelzip relabel`: the teacher work split over gloo ranks on CPU gives
the single-process bytes, and faults end in one clear error per rank."""

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

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A saved 20-image, 10-class set and TorchScript teachers (10 and 7 classes)."""
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
    for name, classes in (("teacher", 10), ("seven", 7)):
        torch.manual_seed(0)
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
