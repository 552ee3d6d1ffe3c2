"""topk-q: the kept support survives exactly, levels within step/2, sizes as promised."""

from __future__ import annotations

import pytest
import torch

from labelzip.codecs.base import EncodedBlock
from labelzip.codecs.baseline.topk_quant import TopKQuantCodec, rice_bits_bound
from labelzip.codecs.registry import create_codec
from labelzip.errors import ArchiveFormatError, InputError, UnreachableTargetError
from labelzip.ops.metrics import kl_divergence

from .sizing import sized_codec


def _logits(n: int = 300, c: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 4 * torch.randn(n, c, generator=g)


def test_support_is_kept_exactly_and_mass_stays_on_it() -> None:
    x = _logits()
    codec = create_codec("topk-q", k=20, value_bits=4, step=0.5).fit([x])
    decoded = codec.decode(codec.encode(x))
    ids = x.topk(20, dim=1).indices
    kept = torch.zeros_like(x, dtype=torch.bool).scatter_(1, ids, True)
    assert torch.equal(torch.isfinite(decoded), kept)
    # within the support, each value is the top minus its level * step
    top = x.max(dim=1, keepdim=True).values
    err = (decoded - (x - top))[kept]
    below = (top - x)[kept]
    usual = (below > 0.25) & (below <= 15 * 0.5 + 0.25)  # not clamped
    assert float(err[usual].abs().max()) <= 0.25 + 1e-5
    assert float(err[below <= 0.25].abs().max()) <= 0.5 + 1e-5  # runner-ups
    assert torch.equal(decoded.argmax(1), x.argmax(1))


def test_mr_distribution_is_close_at_the_kd_temperature() -> None:
    x = _logits(c=500)
    values, ids = x.topk(50, dim=1)
    reference = torch.full_like(x, -1e4).scatter_(1, ids, values)
    codec = create_codec("topk-q", k=50, value_bits=4, step=1.0).fit([x])
    decoded = codec.decode(codec.encode(x))
    assert float(kl_divergence(reference, decoded, 4.0).mean()) < 0.02
    assert torch.equal(reference.argmax(1), decoded.argmax(1))


def test_encode_topk_takes_any_order_and_dtype() -> None:
    x = _logits()
    codec = create_codec("topk-q", k=8).fit([x])
    values, ids = x.topk(8, dim=1)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    block = codec.encode_topk(values[:, perm], ids[:, perm].to(torch.int16))
    assert torch.equal(block.data, codec.encode(x).data)
    half = codec.encode_topk(values.half(), ids)  # LPQLD's fp16 values
    assert torch.equal(codec.decode_topk(half)[1], ids.sort(dim=1).values)
    got_values, got_ids = codec.decode_topk(block)
    assert torch.equal(got_ids, ids.sort(dim=1).values)
    assert float(got_values.max()) == 0.0


def test_fitted_rice_parameter_and_worst_case_bound() -> None:
    x = _logits(n=400, c=1000)
    codec = create_codec("topk-q", k=100, value_bits=3).fit([x])
    m = codec.gap_bits
    assert m == 3  # 100 of 1000: mean gap ~9
    block = codec.encode(x)
    assert block.nbytes * 8 <= 400 * rice_bits_bound(100, 1000, 3, m) + 3 * 8
    # far below the packed ids (10 bits each) plus 3-bit levels
    assert block.nbytes < 400 * 100 * (10 + 3) / 8 * 0.7


def test_rate_control_keeps_a_fixed_k_and_fits_the_worst_case() -> None:
    codec = sized_codec(
        "topk-q", num_labels=10_000, num_classes=1000, ratio=12.0, k=100
    )
    assert isinstance(codec, TopKQuantCodec)
    assert codec.config.k == 100 and codec.config.gap_bits is not None
    budget = 10_000 * 1000 * 2 / 12.0
    bits = rice_bits_bound(100, 1000, codec.config.value_bits, codec.config.gap_bits)
    assert 10_000 * bits / 8 <= budget
    with pytest.raises(UnreachableTargetError, match="best reachable ratio"):
        sized_codec("topk-q", num_labels=10_000, num_classes=1000, ratio=100.0, k=100)


def test_stored_codec_decodes_the_same() -> None:
    x = _logits()
    codec = create_codec("topk-q", k=10).fit([x])
    block = codec.encode(x)
    again = TopKQuantCodec.from_stored(codec.to_config(), {})
    assert torch.equal(again.decode(block), codec.decode(block))


def test_bad_input_and_truncated_blocks() -> None:
    x = _logits()
    codec = create_codec("topk-q", k=4).fit([x])
    values, ids = x.topk(4, dim=1)
    with pytest.raises(InputError, match="distinct"):
        codec.encode_topk(values, torch.zeros_like(ids))
    with pytest.raises(InputError, match="outside"):
        codec.encode_topk(values, ids + 1000)
    with pytest.raises(InputError, match="finite"):
        codec.encode_topk(values.masked_fill(ids == ids[0, 0], float("inf")), ids)
    block = codec.encode(x)
    with pytest.raises(ArchiveFormatError):
        codec.decode(EncodedBlock(block.num_labels, block.data[:10]))
    with pytest.raises(ArchiveFormatError, match="id gaps"):
        codec.decode(EncodedBlock(block.num_labels, block.data[:-40]))
    longer = torch.cat([block.data, torch.zeros(2, dtype=torch.uint8)])
    with pytest.raises(ArchiveFormatError, match="bytes of id gaps"):
        codec.decode(EncodedBlock(block.num_labels, longer))
    with pytest.raises(ArchiveFormatError):  # a block cut to fewer labels
        codec.decode(EncodedBlock(block.num_labels - 1, block.data))
