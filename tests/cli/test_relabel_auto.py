"""`labelzip relabel --codec auto` (the default with a target), in-process.

A 64-image, 10-class set with 32 views each: every candidate (the view-context
codecs included) is measured on held-out views in a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.archive import ArchiveReader, load_archive
from labelzip.cli.relabel import main
from labelzip.distill import DistilledSet
from labelzip.selection.auto import AUTO_KEY, CONTEXT_CANDIDATES

FAST = ["--auto-steps", "10", "--auto-confirm-steps", "20", "--epochs", "32"]
FAST += ["--quiet"]
RATIO = "4"


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, 10))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), generator=g, dtype=torch.uint8)
    distilled = DistilledSet(
        images=images,
        labels=torch.arange(10).repeat_interleave(7)[:64],
        class_names=tuple("abcdefghij"),
        method="random",
        ipc=7,
    )
    teacher = tmp_path / "teacher.ts"
    with pytest.warns(DeprecationWarning):  # TorchScript still works in torch 2.13
        torch.jit.script(_teacher()).save(str(teacher))
    return {"set": distilled.save(tmp_path / "set.safetensors"), "teacher": teacher}


def _run(
    files: dict[str, Path], out: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    argv = [str(files["set"]), "--teacher-file", str(files["teacher"]), *FAST]
    code = main([*argv, *extra, "-o", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_target_without_codec_measures_context_codecs_and_records(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    code, stdout, err = _run(files, out, capsys, "--ratio", RATIO, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    rows = report["auto"]["candidates"]
    names = {r["codec"] for r in rows}
    assert {c for c, _ in CONTEXT_CANDIDATES} <= names  # views have a context
    assert {"topk", "vqae"} <= names
    assert {1.0, 0.5, 0.25} <= {r["keep_fraction"] for r in rows}
    measured = [r for r in rows if r["kl"] is not None]
    assert any(r["codec"] in ("vqae-ctx", "ctx-transform") for r in measured)
    # the view split: a share of every sampled image's views is scored
    assert report["auto"]["held_labels"] == 64 * 8
    assert report["auto"]["fit_labels"] == 64 * 24
    with ArchiveReader(out) as reader:
        info = reader.info()
        record = reader.header.user[AUTO_KEY]
    assert info["codec"] == record["chosen"]["codec"] == report["codec"]
    assert (info["prune"] is None) == (record["chosen"]["keep_fraction"] == 1.0)
    assert info["ratio"] >= 4 * 0.95
    assert load_archive(out).shape == (32, 64, 10)

    text = tmp_path / "b.lz"
    code, stdout, err = _run(files, text, capsys, "--codec", "auto", "--ratio", RATIO)
    assert code == 0, err
    assert stdout.startswith("auto chose ")
    assert sum(" keep " in line for line in stdout.splitlines()) == len(rows) + 1
    assert "wrote " in stdout
    assert text.read_bytes() == out.read_bytes()  # same seed, same bytes


@pytest.mark.slow  # ~40-90 s: every candidate on 6400 views
def test_ctx_transform_candidates_are_measured_below_its_16_bit_floor(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """At 10x each of 100 views gets ~12 bits: ctx-transform's own rate control
    refuses that (16-bit floor), auto measures it there and at fewer views."""
    out = tmp_path / "a.lz"
    extra = ["--epochs", "100", "--ratio", "10", "--fit-views", "2048", "--json"]
    code, stdout, err = _run(files, out, capsys, *extra)
    assert code == 0, err
    rows = json.loads(stdout)["auto"]["candidates"]
    ctx = {r["keep_fraction"]: r for r in rows if r["codec"] == "ctx-transform"}
    assert ctx[1.0]["kl"] is not None, ctx[1.0]  # measured with every view
    assert {0.5, 0.25} <= {k for k, r in ctx.items() if r["kl"] is not None}


def test_a_named_codec_and_no_target_still_work(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = _run(
        files, tmp_path / "t.lz", capsys, "--codec", "topk", "--ratio", RATIO
    )
    assert code == 0, err
    assert "auto chose" not in stdout and "codec topk" in stdout
    code, stdout, err = _run(files, tmp_path / "d.lz", capsys)  # no target: dense
    assert code == 0, err
    assert "codec dense" in stdout
    with ArchiveReader(tmp_path / "t.lz") as reader:
        assert AUTO_KEY not in reader.header.user


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--codec", "auto"], "chooses for a target"),
        (["--ratio", RATIO, "--k", "2"], "need a named --codec"),
        (["--codec", "auto", "--ratio", RATIO, "--opt", "k=2"], "need a named --codec"),
        (["--ratio", RATIO, "--auto-prune"], "drop --auto-prune"),
        (["--ratio", RATIO, "--store-augmentations"], "--store-augmentations"),
        (["--ratio", RATIO, "--auto-steps", "0"], "invalid --auto options"),
    ],
)
def test_auto_refuses_what_it_cannot_honour(
    tmp_path: Path,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    code, _, err = _run(files, tmp_path / "x.lz", capsys, *extra)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.lz").exists()
