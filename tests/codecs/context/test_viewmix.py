"""vqae-ctx: context prior + VQ residual (round trip, determinism, rate, errors)."""

from __future__ import annotations

import json

import pytest
import torch

from labelzip.codecs.base import LabelContext
from labelzip.codecs.context.viewmix import (
    ViewMixCodec,
    ViewMixConfig,
    decode_prototypes,
    store_prototypes,
    view_mix_prior,
)
from labelzip.codecs.registry import CODEC_IDS, create_codec
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    UnreachableTargetError,
)
from labelzip.ops.bitpack import packed_size
from labelzip.ops.metrics import kl_divergence

torch.set_num_threads(1)

M, C, E = 8, 6, 40
FAST = {"prior_steps": 30, "rounds": 2, "round_steps": 15, "learning_rate": 0.05}


def _context(seed: int = 0) -> LabelContext:
    g = torch.Generator().manual_seed(seed)
    image = torch.arange(M).repeat(E)
    partner = (image + torch.randint(1, M, (M * E,), generator=g)) % M
    partner[::5] = -1  # some unmixed views
    weight = 0.4 + 0.6 * torch.rand(M * E, generator=g)
    weight[partner < 0] = 1.0
    return LabelContext(image, partner, weight, M)


def _logits(context: LabelContext, seed: int = 1) -> torch.Tensor:
    """Teacher logits = the true mixed prototypes + noise (what the codec models)."""
    g = torch.Generator().manual_seed(seed)
    protos = 3 * torch.randn(M, C, generator=g)
    prior = view_mix_prior(protos, context)
    return prior + 0.8 * torch.randn(prior.shape, generator=g)


def _fit(k: int = 8, **kw: object) -> tuple[ViewMixCodec, torch.Tensor, LabelContext]:
    ctx = _context()
    logits = _logits(ctx)
    codec = create_codec("vqae-ctx", codebook_size=k, **FAST, **kw)
    assert isinstance(codec, ViewMixCodec)
    codec.fit_in_context([logits[:150], logits[150:]], ctx)
    return codec, logits, ctx


def test_registered_with_its_own_id() -> None:
    assert CODEC_IDS["vqae-ctx"][0] == 6
    assert ViewMixCodec.needs_context and ViewMixCodec.codec_id == 6


def test_round_trip_beats_prior_alone_and_is_deterministic() -> None:
    codec, logits, ctx = _fit(8)
    block = codec.encode_in_context(logits, ctx)
    decoded = codec.decode_in_context(block, ctx)
    assert decoded.shape == logits.shape and decoded.dtype == torch.float32
    assert block.num_labels == len(ctx) and 0 < block.nbytes < len(ctx)  # < 8 bits
    prior_only, _, _ = _fit(1)
    empty = prior_only.encode_in_context(logits, ctx)
    assert empty.nbytes == 0  # K = 1: no per-label bits
    kl8 = kl_divergence(logits, decoded, 4.0).mean()
    kl1 = kl_divergence(logits, prior_only.decode_in_context(empty, ctx), 4.0).mean()
    assert kl8 < 0.8 * kl1
    again, _, _ = _fit(8)
    assert torch.equal(again.encode_in_context(logits, ctx).data, block.data)
    for name, tensor in codec.model_tensors().items():
        assert torch.equal(again.model_tensors()[name], tensor)


def test_from_stored_decodes_and_encodes_identically() -> None:
    codec, logits, ctx = _fit(8)
    block = codec.encode_in_context(logits, ctx)
    config = codec.to_config()
    assert config["context"] == "view-mix" and config["num_images"] == M
    loaded = ViewMixCodec.from_stored(config, codec.model_tensors())
    assert torch.equal(
        loaded.decode_in_context(block, ctx), codec.decode_in_context(block, ctx)
    )
    assert torch.equal(loaded.encode_in_context(logits, ctx).data, block.data)
    assert codec.model_bytes() == ViewMixCodec.model_bytes_for(M, C, 8)


