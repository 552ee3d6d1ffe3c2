"""Relabel + replay with a context codec (vqae-ctx): what the student sees is decoded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from labelzip.archive import ArchiveReader, load_archive
from labelzip.augment import ViewConfig, make_views
from labelzip.codecs.base import LabelContext
from labelzip.distill import DistilledSet
from labelzip.ops.metrics import kl_divergence
from labelzip.pipelines.quickstart import ROW_SPECS
from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel
from labelzip.pipelines.replay import ReplayDataset
from labelzip.rate import RateGoal

VIEW = ViewConfig(output_size=(28, 28), scale=(0.5, 1.0), mix="cutmix")
FAST = {"prior_steps": 30, "rounds": 2, "round_steps": 15, "learning_rate": 0.05}
EPOCHS = 20


def _run(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module, **out: object
) -> Path:
    path = tmp_path / "ctx.lz"
    options = {"codebook_size": 6, **FAST}
    output = RelabelOutput(path=path, codec="vqae-ctx", options=options, **out)  # type: ignore[arg-type]
    config = RelabelConfig(epochs=EPOCHS, view=VIEW, batch_size=64, chunk_size=100)
    relabel(tiny_set, teacher, [output], config, teacher_id="lin:1")
    return path


def test_replay_batch_is_the_decode_of_the_teachers_view_labels(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    path = _run(tmp_path, tiny_set, teacher)
    replay = ReplayDataset(tiny_set, path)
    codec = replay.reader.codec
    m = len(tiny_set.images)
    for epoch in (0, 7, EPOCHS - 1):
        index = torch.tensor([5, 0, 11, 3])
        batch = replay.batch(epoch, index)
        # The context the student's views were rendered with (partner, lambda).
        ctx = LabelContext(index, batch.partner, batch.lam.float(), m)
        views, _ = make_views(tiny_set.images, index, seed=0, epoch=epoch, config=VIEW)
        with torch.no_grad():
            logits = teacher(views)
        want = codec.decode_in_context(codec.encode_in_context(logits, ctx), ctx)
        assert torch.equal(batch.logits, want)
        assert torch.equal(batch.views, views)
    replay.close()


def test_rate_target_is_met_by_the_file(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    # 240 labels: the ~2.6 KB header dominates, hence the generous target.
    path = _run(tmp_path, tiny_set, teacher, bits_per_label=130.0)
    size = os.path.getsize(path)
    budget = RateGoal(bits_per_label=130.0).total_bytes(EPOCHS * 12, 4)
    with ArchiveReader(path) as reader:
        assert reader.account().total_bytes == size <= budget
        assert reader.header.codec.config["num_images"] == 12
        assert reader.account().model_bytes >= 12 * 4 // 2  # prototypes (>= 4 bits)
        assert reader.header.codec.config["codebook_size"] > 1


def test_decompress_cli_rebuilds_the_context_from_the_archive(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    from labelzip.cli import main

    path = _run(tmp_path, tiny_set, teacher)
    out = tmp_path / "dense.safetensors"
    assert main(["decompress", str(path), "-o", str(out), "--quiet"]) == 0
    decoded = load_file(str(out))["logits"]
    assert torch.equal(decoded, load_archive(path))
    assert decoded.shape == (EPOCHS, 12, 4) and bool(torch.isfinite(decoded).all())


def test_quickstart_has_context_rows() -> None:
    from labelzip.pipelines.quickstart import DEFAULT_CODECS

    assert ROW_SPECS["vqae-ctx"]["codec"] == "vqae-ctx"
    assert ROW_SPECS["vqae-ctx-third"]["keep_fraction"] == pytest.approx(1 / 3)
    assert {"vqae-ctx", "vqae-ctx-third"} <= set(DEFAULT_CODECS)


@pytest.mark.parametrize("epochs", [1])
def test_fit_sample_smaller_than_the_views(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module, epochs: int
) -> None:
    """Two-pass relabel (fit on a sample): the fit context is the sample's."""
    path = tmp_path / "two.lz"
    output = RelabelOutput(
        path=path, codec="vqae-ctx", options={"codebook_size": 3, **FAST}
    )
    config = RelabelConfig(epochs=EPOCHS, view=VIEW, batch_size=64, fit_views=100)
    result = relabel(tiny_set, teacher, [output], config)
    assert not result.single_pass
    assert load_archive(path).shape == (EPOCHS, 12, 4) and epochs == 1


def test_ctx_transform_auto_prunes_to_its_bit_floor_and_replays_the_decode(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    """ctx-transform keeps the most views whose labels get >= min_label_bits each."""
    path = tmp_path / "tc.lz"
    bits = 160.0  # all-in per label; the header takes most of it at 240 labels
    output = RelabelOutput(
        path=path,
        codec="ctx-transform",
        options={"prior_steps": 30, "min_label_bits": 120.0},
        bits_per_label=bits,
        auto_prune=True,
    )
    config = RelabelConfig(epochs=EPOCHS, view=VIEW, batch_size=64, chunk_size=100)
    relabel(tiny_set, teacher, [output], config, teacher_id="lin:1")
    budget = RateGoal(bits_per_label=bits).total_bytes(EPOCHS * 12, 4)
    with ArchiveReader(path) as reader:
        assert reader.account().total_bytes == os.path.getsize(path) <= budget
        assert reader.prune is not None  # fewer views, more bits each
        stored = reader.header.num_stored
        planned = reader.header.codec.config["payload_budget_bytes"]
        assert 8 * planned / stored >= 120.0  # the floor holds for what it may spend
        assert reader.account().payload_bytes <= planned
        codec = reader.codec
    replay = ReplayDataset(tiny_set, path)
    m = len(tiny_set.images)
    index = torch.tensor([2, 9, 4])
    for epoch in (0, EPOCHS - 1):
        batch = replay.batch(epoch, index)
        want = replay.reader.decode(batch.source_epoch * m + index)
        assert torch.equal(batch.logits, want)
        views, _ = make_views(tiny_set.images, index, seed=0, epoch=epoch, config=VIEW)
        with torch.no_grad():
            teacher_logits = teacher(views)
        # Pruned views reuse a kept view's label *and* view: the student's
        # pair is the kept view's decoded label and that same view.
        kept = batch.source_epoch == epoch
        if bool(kept.any()):
            kl = kl_divergence(teacher_logits[kept], batch.logits[kept], 4.0)
            assert float(kl.max()) < 0.05
    replay.close()
    assert ROW_SPECS["ctx-transform"] == {"codec": "ctx-transform", "auto_prune": True}
    assert codec.kind == "ctx-transform"
