"""`torchrun -m labelzip import`: gloo ranks on CPU give the single-process bytes,
lossless and re-encoded, and a bad file ends in one clear error per rank; `--resume`
continues an interrupted import to the same bytes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labelzip.cli import main as cli_main
from labelzip.faults import FAULT_ENV
from labelzip.pipelines import import_run
from labelzip.pipelines.partial import PART_TAG, find_partials, read_partial

from .fixtures import write_lpqld, write_sre2l

Run = Callable[..., subprocess.CompletedProcess[str]]

# case -> (format, store options, codec argv); records of 8 labels, chunks of 25
CASES = {
    "lossless": ("sre2l", ["--sampler-seed", "42", "--batch-size", "8"], []),
    "topk": (
        "sre2l",
        ["--sampler-seed", "42", "--batch-size", "8"],
        ["--codec", "topk", "--k", "3"],
    ),
    "auto": (
        "sre2l",
        ["--sampler-seed", "42", "--batch-size", "8"],
        ["--ratio", "3", "--auto-steps", "20"],
    ),
    "lossless-topk": ("lpqld", ["--num-classes", "16"], []),
    "vqae": (
        "sre2l",
        ["--sampler-seed", "42", "--batch-size", "8"],
        ["--codec", "vqae", "--ratio", "3", "--opt", "steps=30"],
    ),
}


def _store(root: Path, fmt: str) -> Path:
    store = root / "store"
    if fmt == "sre2l":
        write_sre2l(store, num_images=40, batch_size=8, epochs=3, num_classes=200)
    else:
        write_lpqld(store, num_images=40, batch_size=8, epochs=4, num_classes=16, k=3)
    return store


def _argv(case: str, store: Path, out: Path) -> list[str]:
    fmt, options, codec = CASES[case]
    head = ["import", str(store), "--format", fmt, "-o", str(out), "--quiet"]
    return [*head, "--chunk-size", "25", *options, *codec]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        line
        for line in done.stderr.splitlines()
        if line.startswith("labelzip import: error:")
    ]


@pytest.mark.parametrize(
    ("case", "ranks"),
    [
        ("lossless", 2),
        ("topk", 3),
        ("auto", 2),
        ("lossless-topk", 2),
        pytest.param("vqae", 3, marks=pytest.mark.slow),
    ],
)
def test_ranks_write_the_single_process_bytes(
    torchrun: Run, tmp_path: Path, case: str, ranks: int
) -> None:
    store = _store(tmp_path, CASES[case][0])
    one, many = tmp_path / "one.lz", tmp_path / "many.lz"
    assert cli_main(_argv(case, store, one)) == 0
    done = torchrun(ranks, _argv(case, store, many))
    assert done.returncode == 0, done.stderr
    assert many.read_bytes() == one.read_bytes()
    assert done.stdout.count("wrote ") == 1  # rank 0 reports, once
    assert _leftovers(tmp_path) == []


def test_a_bad_file_in_one_ranks_share_is_one_error_per_rank(
    torchrun: Run, tmp_path: Path
) -> None:
    store = _store(tmp_path, "sre2l")
    path = store / "epoch_2" / "batch_3.tar"  # labels 104..111: rank 1's chunks
    obj = torch.load(path, weights_only=False)
    obj[5][0, 0] = float("inf")
    torch.save(obj, path)
    out = tmp_path / "never.lz"
    done = torchrun(2, _argv("lossless", store, out))
    assert done.returncode != 0
    errors = _errors(done)
    assert len(errors) == 2, done.stderr
    assert all("epoch_2/batch_3.tar: " in e and "NaN or Inf" in e for e in errors)
    assert any("rank 1 of 2 failed" in e for e in errors)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_fit_that_fails_on_rank_0_stops_every_rank(
    torchrun: Run, tmp_path: Path
) -> None:
    store = _store(tmp_path, "sre2l")
    out = tmp_path / "never.lz"
    argv = _argv("auto", store, out)
    argv[argv.index("3")] = "1e6"  # a ratio no codec meets
    done = torchrun(2, argv)
    assert done.returncode != 0
    errors = _errors(done)
    assert len(errors) == 2, done.stderr
    assert any("rank 0 failed before encoding (fitting the codec)" in e for e in errors)
    assert not out.exists() and _leftovers(tmp_path) == []


def _interrupted(monkeypatch: pytest.MonkeyPatch, argv: list[str], chunks: int) -> int:
    """Run `labelzip import ARGV` in-process, SIGTERMed after ``chunks`` chunks."""
    with monkeypatch.context() as patch:
        patch.setenv(FAULT_ENV, f"term@0:{chunks}")
        return cli_main(argv)


@pytest.mark.parametrize("case", ["lossless", "topk", "auto", "lossless-topk"])
def test_resume_after_an_interrupt_gives_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    store = _store(tmp_path, CASES[case][0])
    whole, out = tmp_path / "whole.lz", tmp_path / "resumed.lz"
    assert cli_main(_argv(case, store, whole)) == 0  # no --resume: import_store
    argv = [*_argv(case, store, out), "--resume"]
    assert _interrupted(monkeypatch, argv, 2) == 130
    assert not out.exists()
    (partial,) = find_partials(out)
    assert len(read_partial(partial)[1]) == 2
    assert _leftovers(tmp_path) == [partial.name]
    assert cli_main(argv) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert _leftovers(tmp_path) == []


def test_an_import_without_resume_removes_the_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path, "sre2l")
    out = tmp_path / "again.lz"
    argv = _argv("topk", store, out)
    assert _interrupted(monkeypatch, [*argv, "--resume"], 2) == 130
    assert len(find_partials(out)) == 1
    assert cli_main(argv) == 0
    assert "removed 1 partial file(s)" in caplog.text and PART_TAG in caplog.text
    assert "not resumed: no --resume" in caplog.text
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "other",
    [
        ["--k", "4"],  # codec options
        ["--seed", "1"],  # the fit sample and fit
        ["--chunk-size", "20"],
        ["--reference", "fp32"],
        ["--sampler-seed", "43"],  # what the store means: another input
    ],
)
def test_an_import_resumed_with_other_options_is_refused_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    other: list[str],
) -> None:
    store = _store(tmp_path, "sre2l")
    out = tmp_path / "other.lz"
    argv = [*_argv("topk", store, out), "--resume"]
    assert _interrupted(monkeypatch, argv, 2) == 130
    (partial,) = find_partials(out)
    capsys.readouterr()

    def no_fit(*args: object) -> None:
        raise AssertionError("refused before the fit")

    monkeypatch.setattr(import_run, "import_codec", no_fit)
    code = cli_main([*argv, *other])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--resume: the partial run in" in err and "drop --resume" in err
    assert partial.exists() and not out.exists()