def test_eight_and_sixteen_bit_prototypes() -> None:
    codec, logits, ctx = _fit(4, prototype_bits=8)
    tensors = codec.model_tensors()
    assert tensors["prototypes"].dtype == torch.uint8
    assert codec.model_bytes() == ViewMixCodec.model_bytes_for(M, C, 4, 8)
    assert codec.model_bytes() == M * C + 8 + 2 * 4 * C + 2 * 4
    block = codec.encode_in_context(logits, ctx)
    loaded = ViewMixCodec.from_stored(codec.to_config(), tensors)
    assert torch.equal(
        loaded.decode_in_context(block, ctx), codec.decode_in_context(block, ctx)
    )
    assert torch.equal(loaded.encode_in_context(logits, ctx).data, block.data)
    planned = ViewMixCodec(
        ViewMixConfig(num_images=M, codebook_size=4, prototype_bits=8)
    )
    shapes = planned.planned_model_tensors(C)
    assert shapes is not None
    assert {n: (t.shape, t.dtype) for n, t in shapes.items()} == {
        n: (t.shape, t.dtype) for n, t in tensors.items()
    }
    full, _, _ = _fit(4, prototype_bits=16)
    assert full.model_tensors()["prototypes"].dtype == torch.float16
    assert full.model_bytes() == ViewMixCodec.model_bytes_for(M, C, 4, 16)
    kl8 = kl_divergence(logits, codec.decode_in_context(block, ctx), 4.0).mean()
    kl16 = kl_divergence(
        logits, full.decode_in_context(full.encode_in_context(logits, ctx), ctx), 4.0
    ).mean()
    assert kl8 < 1.1 * kl16


def test_a_block_that_codes_to_zero_bytes_decodes() -> None:
    """Only the most likely code in a block: ANS may emit no words at all."""
    codec, logits, ctx = _fit(2, payload_budget_bytes=12)
    assert codec.config.rate_penalty > 0
    codes = codec.decode_codes(codec.encode_in_context(logits, ctx))
    common = codes == torch.mode(codes).values
    block = codec.encode_in_context(logits[common], ctx.select(common))
    assert block.nbytes == 0 and block.num_labels == int(common.sum()) > 200
    decoded = codec.decode_in_context(block, ctx.select(common))
    full = codec.decode_in_context(codec.encode_in_context(logits, ctx), ctx)
    assert torch.equal(decoded, full[common])


def test_without_context_is_a_clear_error() -> None:
    codec, logits, ctx = _fit(4)
    block = codec.encode_in_context(logits, ctx)
    with pytest.raises(InputError, match="view context"):
        codec.encode(logits)
    with pytest.raises(InputError, match="view context"):
        codec.decode(block)
    with pytest.raises(InputError, match="view context"):
        codec.decode_in_context(block, None)
    with pytest.raises(InputError, match="view context"):
        ViewMixCodec().fit([logits])
    with pytest.raises(InputError, match="context of"):
        codec.decode_in_context(block, ctx.select(slice(0, 10)))
    other = LabelContext(ctx.image, ctx.partner, ctx.weight, M + 1)
    with pytest.raises(InputError, match="prototypes of 8"):
        codec.encode_in_context(logits, other)


def test_label_context_validates() -> None:
    i = torch.arange(3)
    with pytest.raises(InputError, match="same length"):
        LabelContext(i, torch.arange(2), torch.ones(3), 4)
    with pytest.raises(InputError, match=r"lie in \[0, 3\)"):
        LabelContext(i, torch.tensor([-1, 3, 0]), torch.ones(3), 3)
    with pytest.raises(InputError, match="int64"):
        LabelContext(i.float().long().int(), i, torch.ones(3), 4)
    joined = LabelContext.cat(
        [_context().select(slice(0, 5)), _context().select(slice(5, 9))]
    )
    assert joined.equals(_context().select(slice(0, 9)))


def test_corrupt_stored_parts_are_archive_errors() -> None:
    codec, _, _ = _fit(4)
    tensors = codec.model_tensors()
    with pytest.raises(ArchiveFormatError, match="prototypes"):
        ViewMixCodec.from_stored(
            codec.to_config(), {**tensors, "prototypes": tensors["prototypes"][:3]}
        )
    bad = {**codec.to_config(), "context": None}
    with pytest.raises(ArchiveFormatError, match="context"):
        ViewMixCodec.from_stored(bad, tensors)


