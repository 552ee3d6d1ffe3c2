"""The chunked encode of `compress` in one process: same bytes as ArchiveWriter,
--resume after a kill or an interrupt, and faults that leave nothing behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import labelzip
import labelzip.archive.writer as writer_module
from labelzip.archive import ArchiveMetadata, ArchiveWriter
from labelzip.archive.chunks import ChunkEncoder
from labelzip.cli._common import with_run_defaults
from labelzip.cli.compress import main
from labelzip.codecs.registry import create_codec
from labelzip.errors import ChecksumError
from labelzip.faults import FAULT_ENV
from labelzip.logit_store import open_logits
from labelzip.pipelines.compress import (
    CompressSettings,
    fit_codec,
    label_layout,
    prune_plan,
    write_archive,
)
from labelzip.pipelines.compress_run import chunk_rows, rank_chunks
from labelzip.pipelines.partial import (
    PART_TAG,
    PartialFile,
    find_partials,
    partial_path,
    read_partial,
)
from labelzip.rate import RateGoal

# (codec, extra argv): the codecs and rate/prune paths whose bytes must not move.


@pytest.fixture
def views(chunk_views: Path) -> Path:
    return chunk_views


@pytest.fixture
def cases(compress_cases: dict[str, list[str]]) -> dict[str, list[str]]:
    return compress_cases


def _compress(views: Path, out: Path, argv: list[str], *extra: str) -> int:
    """Run `labelzip compress` in-process, in chunks of 100 labels; its exit code."""
    return main(
        [str(views), "-o", str(out), "--chunk-size", "100", "--quiet", *argv, *extra]
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _reference(views: Path, out: Path, argv: list[str]) -> bytes:
    """The archive ArchiveWriter.write (the single-process path before chunking) gives."""
    options: dict[str, object] = {}
    codec = argv[1]
    ratio = float(argv[argv.index("--ratio") + 1]) if "--ratio" in argv else None
    keep = (
        float(argv[argv.index("--prune-keep") + 1]) if "--prune-keep" in argv else None
    )
    if "--k" in argv:
        options["k"] = int(argv[argv.index("--k") + 1])
    if "--opt" in argv:
        key, value = argv[argv.index("--opt") + 1].split("=")
        options[key] = int(value)
    with_run_defaults(codec, options, seed=0, device=torch.device("cpu"))
    settings = CompressSettings(
        codec=codec,
        options=options,
        goal=RateGoal.of(ratio),
        chunk_size=100,
        prune_keep=keep,
    )
    metadata = ArchiveMetadata()
    with open_logits(views) as store:
        layout = label_layout(store, None)
        plan = prune_plan(layout, settings)
        fitted = fit_codec(store, settings, layout, plan, metadata)
        write_archive(out, store, fitted, settings, layout, plan, metadata)
    return out.read_bytes()


@pytest.mark.parametrize("case", ["dense", "rskd", "topk", "topk-ratio-prune", "vqae"])
def test_chunked_encode_gives_the_archive_writer_bytes(
    tmp_path: Path, views: Path, case: str, cases: dict[str, list[str]]
) -> None:
    out = tmp_path / "a.lz"
    assert _compress(views, out, cases[case]) == 0
    assert out.read_bytes() == _reference(views, tmp_path / "ref.lz", cases[case])
    assert _leftovers(tmp_path) == []  # partial file removed once merged


def test_chunk_rows_are_the_stored_labels(views: Path) -> None:
    settings = CompressSettings(codec="dense", prune_keep=0.5, seed=3)
    with open_logits(views) as store:
        layout = label_layout(store, None)
        plan = prune_plan(layout, settings)
        assert plan is not None
        everything = store.read(0, store.num_labels)
        kept = plan.kept_indices()
        rows, flat = chunk_rows(store, plan, 100, plan.num_kept, 5)
    assert torch.equal(flat, kept[500:600])
    assert torch.equal(rows, everything[kept[500:600]])


def test_rank_chunks_split_evenly_and_cover_every_chunk() -> None:
    for count in (0, 1, 5, 12):
        for world in (1, 2, 3, 4):
            ranges = [rank_chunks(count, r, world) for r in range(world)]
            assert [i for r in ranges for i in r] == list(range(count))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


@pytest.mark.parametrize("action", ["term", "kill"])
def test_resume_after_a_stop_gives_the_same_bytes(
    tmp_path: Path,
    views: Path,
    action: str,
    capfd: pytest.CaptureFixture[str],
    cases: dict[str, list[str]],
) -> None:
    argv = cases["vqae"]
    whole = tmp_path / "whole.lz"
    assert _compress(views, whole, argv) == 0
    out = tmp_path / "b.lz"
    source = str(Path(labelzip.__file__).parents[1])  # this checkout's labelzip
    env = {**os.environ, FAULT_ENV: f"{action}@0:4", "PYTHONPATH": source}
    if action == "term":  # in-process: SIGTERM interrupts, the partial file stays
        os.environ[FAULT_ENV] = env[FAULT_ENV]
        try:
            assert _compress(views, out, argv) == 130
        finally:
            del os.environ[FAULT_ENV]
    else:  # a real SIGKILL needs its own process
        command = [sys.executable, "-m", "labelzip", "compress", str(views), "-o"]
        done = subprocess.run(
            [*command, str(out), "--chunk-size", "100", "--quiet", *argv],
            env=env,
            capture_output=True,
            check=False,
        )
        assert done.returncode == -signal.SIGKILL
    assert not out.exists()
    (partial,) = find_partials(out)
    assert len(read_partial(partial)[1]) == 4
    assert _leftovers(tmp_path) == [partial.name]
    capfd.readouterr()
    assert _compress(views, out, argv, "--resume") == 0
    assert out.read_bytes() == whole.read_bytes()
    assert _leftovers(tmp_path) == []


def test_resume_keeps_intact_chunks_and_redoes_a_damaged_one(
    tmp_path: Path, views: Path, cases: dict[str, list[str]]
) -> None:
    argv = cases["topk"]
    whole = tmp_path / "whole.lz"
    assert _compress(views, whole, argv) == 0
    out = tmp_path / "c.lz"
    os.environ[FAULT_ENV] = "term@0:6"
    try:
        assert _compress(views, out, argv) == 130
    finally:
        del os.environ[FAULT_ENV]
    (path,) = find_partials(out)
    _, records = read_partial(path)
    last = records[-1]
    with open(path, "r+b") as handle:  # a flipped byte in chunk 5, then a torn record
        handle.seek(last.offset + 3)
        byte = handle.read(1)
        handle.seek(last.offset + 3)
        handle.write(bytes([byte[0] ^ 0xFF]))
        handle.seek(0, os.SEEK_END)
        handle.write(b"LZCK\x07")
    assert len(read_partial(path, verify=True)[1]) == 5
    assert _compress(views, out, argv, "--resume") == 0
    assert out.read_bytes() == whole.read_bytes()


def test_resume_with_other_options_is_refused_and_keeps_the_partial(
    tmp_path: Path,
    views: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    cases: dict[str, list[str]],
) -> None:
    out = tmp_path / "d.lz"
    os.environ[FAULT_ENV] = "term@0:2"
    try:
        assert _compress(views, out, cases["topk"]) == 130
    finally:
        del os.environ[FAULT_ENV]
    capfd.readouterr()
    code = _compress(views, out, ["--codec", "topk", "--k", "6"], "--resume")
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "differs in its settings" in err and "drop --resume" in err
    assert len(find_partials(out)) == 1 and not out.exists()
    # Without --resume the stale partial goes, with one notice line.
    assert _compress(views, out, ["--codec", "topk", "--k", "6"]) == 0
    assert "removed 1 partial file(s)" in caplog.text and PART_TAG in caplog.text
    assert _leftovers(tmp_path) == []


def test_resume_refuses_another_number_of_processes(
    tmp_path: Path,
    views: Path,
    capfd: pytest.CaptureFixture[str],
    cases: dict[str, list[str]],
) -> None:
    out = tmp_path / "e.lz"
    with open_logits(views) as store:
        fingerprint = store.fingerprint()
    partial_path(out, fingerprint, 1, 2).write_bytes(b"")
    assert _compress(views, out, cases["dense"], "--resume") == 2
    assert "used 2 process(es) and this run has 1" in capfd.readouterr().err
    assert _compress(views, out, cases["dense"], "--resume") == 2
    assert _compress(views, out, cases["dense"]) == 0  # no --resume: removed


def test_full_disk_while_encoding_leaves_nothing(
    tmp_path: Path,
    views: Path,
    capfd: pytest.CaptureFixture[str],
    cases: dict[str, list[str]],
) -> None:
    out = tmp_path / "f.lz"
    os.environ[FAULT_ENV] = "enospc@0:3"
    try:
        code = _compress(views, out, cases["topk"])
    finally:
        del os.environ[FAULT_ENV]
    err = capfd.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "No space left on device" in err and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_full_disk_while_writing_the_archive_leaves_nothing(
    tmp_path: Path,
    views: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    cases: dict[str, list[str]],
) -> None:
    out = tmp_path / "g.lz"
    out.write_bytes(b"previous archive")

    def full(*args: object, **kwargs: object) -> bytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_module, "_copy_range", full)
    code = _compress(views, out, cases["dense"])
    err = capfd.readouterr().err.strip()
    assert code == 2 and err.endswith("No space left on device")
    assert out.read_bytes() == b"previous archive"
    assert _leftovers(tmp_path) == []


def test_unwritable_output_folder_fails_before_any_work(
    views: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main([str(views), "--codec", "dense", "-o", "/proc/labels.lz"])
    err = capfd.readouterr().err.strip()
    assert code == 2 and "does not accept new files" in err
    assert len(err.splitlines()) == 1


def test_partial_file_records_round_trip(tmp_path: Path) -> None:
    codec = create_codec("dense").fit([torch.zeros(1, 8)])
    encoder = ChunkEncoder(codec)
    path = tmp_path / ".x.lz.labelzip-part-00000000-0-of-1"
    header = {"input": "a" * 64, "settings": "b" * 64}
    partial = PartialFile(path, header)
    chunks = [encoder.encode(torch.randn(n, 8)) for n in (4, 4, 2)]
    for chunk in chunks:
        partial.append(chunk)
    partial.close()
    found, records = read_partial(path, verify=True)
    assert found == header and [r.num_labels for r in records] == [4, 4, 2]
    assert [r.sha256 for r in records] == [c.sha256 for c in chunks]
    again = PartialFile(path, header, resume=True)
    assert again.num_chunks == 3
    again.remove()
    assert not path.exists()


def test_linked_chunks_are_checked_when_copied(tmp_path: Path) -> None:
    codec = create_codec("dense").fit([torch.zeros(1, 8)])
    chunk = ChunkEncoder(codec).encode(torch.randn(4, 8))
    source = tmp_path / "chunks.bin"
    source.write_bytes(b"xx" + chunk.data)
    with ArchiveWriter(tmp_path / "ok.lz", codec, chunk_size=4) as writer:
        writer.link_chunk(source, 2, 4, len(chunk.data), chunk.sha256)
    source.write_bytes(b"xx" + bytes(len(chunk.data)))
    writer = ArchiveWriter(tmp_path / "bad.lz", codec, chunk_size=4)
    writer.link_chunk(source, 2, 4, len(chunk.data), chunk.sha256)
    with pytest.raises(ChecksumError, match="does not match its digest"):
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.bin", "ok.lz"]


def test_resume_of_other_input_is_refused_and_keeps_its_partial(
    tmp_path: Path,
    views: Path,
    capfd: pytest.CaptureFixture[str],
    cases: dict[str, list[str]],
) -> None:
    out = tmp_path / "f.lz"
    other = partial_path(out, "ab" * 32, 0, 1)  # a killed run of another input
    other.write_bytes(b"")
    assert _compress(views, out, cases["dense"], "--resume") == 2
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "was made from other input (abababab, now " in err
    assert "drop --resume" in err and other.exists() and not out.exists()
    assert _compress(views, out, cases["dense"]) == 0  # no --resume: removed
    assert _leftovers(tmp_path) == []
