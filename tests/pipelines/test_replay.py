"""Replay: bit-exact views, random-access labels, pruned reuse, and mismatch errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.archive import ArchiveReader, load_archive, save_archive
from labelzip.augment import ViewConfig
from labelzip.codecs.registry import create_codec
from labelzip.distill import DistilledSet
from labelzip.errors import (
    ArchiveFormatError,
    CodecMismatchError,
    ConfigError,
    InputError,
)
from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel
from labelzip.pipelines.replay import ReplayDataset, ViewCache, epoch_order

VIEW = ViewConfig(output_size=28, scale=(0.2, 1.0), mix="cutmix")
EPOCHS = 4


def _relabel(
    tmp_path: Path, image_set: DistilledSet, teacher: nn.Module, **out: object
) -> tuple[Path, list[torch.Tensor]]:
    """Relabel into ``x.lz`` with one teacher batch per epoch; the views seen."""
    path = tmp_path / "x.lz"
    config = RelabelConfig(epochs=EPOCHS, view=VIEW, batch_size=64, seed=3)
    recording = _Recorder(teacher)
    relabel(image_set, recording, [RelabelOutput(path=path, **out)], config)
    return path, recording.seen


class _Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        out: torch.Tensor = self.inner(x)
        return out


def test_replayed_views_equal_relabel_views_bit_for_bit(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    path, seen = _relabel(tmp_path, tiny_set, teacher, options={"dtype": "fp32"})
    assert len(seen) == EPOCHS  # one batch of all 12 images per epoch
    replay = ReplayDataset(tiny_set, path, num_classes=4)
    labels = load_archive(path)
    for epoch in range(EPOCHS):
        # Any order and batching: views are keyed by (seed, epoch, image).
        for batch in replay.batches(epoch, 5, shuffle=True, seed=epoch):
            assert torch.equal(batch.views, seen[epoch][batch.index])
            assert torch.equal(batch.logits, labels[epoch, batch.index])
            assert torch.equal(batch.source_epoch, torch.full((len(batch),), epoch))
            mixed = batch.partner >= 0
            assert bool(mixed.all()) and bool((batch.lam < 1).all())
    assert replay.decode_seconds > 0 and replay.render_seconds > 0


def test_view_cache_serves_the_same_views(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    path, seen = _relabel(tmp_path, tiny_set, teacher)
    cache = ViewCache()
    first = ReplayDataset(tiny_set, path, view_cache=cache)
    second = ReplayDataset(tiny_set, path, view_cache=cache)
    index = torch.tensor([11, 0, 5])
    assert torch.equal(first.batch(2, index).views, seen[2][index])
    assert torch.equal(second.batch(2, index).views, seen[2][index])
    assert set(cache.views) == {2} and set(cache.params) == {2}
    other = tmp_path / "seed9.lz"
    config = RelabelConfig(epochs=2, view=VIEW, seed=9)
    relabel(tiny_set, teacher, [RelabelOutput(path=other)], config)
    with pytest.raises(ConfigError, match="one cache per relabel run"):
        ReplayDataset(tiny_set, other, view_cache=cache)


def test_pruned_view_is_replaced_by_the_kept_view_it_reuses(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    path, _ = _relabel(tmp_path, tiny_set, teacher, keep_fraction=0.5)
    # Views of every epoch, rendered by an unpruned relabel with the same seed.
    (tmp_path / "all").mkdir()
    _, every = _relabel(tmp_path / "all", tiny_set, teacher)
    replay = ReplayDataset(tiny_set, path)
    with ArchiveReader(path) as reader:
        plan = reader.prune
        assert plan is not None
        kept_flat = plan.kept_indices()
        stored = load_archive(path)
    reused = 0
    for epoch in range(EPOCHS):
        batch = replay.batch(epoch, torch.arange(12))
        flat = epoch * 12 + torch.arange(12)
        source = kept_flat[plan.stored_index(flat)]
        assert torch.equal(batch.source_epoch, source // 12)
        for i in range(12):
            e = int(batch.source_epoch[i])
            assert torch.equal(batch.views[i], every[e][i])
            assert torch.equal(batch.logits[i], stored[e, i])
        reused += int((batch.source_epoch != epoch).sum())
    assert reused == 24  # half of the 48 views reuse a kept one


def test_epoch_order_shards_cover_the_epoch() -> None:
    full = epoch_order(10, 3, seed=1)
    assert sorted(full.tolist()) == list(range(10))
    assert torch.equal(full, epoch_order(10, 3, seed=1))
    assert not torch.equal(full, epoch_order(10, 4, seed=1))
    shards = [epoch_order(10, 3, seed=1, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping around
    assert set(torch.cat(shards).tolist()) == set(range(10))
    padded = torch.cat([full, full[:2]])
    for rank, shard in enumerate(shards):
        assert torch.equal(shard, padded[rank::3])


def test_mismatched_inputs_are_refused(
    tmp_path: Path,
    tiny_set: DistilledSet,
    set_factory: Callable[..., DistilledSet],
    teacher: nn.Module,
) -> None:
    path, _ = _relabel(tmp_path, tiny_set, teacher)
    other = set_factory(3, seed=9)  # same shapes and classes, other pixels
    with pytest.raises(CodecMismatchError, match="made for distilled set .* not for"):
        ReplayDataset(other, path)
    with pytest.raises(CodecMismatchError, match="model has 10 classes.*4-class"):
        ReplayDataset(tiny_set, path, num_classes=10)
    bigger = set_factory(4, seed=0)
    with pytest.raises(CodecMismatchError, match="labels 12 images, the set has 16"):
        ReplayDataset(bigger, path)
    small = DistilledSet(
        images=tiny_set.images[:, :, :14, :14].contiguous(),
        labels=tiny_set.labels,
        class_names=tiny_set.class_names,
        method="random",
        ipc=3,
    )
    with pytest.raises(InputError, match=r"shape \(1, 14, 14\).*\(1, 28, 28\)"):
        ReplayDataset(small, path)
    renamed = DistilledSet(
        images=tiny_set.images,
        labels=tiny_set.labels,
        class_names=tuple(reversed(tiny_set.class_names)),
        method="random",
        ipc=3,
    )
    with pytest.raises(CodecMismatchError):
        ReplayDataset(renamed, path)
    plain = tmp_path / "plain.lz"
    logits = torch.randn(12, 4)
    save_archive(plain, create_codec("dense").fit([logits]), logits)
    with pytest.raises(ArchiveFormatError, match="not written by `labelzip relabel`"):
        ReplayDataset(tiny_set, plain)
    replay = ReplayDataset(tiny_set, path)
    with pytest.raises(InputError, match="epoch 4 outside"):
        replay.batch(EPOCHS, torch.arange(3))
