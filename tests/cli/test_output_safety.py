"""Outputs never destroy data: every writing command, from the issue's reproductions.

Each case is a command line that, before the output policy, exited 0 and replaced
an input, a device node or a symlink, or died with a traceback. Every refusal
must come before any work: one line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from labelzip.archive import load_archive
from labelzip.cli import BROKEN_PIPE_EXIT, main
from labelzip.outputs import TEMP_TAG, temp_sibling


@pytest.fixture
def logits_file(tmp_path: Path, make_logits: Callable[..., torch.Tensor]) -> Path:
    path = tmp_path / "logits.safetensors"
    save_file({"logits": make_logits(64, 10, 0)}, str(path))
    return path


@pytest.fixture
def archive(tmp_path: Path, logits_file: Path) -> Path:
    path = tmp_path / "labels.lz"
    argv = [
        "compress",
        str(logits_file),
        "--codec",
        "topk",
        "--k",
        "3",
        "-o",
        str(path),
    ]
    assert main([*argv, "--quiet"]) == 0
    return path


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and match in err, err


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_compress_onto_its_input_is_refused(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = logits_file.read_bytes()
    link, hard = tmp_path / "link.safetensors", tmp_path / "hard.safetensors"
    link.symlink_to(logits_file)
    os.link(logits_file, hard)
    for out in (logits_file, link, hard):
        argv = ["compress", str(logits_file), "--codec", "dense", "-o", str(out)]
        _refused(argv, capsys, "would destroy the input")
    assert logits_file.read_bytes() == before and link.is_symlink()
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"logits.safetensors", "link.safetensors", "hard.safetensors"}


def test_decompress_onto_its_archive_is_refused(
    tmp_path: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "labels.safetensors"  # an archive may carry any name
    archive.rename(renamed)
    before = renamed.read_bytes()
    _refused(
        ["decompress", str(renamed), "-o", str(renamed)],
        capsys,
        "would destroy the input",
    )
    assert renamed.read_bytes() == before


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_non_regular_outputs_are_refused(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "device":
        out = Path("/dev/null")
    else:
        out = tmp_path / "pipe"
        os.mkfifo(out)
    argv = ["compress", str(logits_file), "--codec", "dense", "-o", str(out)]
    _refused(argv, capsys, "is not a regular file")
    assert out.is_char_device() if kind == "device" else out.is_fifo()


def test_symlink_output_writes_its_target(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "runs" / "run1.lz"
    target.parent.mkdir()
    target.write_bytes(b"previous archive")
    link = tmp_path / "latest.lz"
    link.symlink_to(target)
    argv = [
        "compress",
        str(logits_file),
        "--codec",
        "dense",
        "--quiet",
        "-o",
        str(link),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert load_archive(target).shape == (64, 10)


def test_pseudo_filesystem_output_is_one_line(
    logits_file: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compress", str(logits_file), "--codec", "dense", "-o", "/proc/x.lz"]
    _refused(argv, capsys, "folder '/proc' does not accept new files")
    argv = ["decompress", str(archive), "-o", "/proc/x.safetensors"]
    _refused(argv, capsys, "folder '/proc' does not accept new files")


def test_no_space_left_is_one_line_and_leaves_no_partial_file(
    tmp_path: Path,
    archive: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full_disk(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full_disk)  # decompress streams with pwrite
    out = tmp_path / "dense.safetensors"
    out.write_bytes(b"old")
    argv = ["decompress", str(archive), "-o", str(out), "--quiet"]
    _refused(argv, capsys, f"no space left on device writing {str(out)!r}: free ")
    assert out.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if TEMP_TAG in p.name]


# Every other writing command, with its output flag and an input it reads.
COMMANDS: dict[str, Callable[[Path, str], list[str]]] = {
    "relabel": lambda src, out: ["relabel", str(src), "-o", out],
    "relabel-lm": lambda src, out: ["relabel-lm", "--corpus", str(src), "-o", out],
    "distill": lambda src, out: [
        "distill",
        "--method",
        "random",
        "--ipc",
        "1",
        "-o",
        out,
    ],
    "train": lambda src, out: ["train", str(src), str(src), "--save", out],
    "quickstart": lambda src, out: ["quickstart", "--plot", out],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_writing_command_checks_its_output_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    source = tmp_path / "input.safetensors"
    source.write_bytes(b"an input the command reads")
    argv = COMMANDS[command]
    for out, match in [
        ("/dev/null", "is not a regular file"),
        ("/proc/x.out", "does not accept new files"),
        (str(tmp_path), "is a folder"),
    ]:
        _refused(argv(source, out), capsys, match)
    if command not in ("distill", "quickstart"):  # they read no file
        _refused(argv(source, str(source)), capsys, "would destroy the input")
    assert source.read_bytes() == b"an input the command reads"
    assert [p.name for p in tmp_path.iterdir()] == ["input.safetensors"]


def test_train_lm_checks_its_save_folder_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "students"
    afile.write_text("not a folder")
    _refused(["train-lm", "--save-dir", str(afile)], capsys, "is a file")
    _refused(["train-lm", "--save-dir", "/proc"], capsys, "does not accept new files")
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("suite", ["lm", "vision", "imagenet"])
def test_bench_checks_its_report_files_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suite: str
) -> None:
    stem = {"lm": "lm_bench", "vision": "vision_bench", "imagenet": "imagenet_track"}
    os.mkfifo(tmp_path / f"{stem[suite]}.md")
    argv = ["bench", suite, "--out-dir", str(tmp_path)]
    _refused(argv, capsys, "is not a regular file")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(["bench", suite, "--out-dir", str(afile)], capsys, "is a file")


def test_broken_stdout_pipe_ends_quietly(
    archive: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", "--json", str(archive)]) == BROKEN_PIPE_EXIT
    assert main(["--help"]) == BROKEN_PIPE_EXIT
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_broken_stdout_pipe_in_a_real_pipeline(archive: Path) -> None:
    """``labelzip info --json | head -0``: the reader is gone before the output."""
    child = subprocess.Popen(
        [sys.executable, "-m", "labelzip", "info", "--json", str(archive)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader exits before the command writes
    err = child.stderr.read().decode()
    assert child.wait() == BROKEN_PIPE_EXIT
    assert err == ""


def test_stale_temp_of_a_killed_compress_is_removed_and_reported(
    tmp_path: Path, logits_file: Path
) -> None:
    out = tmp_path / "labels.lz"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = temp_sibling(out).name
    stale = out.parent / name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    stale.write_bytes(b"\0" * 4096)  # what a compress killed with -9 leaves
    argv = ["compress", str(logits_file), "--codec", "dense", "--quiet", "-o", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "labelzip", *argv],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (notice,) = result.stderr.splitlines()
    assert "removed 1 stale temporary file(s) of killed runs" in notice
    assert stale.name in notice and "4096 bytes" in notice
    assert not stale.exists() and out.is_file()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("flag", ["--ratio", "--bits-per-label"])
def test_rate_targets_reject_nan_and_inf(
    tmp_path: Path,
    logits_file: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
) -> None:
    out = str(tmp_path / "a.lz")
    name = flag.removeprefix("--").replace("-", "_")
    target = f"{flag}={value}"  # "--ratio -inf" would read -inf as a flag
    argv = ["compress", str(logits_file), "--codec", "topk", target, "-o", out]
    _refused(argv, capsys, f"{name} must be a finite number")
    _refused(["relabel", str(logits_file), target, "-o", out], capsys, "finite")
    _refused(["relabel-lm", target, "-o", out], capsys, "finite")
    assert not Path(out).exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_quickstart_and_bench_ratios_reject_nan_and_inf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    _refused(["quickstart", "--ratio", value, "--plot", ""], capsys, "finite")
    for suite in ("lm", "vision", "imagenet"):
        argv = ["bench", suite, "--ratios", "40", value, "--out-dir", str(tmp_path)]
        _refused(argv, capsys, "finite")
    assert list(tmp_path.iterdir()) == []
