"""`torchrun -m labelzip compress`: gloo ranks on CPU give the single-process bytes,
and the faults of a multi-process run end in one clear error per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import labelzip
from labelzip.cli.compress import main
from labelzip.faults import FAULT_ENV
from labelzip.pipelines.partial import find_partials

SOURCE = str(Path(labelzip.__file__).parents[1])  # this checkout's labelzip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.fixture
def views(chunk_views: Path) -> Path:
    return chunk_views


Args = Callable[..., list[str]]


@pytest.fixture
def args(views: Path, compress_cases: dict[str, list[str]]) -> Args:
    """``args(out, case, *extra)``: the compress argv of a case, chunks of 100."""

    def build(out: Path, case: str, *extra: str) -> list[str]:
        head = ["compress", str(views), "-o", str(out), "--chunk-size", "100"]
        return [*head, "--quiet", *compress_cases[case], *extra]

    return build


def _torchrun(
    ranks: int,
    argv: list[str],
    fault: str | None = None,
    *,
    python: bool = True,
    monitor_s: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run labelzip under torchrun. ``monitor_s`` slows torchrun's check of its
    workers, so that after a rank is killed the others report before torchrun
    stops them (a race a loaded machine otherwise loses)."""
    env = {**os.environ, "PYTHONPATH": SOURCE, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    head = [*TORCHRUN, "--nproc_per_node", str(ranks)]
    if monitor_s is not None:
        head += ["--monitor-interval", str(monitor_s)]
    command = [*head, "-m", "labelzip", *argv] if python else [*head, *argv]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The labelzip error lines of every rank (torchrun adds its own report)."""
    return [
        line
        for line in done.stderr.splitlines()
        if line.startswith("labelzip compress: error:")
    ]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _single(args: Args, out: Path, case: str) -> bytes:
    assert main(args(out, case)[1:]) == 0
    return out.read_bytes()


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("topk-ratio-prune"),
        pytest.param("auto"),
        pytest.param("dense", marks=pytest.mark.slow),
        pytest.param("topk", marks=pytest.mark.slow),
        pytest.param("vqae", marks=pytest.mark.slow),
        pytest.param("rskd", marks=pytest.mark.slow),
    ],
)
def test_two_ranks_write_the_single_process_bytes(
    tmp_path: Path, args: Args, case: str
) -> None:
    out = tmp_path / "two.lz"
    done = _torchrun(2, args(out, case))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == _single(args, tmp_path / "one.lz", case)
    assert done.stdout.count("wrote ") == 1  # rank 0 reports, once
    assert _leftovers(tmp_path) == []


def test_an_auto_choice_that_fails_on_rank_0_stops_every_rank(
    tmp_path: Path, args: Args
) -> None:
    out = tmp_path / "auto.lz"
    done = _torchrun(2, args(out, "auto")[:-4] + ["--ratio", "1e6"])
    assert done.returncode != 0
    errors = _errors(done)
    assert len(errors) == 2, done.stderr
    assert any(
        "rank 0 failed before encoding (choosing the codec)" in e for e in errors
    )
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_three_ranks_write_the_single_process_bytes(tmp_path: Path, args: Args) -> None:
    out = tmp_path / "three.lz"
    done = _torchrun(3, args(out, "vqae"))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == _single(args, tmp_path / "one.lz", "vqae")
    assert _leftovers(tmp_path) == []


def test_a_rank_that_dies_is_named_and_its_run_kept_for_resume(
    tmp_path: Path, args: Args
) -> None:
    out = tmp_path / "dies.lz"
    done = _torchrun(2, args(out, "topk"), "kill@1:2", monitor_s=5)
    assert done.returncode != 0
    assert any("rank 1 (2 of 6 chunks) died" in e for e in _errors(done)), done.stderr
    assert not out.exists()
    assert all(".labelzip-tmp-" not in name for name in _leftovers(tmp_path))
    assert len(find_partials(out)) == 2  # rank 0's whole range, rank 1's first two


@pytest.mark.slow
def test_resume_after_a_rank_died_gives_the_same_bytes(
    tmp_path: Path, args: Args
) -> None:
    out = tmp_path / "resumed.lz"
    assert _torchrun(2, args(out, "vqae"), "kill@1:2").returncode
    done = _torchrun(2, args(out, "vqae", "--resume"))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == _single(args, tmp_path / "one.lz", "vqae")
    assert _leftovers(tmp_path) == []


def test_a_full_disk_on_one_rank_leaves_nothing(tmp_path: Path, args: Args) -> None:
    out = tmp_path / "full.lz"
    done = _torchrun(2, args(out, "topk"), "enospc@1:3")
    assert done.returncode != 0
    errors = _errors(done)
    assert len(errors) == 2 and all("No space left on device" in e for e in errors)
    assert any("rank 1 of 2 failed" in e for e in errors)
    assert "Traceback" not in "\n".join(
        line for line in done.stderr.splitlines() if line.startswith("[rank")
    )
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_hung_rank_times_out_and_is_named(tmp_path: Path, args: Args) -> None:
    out = tmp_path / "hung.lz"
    argv = args(out, "topk", "--dist-timeout", "3")
    done = _torchrun(2, argv, "hang@1:1")
    assert done.returncode != 0
    assert any("rank 1 (1 of 6 chunks) died or stopped" in e for e in _errors(done))
    assert not out.exists()


def test_ranks_that_read_different_input_are_refused(
    tmp_path: Path, views: Path
) -> None:
    for rank in (0, 1):
        folder = tmp_path / f"r{rank}"
        folder.mkdir()
        data = views.read_bytes()
        if rank == 1:  # one changed value: another input
            data = data[:-2] + bytes([data[-2] ^ 1]) + data[-1:]
        (folder / "in.safetensors").write_bytes(data)
    out = tmp_path / "never.lz"
    script = (
        f"{sys.executable} -m labelzip compress {tmp_path}/r$RANK/in.safetensors "
        f"--codec topk -o {out} --quiet"
    )
    done = _torchrun(2, ["--no-python", "bash", "-c", script], python=False)
    errors = _errors(done)
    assert done.returncode != 0 and len(errors) == 2
    assert all("ranks disagree on the input: rank 1 sees input" in e for e in errors)
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_partial_file_missing_at_merge_is_named(tmp_path: Path, views: Path) -> None:
    """Ranks that write into folders that are not shared: rank 0 cannot merge."""
    for rank in (0, 1):
        (tmp_path / f"d{rank}").mkdir()
    script = (
        f"{sys.executable} -m labelzip compress {views} --codec topk --chunk-size 100 "
        f"-o {tmp_path}/d$RANK/out.lz --quiet"
    )
    done = _torchrun(2, ["--no-python", "bash", "-c", script], python=False)
    errors = _errors(done)
    assert done.returncode != 0
    assert any("the partial file of rank 1 is missing at merge" in e for e in errors)
    for rank in (0, 1):
        assert list((tmp_path / f"d{rank}").iterdir()) == []


@pytest.mark.parametrize("command", ["import", "relabel"])
def test_commands_that_do_not_split_refuse_several_ranks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    from labelzip.cli import main as labelzip_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    argv = {
        "import": ["import", "--format", "fkd", "x", "-o", "y.lz"],
        "relabel": ["relabel", "set.safetensors", "--teacher", "convnet", "-o", "y.lz"],
    }[command]
    assert labelzip_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"labelzip {command} does not split its work across processes" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, [], "MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "x"}, [], "RANK=5"),
        ({}, ["--dist-timeout", "0"], "--dist-timeout must be > 0"),
    ],
)
def test_a_bad_torchrun_environment_is_one_line(
    tmp_path: Path,
    views: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    extra: list[str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [str(views), "--codec", "dense", "-o", str(tmp_path / "a.lz"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a.lz").exists()
