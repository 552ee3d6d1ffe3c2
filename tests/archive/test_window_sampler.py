"""WindowShuffleSampler: every label once per epoch, shuffled within windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from labelzip.archive import ArchiveLabels, WindowShuffleSampler, save_archive
from labelzip.codecs.registry import create_codec
from labelzip.errors import ConfigError


def test_each_epoch_is_a_permutation_shuffled_within_windows() -> None:
    sampler = WindowShuffleSampler(1000, window=64, seed=3)
    first = list(sampler)
    assert len(sampler) == 1000 and sorted(first) == list(range(1000))
    assert first != list(range(1000))
    # 64 consecutive draws stay in one window; the last window has 1000 % 64
    blocks, pos = [], 0
    for start in sorted({i // 64 * 64 for i in first}, key=first.index):
        size = min(64, 1000 - start)
        block = first[pos : pos + size]
        assert {i // 64 for i in block} == {start // 64}
        blocks.append(start)
        pos += size
    assert blocks != sorted(blocks)  # the windows are shuffled too
    assert list(sampler) == first  # same seed and epoch: same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(1000)) and second != first
    other = WindowShuffleSampler(1000, window=64, seed=4)
    assert list(other) != first


def test_bad_arguments_are_refused() -> None:
    for kwargs in ({"num_labels": -1}, {"window": 0}, {"seed": -2}):
        args = {"num_labels": 10, **kwargs}
        with pytest.raises(ConfigError):
            WindowShuffleSampler(**args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epoch"):
        WindowShuffleSampler(10).set_epoch(-1)
    assert list(WindowShuffleSampler(0)) == []


def test_a_loader_with_the_sampler_reads_every_label_once(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 12, generator=g) * 3
    codec = create_codec("topk", k=4, decoder="ms").fit([logits])
    path = tmp_path / "labels.lz"
    save_archive(path, codec, logits, chunk_size=256)
    labels = ArchiveLabels(path, cache_bytes=0)
    want = codec.decode(codec.encode(logits))
    sampler = WindowShuffleSampler(len(labels), window=512, seed=1)
    loader = DataLoader(labels, batch_size=100, sampler=sampler)
    order = torch.tensor(list(sampler))
    got = torch.cat(list(loader))
    assert torch.equal(got, want[order])
    # a batch draws from at most two windows (one where it does not straddle)
    for start in range(0, len(order), 100):
        assert len(set((order[start : start + 100] // 512).tolist())) <= 2


def _topk_archive(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8192, 12, generator=g) * 3
    codec = create_codec("topk", k=4, decoder="ms").fit([logits])
    path = tmp_path / "labels.lz"
    save_archive(path, codec, logits, chunk_size=128)  # 64 chunks
    return path


def test_a_thrashing_shuffle_warns_once_and_names_the_sampler(tmp_path: Path) -> None:
    labels = ArchiveLabels(_topk_archive(tmp_path), cache_bytes=0, auto_spill=False)
    loader = DataLoader(labels, batch_size=64, shuffle=True)
    with pytest.warns(RuntimeWarning, match="WindowShuffleSampler") as caught:
        for _ in range(3):  # every batch parses ~64 chunks for 64 labels
            for _batch in loader:
                pass
    assert sum("chunk parses" in str(w.message) for w in caught) == 1


def test_windowed_and_contiguous_reads_do_not_warn(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    path = _topk_archive(tmp_path)
    windowed = ArchiveLabels(path, cache_bytes=0)
    sampler = WindowShuffleSampler(len(windowed), window=128, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for _batch in DataLoader(windowed, batch_size=64, sampler=sampler):
            pass
    for _batch in DataLoader(ArchiveLabels(path, cache_bytes=0), batch_size=64):
        pass
    assert not [w for w in recwarn if "chunk parses" in str(w.message)]
