"""Spill stores: parsed labels in memory-mapped files, for shuffles larger than the cache."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from labelzip.archive import ArchiveLabels, ArchiveReader, load_archive, save_archive
from labelzip.archive.spill import SPILL_PREFIX, SpillStore, remove_stale_spills
from labelzip.codecs.base import ParsedBlock
from labelzip.codecs.registry import create_codec
from labelzip.errors import InputError
from labelzip.outputs import host_tag


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3000 top-k labels (C = 12) in 24 chunks of 128 (the last one short)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 12, generator=g) * 3
    codec = create_codec("topk", k=4, decoder="ms").fit([logits])
    path = tmp_path_factory.mktemp("spill") / "labels.lz"
    save_archive(path, codec, logits, chunk_size=128)
    return path


def _spills(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(SPILL_PREFIX)]


def test_a_spilled_epoch_serves_its_labels_and_is_removed_on_close(
    archive: Path, tmp_path: Path
) -> None:
    whole = load_archive(archive)
    with ArchiveReader(archive, cache_bytes=0) as reader:
        epoch = torch.arange(1000, 2000)  # chunks 7..15
        assert reader.prefetch(epoch, spill_dir=tmp_path) == 9
        (store,) = _spills(tmp_path)
        assert reader.spilled_bytes == 9 * 128 * 4 * (2 + 1)  # fp16 values, int8 ids
        reads = reader.chunk_reads
        shuffled = epoch[torch.randperm(1000)]
        assert torch.equal(reader.decode(shuffled), whole[shuffled])
        assert torch.equal(reader.decode(shuffled, device="cpu"), whole[shuffled])
        assert reader.chunk_reads == reads
        # a label outside the spilled chunks is read from the archive
        assert torch.equal(reader.decode(torch.tensor([5, 1500])), whole[[5, 1500]])
        assert reader.chunk_reads == reads + 1
        # the next prefetch replaces the store
        assert reader.prefetch(spill_dir=tmp_path) == 24
        assert not store.exists() and len(_spills(tmp_path)) == 1
        assert torch.equal(reader.decode(torch.arange(2999, -1, -1)), whole.flip(0))
    assert not _spills(tmp_path)


def test_a_fitting_prefetch_stays_in_memory(archive: Path, tmp_path: Path) -> None:
    with ArchiveReader(archive) as reader:
        assert reader.prefetch(spill_dir=tmp_path) == 24
        assert reader.spilled_bytes == 0 and reader.cached_chunks == 24
    assert not _spills(tmp_path)


def test_a_pickled_reader_maps_the_owners_store(archive: Path, tmp_path: Path) -> None:
    whole = load_archive(archive)
    owner = ArchiveReader(archive, cache_bytes=0)
    owner.prefetch(spill_dir=tmp_path)
    clone = pickle.loads(pickle.dumps(owner))
    assert clone.spilled_bytes == owner.spilled_bytes
    index = torch.randperm(3000)[:500]
    assert torch.equal(clone.decode(index), whole[index]) and clone.chunk_reads == 0
    clone.close()  # not the owner: the files stay
    assert len(_spills(tmp_path)) == 1
    blob = pickle.dumps(owner)
    owner.close()
    assert not _spills(tmp_path)
    # the owner's store is gone: the clone reads the archive instead
    late = pickle.loads(blob)
    assert late.spilled_bytes == 0
    assert torch.equal(late.decode(index), whole[index])


def test_a_store_of_another_archive_is_refused(archive: Path, tmp_path: Path) -> None:
    with ArchiveReader(archive, cache_bytes=0) as reader:
        reader.prefetch(spill_dir=tmp_path)
        (directory,) = _spills(tmp_path)
        with pytest.raises(InputError, match="another archive"):
            SpillStore.open(directory, "0" * 64)
        (directory / "ids.bin").write_bytes(b"short")
        with pytest.raises(InputError, match="incomplete"):
            SpillStore.open(directory, reader.fingerprint)


def test_no_space_is_a_clear_error_and_leaves_nothing(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = ArchiveReader(archive, cache_bytes=0)
    with pytest.raises(InputError, match="does not exist"):
        reader.prefetch(spill_dir=tmp_path / "missing")

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(InputError, match="cannot reserve .*No space left"):
        reader.prefetch(spill_dir=tmp_path)
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr("labelzip.archive.spill.shutil.disk_usage", lambda _: _Usage())
    with pytest.raises(InputError, match="1 MiB free; the parsed labels need"):
        reader.prefetch(spill_dir=tmp_path)
    assert not list(tmp_path.iterdir())
    # reading still works
    assert reader.decode(torch.tensor([0, 2999])).shape == (2, 12)
    reader.close()


class _Usage:
    """What ``shutil.disk_usage`` reports for a nearly full disk."""

    free = 1 << 20


def test_chunks_that_disagree_are_refused(tmp_path: Path) -> None:
    first = ParsedBlock(2, {"ids": torch.zeros(2, 3, dtype=torch.int16)})
    other = ParsedBlock(2, {"ids": torch.zeros(2, 3, dtype=torch.int32)})
    with pytest.raises(InputError, match="does not match"):
        SpillStore.build(tmp_path, "f", 4, first, [other])
    with pytest.raises(InputError, match="held 2 rows, expected 4"):
        SpillStore.build(tmp_path, "f", 4, first, [])
    assert not list(tmp_path.iterdir())


def test_stores_of_dead_processes_are_removed(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    here = host_tag()
    dead = tmp_path / f"{SPILL_PREFIX}{here}-{proc.stdout.strip()}-abc"
    live = tmp_path / f"{SPILL_PREFIX}{here}-{os.getpid()}-abc"
    # another host's store on a shared filesystem: its pid means nothing here
    elsewhere = tmp_path / f"{SPILL_PREFIX}other_host_{here}-{proc.stdout.strip()}-abc"
    other = tmp_path / "unrelated"
    for path in (dead, live, elsewhere, other):
        path.mkdir()
    assert remove_stale_spills(tmp_path) == [dead]
    assert live.exists() and elsewhere.exists() and other.exists()
    assert not dead.exists()


def test_a_thrashing_shuffle_spills_and_says_so(
    archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = load_archive(archive)
    labels = ArchiveLabels(archive, cache_bytes=0, spill_dir=tmp_path)
    g = torch.Generator().manual_seed(0)
    with caplog.at_level(logging.INFO, logger="labelzip.archive.reader"):
        with pytest.warns(
            RuntimeWarning, match="parsed the whole archive once.*persistent_workers"
        ):
            for _ in range(2):  # each batch of 64 parses ~20 of the 24 chunks
                order = torch.randperm(3000, generator=g)
                loader = DataLoader(labels, batch_size=64, sampler=order.tolist())
                assert torch.equal(torch.cat(list(loader)), whole[order])
    assert labels.reader.spilled_bytes > 0 and len(_spills(tmp_path)) == 1
    assert "into" in caplog.text
    reads = labels.reader.chunk_reads
    order = torch.randperm(3000, generator=g)
    loader = DataLoader(labels, batch_size=64, sampler=order.tolist())
    assert torch.equal(torch.cat(list(loader)), whole[order])
    assert labels.reader.chunk_reads == reads  # served from the store
    labels.reader.close()
    assert not _spills(tmp_path)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_share_a_prefetched_store(
    archive: Path, tmp_path: Path, context: str
) -> None:
    whole = load_archive(archive)
    labels = ArchiveLabels(archive, cache_bytes=0, spill_dir=tmp_path)
    assert labels.prefetch() == 24 and len(_spills(tmp_path)) == 1
    order = torch.randperm(3000, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(
        labels,
        batch_size=100,
        sampler=order.tolist(),
        num_workers=2,
        multiprocessing_context=context,
    )
    assert torch.equal(torch.cat(list(loader)), whole[order])
    assert len(_spills(tmp_path)) == 1  # the workers did not remove (or copy) it
    labels.reader.close()
    assert not _spills(tmp_path)


def test_a_private_store_leaves_no_files_and_does_not_travel(
    archive: Path, tmp_path: Path
) -> None:
    whole = load_archive(archive)
    with ArchiveReader(archive, cache_bytes=0) as reader:
        reader.prefetch(spill_dir=tmp_path, share_spill=False)
        assert not list(tmp_path.iterdir()) and reader.spilled_bytes > 0
        index = torch.randperm(3000)[:300]
        assert torch.equal(reader.decode(index), whole[index])
        assert reader.chunk_reads == 24
        clone = pickle.loads(pickle.dumps(reader))
        assert clone.spilled_bytes == 0  # nothing to map: it reads the archive
        assert torch.equal(clone.decode(index), whole[index])
        clone.close()


def test_workers_that_thrash_spill_privately(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = load_archive(archive)
    private = multiprocessing.get_context("fork").Value("i", 0)
    build = SpillStore.build.__func__  # type: ignore[attr-defined]

    def counting_build(cls: type[SpillStore], *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("shared") is False:
            with private.get_lock():
                private.value += 1
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(SpillStore, "build", classmethod(counting_build))
    labels = ArchiveLabels(archive, cache_bytes=0, spill_dir=tmp_path)
    order = torch.cat([torch.randperm(3000) for _ in range(2)])
    loader = DataLoader(
        labels,
        batch_size=64,
        sampler=order.tolist(),
        num_workers=2,
        multiprocessing_context="fork",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # raised in the workers
        assert torch.equal(torch.cat(list(loader)), whole[order])
    assert private.value == 2  # each worker spilled once, privately
    assert not list(tmp_path.iterdir())  # and its files went with it