def test_for_target_counts_prototypes_and_fits_the_budget() -> None:
    n = 30000
    codec = ViewMixCodec.for_target(
        num_labels=n, num_classes=10, budget_bytes=10000, num_images=100
    )
    k = codec.config.codebook_size
    assert k > 1
    total = ViewMixCodec.model_bytes_for(100, 10, k) + ViewMixCodec.payload_bytes_for(
        n, k
    )
    assert (
        total
        <= 10000
        < ViewMixCodec.model_bytes_for(100, 10, k + 1)
        + ViewMixCodec.payload_bytes_for(n, k + 1)
    )
    assert codec.config.payload_budget_bytes == 10000 - ViewMixCodec.model_bytes_for(
        100, 10, k
    )
    # 1000 B of 8-bit prototypes free 0.13 bits per label as 4-bit: 8-bit kept.
    assert codec.config.prototype_bits == 8
    # Just the uint8 prototypes (1008 B) and a 1-word codebook fit: K = 1.
    tiny = ViewMixCodec.for_target(
        num_labels=n, num_classes=10, budget_bytes=1100, num_images=100
    )
    assert tiny.config.codebook_size == 1 and tiny.config.prototype_bits == 8
    # 8-bit prototypes do not fit 900 B, 4-bit ones (508 B) do.
    small = ViewMixCodec.for_target(
        num_labels=n, num_classes=10, budget_bytes=900, num_images=100
    )
    assert small.config.prototype_bits == 4 and small.config.codebook_size == 1
    with pytest.raises(UnreachableTargetError, match="prototypes of 100 images"):
        ViewMixCodec.for_target(
            num_labels=n, num_classes=10, budget_bytes=500, num_images=100
        )
    with pytest.raises(UnreachableTargetError, match=r"1008 bytes \(8-bit\)"):
        ViewMixCodec.for_target(
            num_labels=n,
            num_classes=10,
            budget_bytes=900,
            num_images=100,
            prototype_bits=8,
        )
    with pytest.raises(ConfigError, match="num_images.*labelzip relabel"):
        ViewMixCodec.for_target(num_labels=n, num_classes=10, budget_bytes=9000)


def test_fit_meets_the_payload_budget_by_rate_distortion_assignment() -> None:
    # 320 labels: 16 near-uniform codes need ~160 bytes; 70 force a rate penalty.
    free, logits, ctx = _fit(16)
    assert free.config.rate_penalty == 0.0
    codec, _, _ = _fit(16, payload_budget_bytes=70)
    assert codec.config.rate_penalty > 0 and codec.config.codebook_size == 16
    block = codec.encode_in_context(logits, ctx)
    assert block.nbytes <= 70 < free.encode_in_context(logits, ctx).nbytes
    loaded = ViewMixCodec.from_stored(codec.to_config(), codec.model_tensors())
    assert torch.equal(loaded.encode_in_context(logits, ctx).data, block.data)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        ViewMixConfig(codebook_size=0)
    with pytest.raises(ValueError):
        ViewMixConfig(temperatures=(0.0,))


