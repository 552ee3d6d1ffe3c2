"""ArchiveReader reads tensors with positional reads: no memory map, one fd, picklable."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveReader, save_archive
from labelzip.codecs.registry import create_codec
from labelzip.errors import ArchiveFormatError


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps_of(path: Path) -> int:
    with open("/proc/self/maps", encoding="utf-8") as handle:
        return sum(str(path) in line for line in handle)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_decoding_maps_nothing_and_close_releases_the_file(tmp_path: Path) -> None:
    logits = torch.randn(300, 12, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "a.lz"
    save_archive(path, create_codec("dense", dtype="fp32"), logits, chunk_size=64)
    before = _open_fds()
    reader = ArchiveReader(path)
    decoded = torch.cat(list(reader.decode_all(batch_size=50)))
    assert torch.equal(decoded, logits)
    assert _maps_of(path) == 0 and _open_fds() == before + 1
    clone = pickle.loads(pickle.dumps(reader))  # a DataLoader worker's copy
    assert torch.equal(clone.decode(slice(10, 20)), logits[10:20])
    clone.close()
    reader.close()
    assert _open_fds() == before
    assert torch.equal(reader.decode(slice(0, 5)), logits[:5])  # reopens on demand
    reader.close()


def test_truncated_tensor_data_is_an_archive_error(tmp_path: Path) -> None:
    logits = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "a.lz"
    save_archive(path, create_codec("dense", dtype="fp32"), logits, chunk_size=40)
    with ArchiveReader(path) as reader:
        os.truncate(path, path.stat().st_size - 64)  # after the header was checked
        with pytest.raises(ArchiveFormatError, match="ends 64 bytes early"):
            list(reader.decode_all())
