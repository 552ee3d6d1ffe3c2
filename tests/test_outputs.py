"""The output policy of labelzip.outputs: safe targets, atomic writes, stale temp cleanup."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelzip.errors import InputError
from labelzip.outputs import (
    STALE_AFTER_S,
    TEMP_TAG,
    atomic_folder,
    atomic_path,
    check_output_folder,
    check_output_path,
    remove_stale_temps,
    scratch_folder,
    temp_sibling,
    write_text,
)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _temp_of(dest: Path, pid: int, host: str | None = None) -> Path:
    name = temp_sibling(dest).name
    prefix = f".{dest.name}{TEMP_TAG}"
    own_host, _, rand = name[len(prefix) :].rsplit("-", 2)
    return dest.parent / f"{prefix}{host or own_host}-{pid}-{rand}"


def test_temp_names_are_recognisable_and_unique(tmp_path: Path) -> None:
    dest = tmp_path / "labels.lz"
    names = {temp_sibling(dest).name for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith(".labels.lz.labelzip-tmp-")
        assert f"-{os.getpid()}-" in name


def test_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "logits.npy"
    source.write_bytes(b"input")
    (tmp_path / "link.npy").symlink_to(source)
    os.link(source, tmp_path / "hard.npy")
    for output in (source, tmp_path / "link.npy", tmp_path / "hard.npy"):
        with pytest.raises(InputError, match="is the input .*logits.npy"):
            check_output_path(output, [None, source])
    # the input given through a link is the same file too
    with pytest.raises(InputError, match="would destroy the input"):
        check_output_path(source, [tmp_path / "link.npy"])
    assert source.read_bytes() == b"input"
    assert check_output_path(tmp_path / "other.lz", [source]) == tmp_path / "other.lz"


def test_non_regular_outputs_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for output in (Path("/dev/null"), fifo):
        with pytest.raises(InputError, match="is not a regular file"):
            check_output_path(output)
        with pytest.raises(InputError, match="is not a regular file"):
            with atomic_path(output) as tmp:
                tmp.write_bytes(b"x")
    with pytest.raises(InputError, match="is a folder; give a file name"):
        check_output_path(tmp_path)
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_symlink_output_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "run3.lz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "latest.lz"
    link.symlink_to(target)
    check_output_path(link)
    with atomic_path(link) as tmp:
        assert tmp.parent == target.parent  # renamed within the target's folder
        tmp.write_bytes(b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    # a dangling link creates its target
    dangling = tmp_path / "next.lz"
    dangling.symlink_to(tmp_path / "runs" / "run4.lz")
    write_text(dangling, "fresh")
    assert dangling.is_symlink() and (tmp_path / "runs" / "run4.lz").read_text() == (
        "fresh"
    )


def test_unwritable_folders_fail_in_one_line() -> None:
    with pytest.raises(InputError, match="folder '/proc' does not accept new files"):
        check_output_path("/proc/x.lz")
    with pytest.raises(InputError, match="folder '/proc' does not accept new files"):
        with atomic_path("/proc/x.lz") as tmp:
            tmp.write_bytes(b"x")
    with pytest.raises(InputError, match="output folder .* does not exist"):
        check_output_path("/nonexistent-labelzip-dir/x.lz")


def test_write_errors_become_one_line_and_leave_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out.lz"
    dest.write_bytes(b"old")
    with pytest.raises(InputError, match="writing .*out.lz' failed: No space left"):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.lz"]


def test_stale_temps_of_dead_writers_are_removed_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "labels.lz"
    dead = _temp_of(dest, _dead_pid())
    dead.write_bytes(b"x" * 1000)
    dead_dir = _temp_of(dest, _dead_pid())  # a folder (teacher cache export)
    dead_dir.mkdir()
    (dead_dir / "model.safetensors").write_bytes(b"y" * 10)
    alive = _temp_of(dest, os.getpid())  # a writer that still runs
    alive.write_bytes(b"z")
    foreign = _temp_of(dest, 1, host="otherhost")  # pid means nothing here
    foreign.write_bytes(b"w")
    old_foreign = _temp_of(dest, 2, host="otherhost")
    old_foreign.write_bytes(b"v")
    legacy = tmp_path / ".labels.lz.ab_cd123.tmp"  # mkstemp name of older versions
    legacy.write_bytes(b"u")
    fresh_legacy = tmp_path / ".labels.lz.zzzzzzzz.tmp"
    fresh_legacy.write_bytes(b"t")
    busy_foreign = _temp_of(dest, 3, host="otherhost")  # old folder, fresh file
    busy_foreign.mkdir()
    (busy_foreign / "chunk").write_bytes(b"r")
    past = time.time() - STALE_AFTER_S - 60
    for path in (old_foreign, legacy, busy_foreign):
        os.utime(path, (past, past))
    other = tmp_path / ".other.lz.labelzip-tmp-x-1-00000000"  # another destination
    other.write_bytes(b"s")
    with caplog.at_level(logging.WARNING, logger="labelzip.outputs"):
        removed = remove_stale_temps(dest)
    assert sorted(removed) == sorted([dead, dead_dir, old_foreign, legacy])
    left = {p.name for p in tmp_path.iterdir()}
    kept = {alive, foreign, fresh_legacy, other, busy_foreign}
    assert left == {p.name for p in kept}
    (message,) = [r.getMessage() for r in caplog.records]
    assert "removed 4 stale temporary file(s) of killed runs" in message
    assert "1012 bytes" in message and dead.name in message
    assert "\n" not in message


def test_next_atomic_write_cleans_up_after_a_killed_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 a process that holds an atomic write open; the next write cleans up."""
    dest = tmp_path / "labels.lz"
    code = (
        "import sys, time\n"
        "from labelzip.outputs import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'x' * 100000)\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".labels.lz.labelzip-tmp-")
    assert f"-{child.pid}-" in left.name
    assert remove_stale_temps(dest) == []  # the writer still runs: kept
    child.send_signal(signal.SIGKILL)
    child.wait()
    with caplog.at_level(logging.WARNING, logger="labelzip.outputs"):
        write_text(dest, "done")
    assert [p.name for p in tmp_path.iterdir()] == ["labels.lz"]
    assert any(left.name in r.getMessage() for r in caplog.records)


def test_scratch_folder_is_removed_and_stale_ones_cleaned(tmp_path: Path) -> None:
    stale = _temp_of(tmp_path / "work", _dead_pid())
    stale.mkdir()
    (stale / "a.lz").write_bytes(b"x")
    with scratch_folder(tmp_path, "work") as folder:
        assert folder.is_dir() and folder.parent == tmp_path
        (folder / "b.lz").write_bytes(b"y")
        assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_a_folder_whole(tmp_path: Path) -> None:
    dest = tmp_path / "students" / "labels"
    with atomic_folder(dest) as tmp:  # parents are created
        (tmp / "config.json").write_text("1")
    assert [p.name for p in dest.iterdir()] == ["config.json"]
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(dest) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert [p.name for p in dest.iterdir()] == ["config.json"]
    with atomic_folder(dest) as tmp:
        (tmp / "model.safetensors").write_text("2")
    assert [p.name for p in dest.iterdir()] == ["model.safetensors"]
    assert [p.name for p in dest.parent.iterdir()] == ["labels"]  # no leftovers
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(InputError, match="exists and is not a folder"):
        with atomic_folder(afile):
            pass
    with pytest.raises(InputError, match="is a file; give a folder"):
        check_output_folder(afile)
    with pytest.raises(InputError, match="does not accept new files"):
        check_output_folder("/proc")
    assert afile.read_text() == "keep"
    assert check_output_folder(tmp_path / "new") == tmp_path / "new"
