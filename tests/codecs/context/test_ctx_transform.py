"""ctx-transform: context prior + scalar-quantised PCA residual (round trip, rate, errors)."""

from __future__ import annotations

import json

import pytest
import torch

from labelzip.codecs.base import EncodedBlock, LabelContext
from labelzip.codecs.context.ctx_transform import (
    ContextTransformCodec,
    ContextTransformConfig,
    geometric_tables,
)
from labelzip.codecs.context.viewmix import view_mix_prior
from labelzip.codecs.entropy import TABLE_PRECISION_BITS
from labelzip.codecs.registry import CODEC_IDS, create_codec
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    UnreachableTargetError,
)
from labelzip.ops.metrics import kl_divergence
from labelzip.selection.auto import CONTEXT_CANDIDATES

# The same views and teacher model as vqae-ctx's tests (M images, C classes).
from .test_viewmix import C, M, _context, _logits

torch.set_num_threads(1)

FAST = {"prior_steps": 30, "learning_rate": 0.05}


def _fit(**kw: object) -> tuple[ContextTransformCodec, torch.Tensor, LabelContext]:
    ctx = _context()
    logits = _logits(ctx)
    codec = create_codec("ctx-transform", **{**FAST, **kw})
    assert isinstance(codec, ContextTransformCodec)
    codec.fit_in_context([logits[:150], logits[150:]], ctx)
    return codec, logits, ctx


def test_registered_with_its_own_id() -> None:
    assert CODEC_IDS["ctx-transform"][0] == 9
    assert ContextTransformCodec.needs_context and ContextTransformCodec.codec_id == 9


def test_finer_steps_cost_more_bytes_and_give_lower_kl() -> None:
    results = []
    for step in (2.0, 0.5, 0.1):
        codec, logits, ctx = _fit(step=step)
        block = codec.encode_in_context(logits, ctx)
        decoded = codec.decode_in_context(block, ctx)
        assert decoded.shape == logits.shape and decoded.dtype == torch.float32
        results.append(
            (block.nbytes, float(kl_divergence(logits, decoded, 4.0).mean()))
        )
    sizes, kls = zip(*results, strict=True)
    assert sizes[0] < sizes[1] < sizes[2]
    assert kls[0] > kls[1] > kls[2]
    assert kls[2] < 1e-3  # step 0.1: error <= 0.05 per axis (fp16 basis aside)


def test_decoded_residual_is_within_half_a_step_on_every_axis() -> None:
    codec, logits, ctx = _fit(step=0.3)
    decoded = codec.decode_in_context(codec.encode_in_context(logits, ctx), ctx)
    teacher = logits - logits.mean(1, keepdim=True)
    error = teacher - decoded
    error = error - error.mean(1, keepdim=True)  # softmax ignores a constant
    basis = codec.model_tensors()["basis"].float()
    coords = error @ basis.T
    assert float(coords.abs().max()) <= 0.15 + 0.02  # + fp16 rounding of the basis


def test_deterministic_bytes_and_from_stored_identical() -> None:
    codec, logits, ctx = _fit(step=0.4)
    block = codec.encode_in_context(logits, ctx)
    again, _, _ = _fit(step=0.4)
    assert torch.equal(again.encode_in_context(logits, ctx).data, block.data)
    config = json.loads(json.dumps(codec.to_config()))
    rebuilt = ContextTransformCodec.from_stored(config, codec.model_tensors())
    assert torch.equal(
        rebuilt.decode_in_context(block, ctx), codec.decode_in_context(block, ctx)
    )
    assert torch.equal(rebuilt.encode_in_context(logits, ctx).data, block.data)


def test_geometric_tables_are_integer_exact_symmetric_and_decaying() -> None:
    tables = geometric_tables(torch.tensor([32768, 60000], dtype=torch.int32), 5)
    assert tables.shape == (2, 11) and tables.dtype == torch.int16
    assert torch.equal(
        tables.long().sum(1), torch.full((2,), 1 << TABLE_PRECISION_BITS)
    )
    assert int((tables - tables.flip(1)).abs().max()) <= 1  # rounding remainder
    half = tables[0, 5:].long()
    assert bool((half[:-1] >= half[1:]).all())
    assert abs(float(half[0] / half[1]) - 2.0) < 0.01  # decay 1/2
    again = geometric_tables(torch.tensor([32768, 60000], dtype=torch.int32), 5)
    assert torch.equal(tables, again)
    with pytest.raises(ArchiveFormatError, match="decay"):
        geometric_tables(torch.tensor([0]), 3)


def test_auto_lifts_the_floor_for_its_ctx_transform_candidates() -> None:
    """auto measures view budgets itself: its candidate accepts 8 bits per label."""
    (options,) = [o for c, o in CONTEXT_CANDIDATES if c == "ctx-transform"]
    n = 4000
    budget = ContextTransformCodec.model_bytes_for(M, C, 8) + n  # 8 bits per label
    codec = ContextTransformCodec.for_target(
        num_labels=n,
        num_classes=C,
        budget_bytes=budget,
        num_images=M,
        prototype_bits=8,
        **options,
    )
    assert codec.config.payload_budget_bytes == n


