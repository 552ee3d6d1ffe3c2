"""ArchiveLabelSource side reads: right rows, one descriptor, clear truncation."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.archive import ArchiveReader
from labelzip.archive.format import SIDE_PREFIX
from labelzip.errors import ArchiveFormatError
from labelzip.interop.archive_source import ArchiveLabelSource
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import import_store

from .outside.writers import write_lpqld


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    write_lpqld(tmp_path / "q", num_images=40, batch_size=8, epochs=2,
                prune_ratio=0.5, num_classes=9, k=3)  # fmt: skip
    out = tmp_path / "q.lz"
    import_store(tmp_path / "q", "lpqld", out, options=ImportOptions(num_classes=9))
    return out


def test_side_rows_come_from_one_descriptor(
    archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ArchiveReader(archive) as reader:
        whole = reader.side_tensors()["coords"]
        opened: list[str] = []
        real_open, real_os_open = builtins.open, os.open

        def counting_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(str(path))
            return real_open(path, *args, **kwargs)

        def counting_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
            opened.append(str(path))
            return real_os_open(path, *args, **kwargs)

        with ArchiveLabelSource(reader) as source:
            first = source.side("coords", 0, 3)  # checks the sha256, opens once
            monkeypatch.setattr(builtins, "open", counting_open)
            monkeypatch.setattr(os, "open", counting_os_open)
            got = [source.side("coords", i, i + 3) for i in range(3, 30, 3)]
            assert source.side("coords", 5, 5).shape == (0, 4)
            monkeypatch.undo()
    assert torch.equal(torch.cat([first, *got]), whole[:30])
    assert opened == []  # the archive was opened per read before


def test_a_truncated_archive_is_named(archive: Path, tmp_path: Path) -> None:
    with ArchiveReader(archive) as reader:
        source = ArchiveLabelSource(reader)
        rows = source.side_rows("coords")
        source.side("coords", 0, 1)  # verified and laid out while whole
        entry = reader.container.entries[SIDE_PREFIX + "coords"]
        cut = reader.container.data_start + entry.start + 2 * 4 * 2  # 2 fp16 rows
        archive.write_bytes(archive.read_bytes()[:cut])
        with pytest.raises(ArchiveFormatError, match="ends inside side tensor"):
            source.side("coords", 0, rows)
        source.close()
        source.close()  # idempotent
