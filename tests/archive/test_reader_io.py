"""The reader reads tensors with positional reads: no memory map, no shared handle."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveReader, load_archive, save_archive
from labelzip.codecs.base import Codec
from labelzip.errors import ArchiveFormatError

Fitted = Callable[..., Codec]


def _mapped(path: Path) -> bool:
    """True when this process has ``path`` memory-mapped (Linux /proc)."""
    target = str(path.resolve())
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith(target) for line in maps)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_streaming_an_archive_maps_nothing(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    path = tmp_path / "a.lz"
    save_archive(path, fitted("dense", views), views, chunk_size=16)
    with ArchiveReader(path) as reader:
        count = sum(b.shape[0] for b in reader.decode_all())
        reader.verify()
        assert count == 192 and reader.chunk_reads == reader.num_chunks
        assert not _mapped(path)  # safetensors' safe_open would keep it mapped


def test_reads_equal_the_stored_tensors(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "a.lz"
    save_archive(
        path, fitted("vqae", views, steps=5, hidden_dim=8), views, chunk_size=50
    )
    stored = load_file(str(path))
    with ArchiveReader(path) as reader:
        for name, tensor in stored.items():
            got = reader._tensor(name)
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), name


def test_file_truncated_after_open_is_a_format_error(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    path = tmp_path / "a.lz"
    save_archive(path, fitted("dense", views), views, chunk_size=50)
    with ArchiveReader(path) as reader:
        os.truncate(path, os.path.getsize(path) - 100)
        with pytest.raises(ArchiveFormatError, match="ends 100 bytes early"):
            reader.read_chunk(reader.num_chunks - 1)


def test_a_forked_child_opens_its_own_descriptor(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    path = tmp_path / "a.lz"
    save_archive(path, fitted("dense", views), views, chunk_size=50)
    want = load_archive(path).reshape(-1, 20)
    reader = ArchiveReader(path)
    reader.read_chunk(0)
    parent_fd = reader._fd
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        ok = False
        try:
            got = reader.decode(torch.arange(192))
            ok = reader._fd_pid == os.getpid() and torch.equal(got, want)
            reader.close()
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    # the parent's descriptor is still open and usable
    assert reader._fd == parent_fd and torch.equal(reader.decode(slice(0, 192)), want)
    reader.close()
