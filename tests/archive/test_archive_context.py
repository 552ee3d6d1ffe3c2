"""Archives of a context codec (vqae-ctx): self-contained, rate-controlled, checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.archive import (
    ArchiveMetadata,
    ArchiveReader,
    ArchiveWriter,
    Layout,
    load_archive,
    save_archive,
)
from labelzip.augment import ViewConfig
from labelzip.codecs.context.viewmix import ViewMixCodec, view_mix_prior
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import create_codec
from labelzip.errors import ArchiveFormatError, ConfigError, InputError
from labelzip.pipelines.relabel_types import recipe_context
from labelzip.rate import (
    ArchiveTarget,
    RateGoal,
    configure_codec,
    estimate_header_bytes,
    fit_codec,
)

torch.set_num_threads(1)

E, M, C = 60, 10, 5
LAYOUT = Layout(("epoch", "sample"), (E, M))
VIEW = ViewConfig(output_size=(16, 16), scale=(0.5, 1.0), mix="cutmix")
RECIPE: dict[str, Any] = {
    "view": VIEW.model_dump(mode="json"),
    "seed": 3,
    "image_shape": [1, 16, 16],
}
META = ArchiveMetadata(user={"relabel": RECIPE})
FAST: dict[str, Any] = {
    "prior_steps": 30,
    "rounds": 2,
    "round_steps": 15,
    "learning_rate": 0.05,
}


def _labels() -> torch.Tensor:
    """(E*M, C) logits shaped like relabelled views: mixed prototypes + noise."""
    ctx = recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, torch.arange(E * M))
    g = torch.Generator().manual_seed(0)
    protos = 3 * torch.randn(M, C, generator=g)
    prior = view_mix_prior(protos, ctx)
    return prior + 0.7 * torch.randn(prior.shape, generator=g)


def test_recipe_context_matches_the_view_parameters() -> None:
    from labelzip.augment import sample_view_params

    ctx = recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, torch.arange(E * M))
    images = torch.zeros(M, 1, 16, 16)
    for e in range(E):
        p = sample_view_params(images, torch.arange(M), seed=3, epoch=e, config=VIEW)
        part = ctx.select(slice(e * M, (e + 1) * M))
        assert torch.equal(part.image, torch.arange(M))
        assert torch.equal(part.partner, p.partner)
        assert torch.equal(part.weight, p.lam.float())
    assert bool((ctx.partner >= 0).all()) and float(ctx.weight.min()) < 0.9
    flat = torch.tensor([599, 0, 13])
    assert recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, flat).equals(
        ctx.select(flat)
    )
    mixup = {"relabel": {**RECIPE, "view": {**RECIPE["view"], "mix": "mixup"}}}
    mix_ctx = recipe_context(mixup, LAYOUT.dims, LAYOUT.shape, torch.arange(M))
    p = sample_view_params(
        images,
        torch.arange(M),
        seed=3,
        epoch=0,
        config=VIEW.model_copy(update={"mix": "mixup"}),
    )
    assert torch.equal(mix_ctx.weight, p.lam.float())
    with pytest.raises(ArchiveFormatError, match="view recipe"):
        recipe_context({}, LAYOUT.dims, LAYOUT.shape, flat)
    with pytest.raises(ArchiveFormatError, match="layout"):
        recipe_context(META.user, ("sample",), (600,), flat)


def test_round_trip_file_size_and_reader_rebuilds_context(tmp_path: Path) -> None:
    logits = _labels()
    codec = create_codec("vqae-ctx", codebook_size=6, **FAST)
    path = tmp_path / "ctx.lz"
    account = save_archive(
        path, codec, logits, layout=LAYOUT, metadata=META, chunk_size=128
    )
    assert account.total_bytes == os.path.getsize(path)
    assert account.model_bytes == ViewMixCodec.model_bytes_for(M, C, 6)
    ctx = recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, torch.arange(E * M))
    direct = torch.cat(
        [
            codec.decode_in_context(
                codec.encode_in_context(
                    logits[s : s + 128], ctx.select(slice(s, s + 128))
                ),
                ctx.select(slice(s, s + 128)),
            )
            for s in range(0, E * M, 128)
        ]
    )
    decoded = load_archive(path).reshape(-1, C)
    assert torch.equal(decoded, direct)
    with ArchiveReader(path) as reader:
        assert reader.header.codec.config["context"] == "view-mix"
        picks = torch.tensor([599, 3, 250])
        assert torch.equal(reader.decode(picks), direct[picks])
    again = tmp_path / "again.lz"
    codec2 = create_codec("vqae-ctx", codebook_size=6, **FAST)
    save_archive(again, codec2, logits, layout=LAYOUT, metadata=META, chunk_size=128)
    assert path.read_bytes() == again.read_bytes()


def test_pruned_archive_decodes_kept_views(tmp_path: Path) -> None:
    logits = _labels()
    plan = PrunePlan(LAYOUT.dims, LAYOUT.shape, 0.5, 1)
    codec = create_codec("vqae-ctx", codebook_size=4, **FAST)
    path = tmp_path / "pruned.lz"
    save_archive(
        path, codec, logits, layout=LAYOUT, metadata=META, prune=plan, chunk_size=100
    )
    kept = plan.kept_indices()
    ctx = recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, kept)
    want = codec.decode_in_context(codec.encode_in_context(logits[kept], ctx), ctx)
    with ArchiveReader(path) as reader:
        assert torch.equal(reader.decode(kept), want)


def test_rate_target_met_with_the_real_file_size(tmp_path: Path) -> None:
    logits = _labels()
    ratio = 2.0
    ctx = recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, torch.arange(E * M))
    codec = fit_codec(
        "vqae-ctx",
        [logits],
        {"num_images": M, **FAST},
        target=ArchiveTarget(RateGoal(ratio=ratio), LAYOUT, C, metadata=META),
        context=ctx,
    )
    assert codec.config.codebook_size > 1  # type: ignore[attr-defined]
    path = tmp_path / "rate.lz"
    with ArchiveWriter(path, codec, layout=LAYOUT, metadata=META) as writer:
        writer.write(logits[:250], ctx.select(slice(0, 250)))
        writer.write(logits[250:])
    size = os.path.getsize(path)
    budget = RateGoal(ratio=ratio).total_bytes(E * M, C)
    assert writer.account is not None and writer.account.total_bytes == size
    assert size <= budget
    assert size > 0.8 * budget  # the budget is spent, not wasted


def test_header_estimate_before_fit_bounds_the_real_header(tmp_path: Path) -> None:
    """vqae-ctx plans its tensors and stored config: the estimate is tight."""
    logits = _labels()
    ctx = recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, torch.arange(E * M))
    total = RateGoal(ratio=2.0).total_bytes(E * M, C)
    for coding, slack in (("packed", 40), ("ans", 400)):
        codec = configure_codec(
            "vqae-ctx",
            {"num_images": M, "prototype_coding": coding, **FAST},
            ArchiveTarget(RateGoal(ratio=2.0), LAYOUT, C, metadata=META),
        )
        est = estimate_header_bytes(
            E * M,
            4096,
            codec,
            num_classes=C,
            layout=LAYOUT,
            metadata=META,
            max_file_bytes=total,
        )
        codec.fit_in_context([logits], ctx)
        account = save_archive(
            tmp_path / "e.lz", codec, logits, layout=LAYOUT, metadata=META
        )
        assert account.total_bytes <= total
        # packed: only the penalty's digits (placeholder: 23 characters) and
        # offsets differ; ans: the fit may fall back to packed prototypes (no
        # frequency table entry, no coding fields).
        assert account.header_bytes <= est <= account.header_bytes + slack


def test_missing_recipe_or_context_is_a_clear_error(tmp_path: Path) -> None:
    logits = _labels()
    ctx = recipe_context(META.user, LAYOUT.dims, LAYOUT.shape, torch.arange(E * M))
    codec = create_codec("vqae-ctx", codebook_size=4, **FAST)
    codec.fit_in_context([logits], ctx)
    with pytest.raises(ConfigError, match="view recipe"):
        ArchiveWriter(tmp_path / "a.lz", codec, layout=LAYOUT)
    with pytest.raises(ConfigError, match="layout"):
        ArchiveWriter(tmp_path / "b.lz", codec, metadata=META)
    with pytest.raises(ConfigError, match="view recipe"):
        save_archive(tmp_path / "c.lz", create_codec("vqae-ctx"), logits, layout=LAYOUT)
    writer = ArchiveWriter(tmp_path / "d.lz", codec, layout=LAYOUT, metadata=META)
    shifted = ctx.select(slice(1, 11))
    with pytest.raises(InputError, match="differs"):
        writer.write(logits[:10], shifted)
    writer.abort()
    path = tmp_path / "ok.lz"
    save_archive(path, codec, logits, layout=LAYOUT, metadata=META)
    reader = ArchiveReader(path)
    reader.header = reader.header.model_copy(update={"user": {}})
    with pytest.raises(ArchiveFormatError, match="view context.*view recipe"):
        reader.decode(torch.tensor([0]))
