"""Relabel: views x teacher -> archives (layout, metadata, labels, pruning, errors)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.archive import ArchiveReader, load_archive
from labelzip.augment import (
    ViewConfig,
    explicit_param_bytes,
    explicit_params,
    make_views,
    sample_view_params,
)
from labelzip.codecs.prune import PrunePlan
from labelzip.data.base import ImageDataset
from labelzip.distill import DistilledSet, distill
from labelzip.distributed import Ranks
from labelzip.errors import (
    CodecMismatchError,
    ConfigError,
    InputError,
    UnreachableTargetError,
)
from labelzip.pipelines.imageset import TensorImageSet
from labelzip.pipelines.relabel import (
    RELABEL_KEY,
    RelabelConfig,
    RelabelOutput,
    relabel,
)
from labelzip.pipelines.relabel_ranks import relabel_chunked
from labelzip.rate import ArchiveTarget, RateGoal, configure_codec

from .conftest import LinearTeacher, make_images

VIEW = ViewConfig(output_size=28, scale=(0.3, 1.0), mix="cutmix")


def _config(**kw: object) -> RelabelConfig:
    return RelabelConfig(**{"epochs": 3, "view": VIEW, "batch_size": 5, **kw})


def _expected_logits(
    teacher: nn.Module, images: torch.Tensor, epochs: int, seed: int = 0
) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for e in range(epochs):
            views, _ = make_views(
                images, torch.arange(len(images)), seed=seed, epoch=e, config=VIEW
            )
            rows.append(teacher(views))
    return torch.stack(rows)  # (E, M, C)


def test_dense_archive_holds_the_teachers_view_logits(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    out = RelabelOutput(path=tmp_path / "d.lz", options={"dtype": "fp32"})
    # One batch per epoch: the expected logits come from the same batches.
    config = _config(batch_size=64)
    result = relabel(tiny_set, teacher, [out], config, teacher_id="lin:1")
    stored = load_archive(tmp_path / "d.lz")
    assert stored.shape == (3, 12, 4)
    assert torch.equal(stored, _expected_logits(teacher, tiny_set.images, 3))
    assert result.num_views == 36 and result.teacher_views == 36
    assert result.single_pass and result.archives[0].keep_per_image == 3
    assert result.archives[0].account.total_bytes == (tmp_path / "d.lz").stat().st_size


def test_metadata_records_set_teacher_and_recipe(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    relabel(tiny_set, teacher, [RelabelOutput(path=tmp_path / "d.lz")], _config(seed=7))
    with ArchiveReader(tmp_path / "d.lz") as reader:
        header = reader.header
        assert list(reader.layout.dims) == ["epoch", "sample"]
        assert list(reader.layout.shape) == [3, 12]
        assert header.dataset_fingerprint == tiny_set.fingerprint
        assert header.class_names == list(tiny_set.class_names)
        assert header.teacher is not None and header.teacher.startswith(
            "LinearTeacher:"
        )
        record = header.user[RELABEL_KEY]
        assert record["seed"] == 7 and record["epochs"] == 3
        assert ViewConfig.model_validate(record["view"]) == VIEW
        assert record["augmentation"] == "replayed"
        assert record["augmentation_bytes_replayed"] == 0
        assert record["augmentation_bytes_explicit"] == explicit_param_bytes(
            36, "cutmix"
        )
        assert reader.account().side_bytes == 0


def test_store_augmentations_keeps_explicit_records(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    relabel(
        tiny_set,
        teacher,
        [RelabelOutput(path=tmp_path / "a.lz")],
        _config(store_augmentations=True),
    )
    with ArchiveReader(tmp_path / "a.lz") as reader:
        side = reader.side_tensors()
        assert reader.account().side_bytes == explicit_param_bytes(36, "cutmix")
        assert reader.header.user[RELABEL_KEY]["augmentation"] == "explicit"
    params = sample_view_params(
        tiny_set.images, torch.arange(12), seed=0, epoch=2, config=VIEW
    )
    for name, tensor in explicit_params(params, "cutmix").items():
        assert torch.equal(side[f"aug_{name}"][24:36], tensor)


def test_one_pass_feeds_several_archives_and_two_pass_matches(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    outs = [
        RelabelOutput(path=tmp_path / "d.lz", options={"dtype": "fp32"}),
        RelabelOutput(path=tmp_path / "t.lz", codec="topk", options={"k": 2}),
    ]
    one = relabel(tiny_set, teacher, outs, _config())
    assert one.single_pass and one.teacher_views == 36
    first = (tmp_path / "d.lz").read_bytes()
    # A fitting sample smaller than the views: a sample pass, then a full pass.
    two = relabel(tiny_set, teacher, outs, _config(fit_views=10))
    assert not two.single_pass and two.teacher_views == 36 + 10
    assert (tmp_path / "d.lz").read_bytes() == first
    topk = load_archive(tmp_path / "t.lz")
    assert torch.isfinite(topk).sum() > 0 and topk.shape == (3, 12, 4)


def test_pruned_archive_labels_only_kept_views(
    tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module
) -> None:
    out = RelabelOutput(
        path=tmp_path / "p.lz", options={"dtype": "fp32"}, keep_fraction=0.25
    )
    result = relabel(tiny_set, teacher, [out], _config(epochs=4, batch_size=64))
    # Only the kept views went through the teacher: 1 of 4 per image.
    assert result.teacher_views == 12 and result.archives[0].keep_per_image == 1
    expected = _expected_logits(teacher, tiny_set.images, 4).reshape(48, 4)
    with ArchiveReader(tmp_path / "p.lz") as reader:
        plan = reader.prune
        assert plan is not None and reader.header.num_stored == 12
        kept = plan.kept_indices()
        # Kept views are batched differently than all views: equal up to BLAS order.
        torch.testing.assert_close(
            reader.decode(kept), expected[kept], rtol=0, atol=1e-4
        )
        # A pruned label is the kept label of the same image.
        source = kept[plan.stored_index(torch.arange(48))]
        assert torch.equal(source % 12, torch.arange(48) % 12)
        assert torch.equal(reader.decode(torch.arange(48)), reader.decode(source))


def test_auto_prune_meets_a_ratio_the_codec_cannot_alone(
    tmp_path: Path, set_factory: Callable[..., DistilledSet], teacher: nn.Module
) -> None:
    big = set_factory(25, seed=1)  # 100 images x 40 views = 4000 labels, 64 kB fp16
    out = RelabelOutput(
        path=tmp_path / "a.lz", codec="dense", options={"dtype": "fp16"},
        ratio=10, auto_prune=True,
    )  # fmt: skip
    result = relabel(big, teacher, [out], _config(epochs=40, batch_size=256))
    archive = result.archives[0]
    assert 1 <= archive.keep_per_image < 40
    assert archive.account.ratio >= 10
    # One more kept view per image misses the target (by the archive's own,
    # conservative header estimate).
    with ArchiveReader(tmp_path / "a.lz") as reader:
        layout, metadata = reader.layout, reader.metadata
    more = PrunePlan(
        layout.dims, layout.shape, (archive.keep_per_image + 1) / 40, out.prune_seed
    )
    with pytest.raises(UnreachableTargetError):
        configure_codec("dense", {"dtype": "fp16"}, ArchiveTarget(RateGoal(ratio=10), layout, 4, prune=more, metadata=metadata))  # fmt: skip
    with pytest.raises(UnreachableTargetError, match="even with the label of 1 of"):
        relabel(
            big,
            teacher,
            [out.model_copy(update={"ratio": 500.0})],
            _config(epochs=40, batch_size=256),
        )


def test_rded_online_labels_are_materialised_like_any_set(
    tmp_path: Path,
    dataset_factory: Callable[..., ImageDataset],
    teacher: nn.Module,
) -> None:
    real = dataset_factory(40, seed=4)
    stitched = distill("rded", real, teacher, ipc=2, seed=0, factor=2, candidates=8)
    out = RelabelOutput(path=tmp_path / "r.lz")
    result = relabel(stitched, teacher, [out], _config(epochs=2))
    assert result.teacher_views == 2 * 8
    with ArchiveReader(out.path) as reader:
        assert reader.header.dataset_fingerprint == stitched.fingerprint
        assert list(reader.layout.shape) == [2, 8]


def test_bad_inputs(tmp_path: Path, tiny_set: DistilledSet, teacher: nn.Module) -> None:
    out = RelabelOutput(path=tmp_path / "x.lz")
    seven = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, 7))
    with pytest.raises(CodecMismatchError, match="outputs \\(5, 7\\).*4 classes"):
        relabel(tiny_set, seven, [out], _config())
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(InputError, match="teacher cannot run on views of shape"):
        relabel(tiny_set, rgb, [out], _config())
    flat = TensorImageSet(
        tiny_set.images[:, 0], tiny_set.labels, tiny_set.class_names, "f" * 64
    )
    with pytest.raises(InputError, match=r"shape \(M, ch, H, W\).*\(12, 28, 28\)"):
        relabel(flat, teacher, [out], _config())
    with pytest.raises(ConfigError, match="at least one output"):
        relabel(tiny_set, teacher, [], _config())
    with pytest.raises(ConfigError, match="same file"):
        relabel(tiny_set, teacher, [out, out], _config())
    with pytest.raises(ValueError, match="auto_prune needs a ratio"):
        RelabelOutput(path=tmp_path / "y.lz", auto_prune=True)
    assert not (tmp_path / "x.lz").exists()


def test_auto_prune_rskd_at_40x_on_10_classes(tmp_path: Path) -> None:
    # The quickstart's rskd row: 4 bits per label all-in before pruning. The
    # largest kept count leaves each kept label just over 4 bits (one 4-bit id,
    # S=1), which measured sizing must accept as for_target did.
    labels = torch.arange(10).repeat_interleave(10)  # 100 images x 200 views
    images = DistilledSet(
        images=make_images(labels % 4, seed=2),
        labels=labels,
        class_names=tuple(f"class{c}" for c in range(10)),
        method="random",
        ipc=10,
    )
    teacher = LinearTeacher(10, seed=3).eval()
    out = RelabelOutput(path=tmp_path / "r.lz", codec="rskd", ratio=40, auto_prune=True)
    config = _config(epochs=200, batch_size=500)
    result = relabel(images, teacher, [out], config)
    archive = result.archives[0]
    assert archive.codec_config["num_samples"] == 1
    assert 1 <= archive.keep_per_image < 200
    assert 40 <= archive.account.ratio <= 40 * 1.1
    assert load_archive(tmp_path / "r.lz").shape == (200, 100, 10)
    with ArchiveReader(tmp_path / "r.lz") as reader:
        layout, metadata = reader.layout, reader.metadata
    more = PrunePlan(
        layout.dims, layout.shape, (archive.keep_per_image + 1) / 200, out.prune_seed
    )
    with pytest.raises(UnreachableTargetError):
        configure_codec("rskd", {}, ArchiveTarget(RateGoal(ratio=40), layout, 10, chunk_size=config.chunk_size, prune=more, metadata=metadata))  # fmt: skip


@pytest.mark.parametrize(
    "output",
    [
        {"codec": "topk", "options": {"decoder": "ms"}, "ratio": 3},
        {"codec": "vqae", "options": {"steps": 20}, "keep_fraction": 0.5},
        {
            "codec": "ctx-transform",
            "options": {"prior_steps": 10},
            "ratio": 4,
            "auto_prune": True,
        },
    ],
)
def test_one_chunked_process_writes_the_bytes_of_relabel(
    tmp_path: Path, output: dict[str, object]
) -> None:
    # `labelzip relabel` always writes through relabel_chunked (resumable); the
    # library's relabel() (quickstart, benches) must give the same archive.
    labels = torch.arange(10).repeat_interleave(2)
    images = DistilledSet(
        images=make_images(labels % 4, seed=5),
        labels=labels,
        class_names=tuple(f"class{c}" for c in range(10)),
        method="random",
        ipc=2,
    )
    teacher = LinearTeacher(10, seed=1).eval()
    config = _config(epochs=40, batch_size=7, fit_views=300, chunk_size=64)
    direct = RelabelOutput(path=tmp_path / "direct.lz", **output)  # type: ignore[arg-type]
    chunked = direct.model_copy(update={"path": tmp_path / "chunked.lz"})
    relabel(images, teacher, [direct], config, teacher_id="t")
    result = relabel_chunked(
        images, teacher, chunked, config, teacher_id="t", device=torch.device("cpu"),
        ranks=Ranks(),
    )  # fmt: skip
    assert result is not None
    assert chunked.path.read_bytes() == direct.path.read_bytes()