def test_four_bit_prototypes_round_trip_and_are_chosen_when_they_free_bits() -> None:
    codec, logits, ctx = _fit(4, prototype_bits=4)
    tensors = codec.model_tensors()
    # M x C = 48 levels, two per byte, plus the float32 grid.
    assert tensors["prototypes"].shape == (M * C // 2,)
    assert codec.model_bytes() == ViewMixCodec.model_bytes_for(M, C, 4, 4)
    assert codec.model_bytes() == M * C // 2 + 8 + 2 * 4 * C + 2 * 4
    block = codec.encode_in_context(logits, ctx)
    loaded = ViewMixCodec.from_stored(codec.to_config(), tensors)
    assert torch.equal(
        loaded.decode_in_context(block, ctx), codec.decode_in_context(block, ctx)
    )
    assert torch.equal(loaded.encode_in_context(logits, ctx).data, block.data)
    planned = ViewMixCodec(
        ViewMixConfig(num_images=M, codebook_size=4, prototype_bits=4)
    ).planned_model_tensors(C)
    assert planned is not None
    assert {n: (t.shape, t.dtype) for n, t in planned.items()} == {
        n: (t.shape, t.dtype) for n, t in tensors.items()
    }
    eight, _, _ = _fit(4, prototype_bits=8)
    kl4 = kl_divergence(logits, codec.decode_in_context(block, ctx), 4.0).mean()
    kl8 = kl_divergence(
        logits, eight.decode_in_context(eight.encode_in_context(logits, ctx), ctx), 4.0
    ).mean()
    assert kl4 < 1.3 * kl8
    with pytest.raises(ArchiveFormatError, match="prototypes"):
        ViewMixCodec.from_stored(
            codec.to_config(), {**tensors, "prototypes": tensors["prototypes"][:-1]}
        )
    # IPC 50: 500 x 10 prototypes, 50,000 labels: 4-bit frees 0.4 bits per label.
    auto = ViewMixCodec.for_target(
        num_labels=50000, num_classes=10, budget_bytes=8000, num_images=500
    )
    assert auto.config.prototype_bits == 4
    fixed = ViewMixCodec.for_target(
        num_labels=50000,
        num_classes=10,
        budget_bytes=8000,
        num_images=500,
        prototype_bits=8,
    )
    assert fixed.config.prototype_bits == 8
    assert fixed.config.codebook_size < auto.config.codebook_size


def test_stored_config_leaves_out_default_fit_fields_and_is_bounded() -> None:
    codec, _, _ = _fit(4)
    config = codec.to_config()
    # FAST changes prior_steps, rounds, round_steps, learning_rate: stored;
    # seed, temperatures, ... keep their defaults: left out.
    assert {"prior_steps", "rounds", "round_steps", "learning_rate"} <= set(config)
    assert not {"seed", "temperatures", "fit_threads", "max_train_labels"} & set(config)
    loaded = ViewMixCodec.from_stored(config, codec.model_tensors())
    assert loaded.config == codec.config.model_copy(update={"num_images": M})
    bound = ViewMixCodec(
        codec.config.model_copy(
            update={"rate_penalty": 0.0, "codebook_size": 4, "num_images": M}
        )
    ).planned_config(C)
    assert bound is not None and set(bound) == set(config)
    assert len(json.dumps(bound)) >= len(json.dumps(config))
    assert ViewMixCodec(ViewMixConfig()).planned_config(C) is None


def test_ans_prototypes_code_levels_losslessly_and_choose_the_smallest_form() -> None:
    g = torch.Generator().manual_seed(3)
    # 160 images stored class by class (4 classes x 40): neighbours look alike.
    centres = 3 * torch.randn(4, C, generator=g)
    protos = centres.repeat_interleave(40, dim=0) + 0.3 * torch.randn(
        160, C, generator=g
    )
    packed, want, coding, _ = store_prototypes(protos, 4, "packed")
    assert coding == "packed" and set(packed) == {"prototypes", "prototype_grid"}
    stored, decoded, coding, delta = store_prototypes(protos, 4, "ans")
    assert coding == "ans" and delta  # differences from the previous image win
    assert torch.equal(decoded, want)
    assert stored["prototype_freq"].shape == (1, 16)
    size = sum(t.numel() * t.element_size() for t in stored.values())
    assert size < sum(t.numel() * t.element_size() for t in packed.values())
    assert torch.equal(decode_prototypes(stored, (160, C), 4, "ans", True), want)
    # Shuffled images: the levels as they are code smaller than differences.
    shuffled = protos[torch.randperm(160, generator=g)]
    _, _, coding, delta = store_prototypes(shuffled, 4, "ans")
    assert coding == "ans" and not delta
    # Too few values to pay for the table: packed.
    _, _, coding, _ = store_prototypes(protos[:2], 4, "ans")
    assert coding == "packed"
    with pytest.raises(ArchiveFormatError, match="prototype stream"):
        decode_prototypes(
            {**stored, "prototypes": stored["prototypes"][:4]}, (160, C), 4, "ans", True
        )


def test_ans_prototypes_round_trip_through_the_codec_and_free_payload() -> None:
    ctx = _context()
    logits = _logits(ctx)
    codecs = {}
    for coding in ("packed", "ans"):
        codec = create_codec(
            "vqae-ctx",
            codebook_size=8,
            prototype_bits=4,
            prototype_coding=coding,
            payload_budget_bytes=60,
            **FAST,
        )
        assert isinstance(codec, ViewMixCodec)
        codecs[coding] = codec.fit_in_context([logits], ctx)
    ans, packed = codecs["ans"], codecs["packed"]
    tensors = ans.model_tensors()
    config = ans.to_config()
    # 8 images are too few to pay for a 16-entry table: packed after all, and
    # the 32 table bytes the plan held go to the codes.
    assert config.get("prototype_coding", "packed") == "packed"
    assert ans.config.payload_budget_bytes == 60 + 32
    assert packed.config.payload_budget_bytes == 60
    assert ans.model_bytes() == packed.model_bytes()
    block = ans.encode_in_context(logits, ctx)
    assert 60 < block.nbytes <= 92
    loaded = ViewMixCodec.from_stored(config, tensors)
    assert torch.equal(
        loaded.decode_in_context(block, ctx), ans.decode_in_context(block, ctx)
    )


def test_ans_prototypes_from_stored() -> None:
    g = torch.Generator().manual_seed(5)
    m = 60
    image = torch.arange(m).repeat(6)
    partner = (image + 1) % m
    ctx = LabelContext(
        image, partner, 0.5 + 0.5 * torch.rand(len(image), generator=g), m
    )
    protos = (3 * torch.randn(6, C, generator=g)).repeat_interleave(10, dim=0)
    protos = protos + 0.2 * torch.randn(m, C, generator=g)
    logits = view_mix_prior(protos, ctx) + 0.3 * torch.randn(len(image), C, generator=g)
    codec = create_codec(
        "vqae-ctx", codebook_size=2, prototype_bits=4, prototype_coding="ans", **FAST
    )
    assert isinstance(codec, ViewMixCodec)
    codec.fit_in_context([logits], ctx)
    config, tensors = codec.to_config(), codec.model_tensors()
    assert config["prototype_coding"] == "ans" and "prototype_freq" in tensors
    assert tensors["prototypes"].numel() < packed_size(m * C, 4)
    loaded = ViewMixCodec.from_stored(config, tensors)
    block = codec.encode_in_context(logits, ctx)
    assert torch.equal(
        loaded.decode_in_context(block, ctx), codec.decode_in_context(block, ctx)
    )
    assert torch.equal(loaded.encode_in_context(logits, ctx).data, block.data)
    with pytest.raises(ArchiveFormatError, match="prototype_freq"):
        ViewMixCodec.from_stored(
            config, {k: v for k, v in tensors.items() if k != "prototype_freq"}
        )
    auto = ViewMixCodec.for_target(
        num_labels=50000, num_classes=10, budget_bytes=8000, num_images=500
    )
    assert auto.config.prototype_coding == "ans"


def test_codeword_assignment_is_chunked_by_size_with_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Labels x codewords x classes are scored in chunks bounded by a value count
    (C = 1000 with many codewords took GiBs at once); the chunking does not change
    the fit or the bytes."""
    from labelzip.codecs.context import viewmix

    codec, logits, ctx = _fit(8)
    block = codec.encode_in_context(logits, ctx)
    monkeypatch.setattr(viewmix, "_ASSIGN_VALUES", 8 * C * 7)  # 7 labels a chunk
    seen: list[int] = []
    original = viewmix.kl_sum

    def counting(
        teacher: torch.Tensor, decoded: torch.Tensor, temps: tuple[float, ...]
    ) -> torch.Tensor:
        if decoded.dim() == 3:  # labels x codewords x classes: an assignment
            seen.append(int(decoded.shape[0]))
        return original(teacher, decoded, temps)

    monkeypatch.setattr(viewmix, "kl_sum", counting)
    small, _, _ = _fit(8)
    assert seen and max(seen) == 7
    assert torch.equal(small.encode_in_context(logits, ctx).data, block.data)
    for name, tensor in codec.model_tensors().items():
        assert torch.equal(small.model_tensors()[name], tensor)