def test_for_target_meets_the_payload_and_refuses_below_min_label_bits() -> None:
    ctx = _context()
    logits = _logits(ctx)
    n = len(ctx)
    model = ContextTransformCodec.model_bytes_for(M, C, 8)
    codec = ContextTransformCodec.for_target(
        num_labels=n,
        num_classes=C,
        budget_bytes=model + 2 * n,  # 16 bits per label
        num_images=M,
        prototype_bits=8,
        **FAST,
    )
    assert codec.config.payload_budget_bytes == 2 * n
    codec.fit_in_context([logits], ctx, num_labels=n)
    block = codec.encode_in_context(logits, ctx)
    assert block.nbytes <= codec.config.payload_budget_bytes
    assert block.nbytes > n  # it spends the budget: more than 8 bits per label
    with pytest.raises(UnreachableTargetError, match="min_label_bits"):
        ContextTransformCodec.for_target(
            num_labels=n,
            num_classes=C,
            budget_bytes=model + n,  # 8 bits per label < 16
            num_images=M,
            prototype_bits=8,
        )
    ContextTransformCodec.for_target(  # a lower floor accepts it
        num_labels=n,
        num_classes=C,
        budget_bytes=model + n,
        num_images=M,
        prototype_bits=8,
        min_label_bits=4.0,
    )
    with pytest.raises(ConfigError, match="num_images"):
        ContextTransformCodec.for_target(
            num_labels=n, num_classes=C, budget_bytes=10**6
        )


def test_without_context_is_a_clear_error() -> None:
    codec, logits, ctx = _fit()
    for call in (
        lambda: codec.encode(logits),
        lambda: codec.decode(EncodedBlock(1, torch.zeros(4, dtype=torch.uint8))),
        lambda: create_codec("ctx-transform").fit([logits]),
    ):
        with pytest.raises(InputError, match="view context"):
            call()
    with pytest.raises(InputError, match="images"):
        other = LabelContext(ctx.image, ctx.partner, ctx.weight, M + 1)
        codec.encode_in_context(logits, other)


def test_corrupt_stored_parts_are_archive_errors() -> None:
    codec, logits, ctx = _fit()
    config = codec.to_config()
    tensors = codec.model_tensors()
    missing = {k: v for k, v in tensors.items() if k != "basis"}
    with pytest.raises(ArchiveFormatError, match="basis"):
        ContextTransformCodec.from_stored(config, missing)
    bad = {**tensors, "decay": torch.zeros_like(tensors["decay"])}
    with pytest.raises(ArchiveFormatError, match="decay"):
        ContextTransformCodec.from_stored(config, bad)
    with pytest.raises(ArchiveFormatError, match="context"):
        ContextTransformCodec.from_stored({**config, "context": None}, tensors)
    block = codec.encode_in_context(logits, ctx)
    with pytest.raises(ArchiveFormatError, match="corrupt"):
        codec.decode_in_context(EncodedBlock(block.num_labels, block.data[:4]), ctx)


def test_config_rejects_bad_values() -> None:
    for bad in ({"step": 0.0}, {"symbol_bound": 0}, {"min_label_bits": -1.0}):
        with pytest.raises(ConfigError):
            create_codec("ctx-transform", **bad)
    assert ContextTransformConfig().min_label_bits == 16.0


def test_stored_config_is_bounded_by_the_planned_one() -> None:
    codec, _, _ = _fit(step=0.4)
    stored = json.dumps(codec.to_config(), separators=(",", ":"))
    planned = create_codec(
        "ctx-transform", num_images=M, step=0.4, **FAST
    ).planned_config(C)
    assert planned is not None
    assert len(stored) <= len(json.dumps(planned, separators=(",", ":")))
    assert "seed" not in codec.to_config() and "min_label_bits" not in codec.to_config()


def test_max_axes_bounds_the_basis_at_many_classes() -> None:
    ctx = _context()
    g = torch.Generator().manual_seed(3)
    wide = 40
    prior = view_mix_prior(3 * torch.randn(M, wide, generator=g), ctx)
    logits = prior + 0.5 * torch.randn(prior.shape, generator=g)
    codec = create_codec("ctx-transform", step=0.3, max_axes=5, **FAST)
    assert isinstance(codec, ContextTransformCodec)
    codec.fit_in_context([logits], ctx)
    tensors = codec.model_tensors()
    assert tensors["basis"].shape == (5, wide) and tensors["decay"].shape == (5,)
    assert codec.to_config()["max_axes"] == 5  # not the default: stored
    block = codec.encode_in_context(logits, ctx)
    rebuilt = ContextTransformCodec.from_stored(codec.to_config(), tensors)
    decoded = rebuilt.decode_in_context(block, ctx)
    assert torch.equal(decoded, codec.decode_in_context(block, ctx))
    planned = ContextTransformCodec.model_bytes_for(M, wide, 8, "packed", 5)
    assert planned == 8 * wide + 8 + 2 * 5 * wide + 2 * wide + 4 * 5
    # five axes carry most of a residual of 39 dimensions only partly: the KL is
    # above the all-axes codec's at the same step, and below the prior's alone.
    full = create_codec("ctx-transform", step=0.3, **FAST)
    assert isinstance(full, ContextTransformCodec)
    full.fit_in_context([logits], ctx)
    kl5 = float(kl_divergence(logits, decoded, 4.0).mean())
    kl_all = kl_divergence(
        logits, full.decode_in_context(full.encode_in_context(logits, ctx), ctx), 4.0
    )
    assert float(kl_all.mean()) < kl5


def test_fewer_labels_than_axes_still_round_trip() -> None:
    ctx = _context().select(torch.arange(4))
    logits = _logits(_context())[:4]
    codec = create_codec("ctx-transform", step=0.5, **FAST)
    assert isinstance(codec, ContextTransformCodec)
    codec.fit_in_context([logits], ctx)
    assert codec.model_tensors()["basis"].shape == (C - 1, C)
    block = codec.encode_in_context(logits, ctx)
    assert codec.decode_in_context(block, ctx).shape == (4, C)
