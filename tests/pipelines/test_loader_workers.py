"""Student DataLoaders with 2 worker processes, each reading through its own reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from labelzip.archive import ArchiveLabels, load_archive, save_archive
from labelzip.augment import ViewConfig
from labelzip.codecs.registry import create_codec
from labelzip.distill import DistilledSet
from labelzip.errors import InputError
from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel
from labelzip.pipelines.replay import ReplayDataset, ReplayEpoch

VIEW = ViewConfig(output_size=28, scale=(0.2, 1.0), mix="cutmix")


def test_replay_epoch_with_two_workers_equals_direct_replay(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    path = tmp_path / "x.lz"
    config = RelabelConfig(epochs=3, view=VIEW, batch_size=64, seed=3)
    relabel(
        tiny_set,
        teacher,
        [RelabelOutput(path=path, codec="topk", options={"k": 2})],
        config,
    )
    replay = ReplayDataset(tiny_set, path, num_classes=4)
    data = ReplayEpoch(replay, epoch=0)
    labels = load_archive(path)
    seen = 0
    for epoch in (1, 2):
        data.set_epoch(epoch)
        g = torch.Generator().manual_seed(epoch)
        loader = DataLoader(
            data, batch_size=5, shuffle=True, generator=g, num_workers=2
        )
        for views, logits, index, source, partner, lam in loader:
            want = replay.batch(epoch, index)
            assert torch.equal(views, want.views)
            assert torch.equal(logits, labels[epoch, index])
            assert torch.equal(source, want.source_epoch)
            assert torch.equal(partner, want.partner)
            assert torch.equal(lam, want.lam)
            seen += len(index)
    assert seen == 2 * len(tiny_set.images)
    with pytest.raises(InputError, match="outside"):
        data.set_epoch(3)
    with pytest.raises(InputError, match="must lie in"):
        data.__getitems__([0, 12])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_archive_labels_with_two_workers(
    tmp_path: Path, make_logits, context: str
) -> None:
    logits = make_logits(600, 10, 5)
    codec = create_codec("vqae", hidden_dim=8, steps=10, num_ids=2, codebook_size=8)
    codec.fit([logits])
    path = tmp_path / "l.lz"
    save_archive(path, codec, logits, chunk_size=128)
    whole = load_archive(path)
    labels = ArchiveLabels(path, cache_bytes=1 << 20)
    assert len(labels) == 600 and torch.equal(labels[17], whole[17])
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(
        labels,
        batch_size=64,
        sampler=order.tolist(),
        num_workers=2,
        multiprocessing_context=context,
    )
    got = torch.cat(list(loader))
    assert torch.equal(got, whole[order])
    assert labels.reader._fd is not None  # the main process's own, from labels[17]
