"""VQAESparseCodec: id coding, round trips, determinism, byte accounting, rate control."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from labelzip.archive import ArchiveReader, save_archive
from labelzip.codecs.base import EncodedBlock
from labelzip.codecs.registry import CODEC_IDS, create_codec
from labelzip.codecs.vqae_lm.idcoding import pack_varbits, rank_bucket, unpack_varbits
from labelzip.codecs.vqae_lm.sparse import VQAESparseCodec
from labelzip.errors import (
    ArchiveFormatError,
    ConfigError,
    InputError,
    NotFittedError,
    UnreachableTargetError,
)
from labelzip.ops.metrics import kl_divergence, topk_overlap
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec

from .sizing import sized_codec

C = 2000
FAST = {"steps": 150, "hidden": 32}


@pytest.fixture(scope="module")
def fit_logits(make_lm_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    return make_lm_logits(512, seed=0)


@pytest.fixture(scope="module")
def test_logits(make_lm_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    return make_lm_logits(96, seed=1)


@pytest.fixture(scope="module")
def codec(fit_logits: torch.Tensor) -> VQAESparseCodec:
    return _fit(fit_logits, k=24, k_levels=1)


@pytest.fixture(scope="module")
def leveled(fit_logits: torch.Tensor) -> VQAESparseCodec:
    return _fit(fit_logits, k=32, k_levels=4, rate_lambda=0.002)


def _fit(fit_logits: torch.Tensor, **options: Any) -> VQAESparseCodec:
    codec = create_codec("vqae-sparse", **{**FAST, **options})
    codec.fit([fit_logits[:300], fit_logits[300:]])
    assert isinstance(codec, VQAESparseCodec)
    return codec


def test_registered_with_id_7() -> None:
    assert CODEC_IDS["vqae-sparse"][0] == 7
    assert VQAESparseCodec.codec_id == 7 and VQAESparseCodec.kind == "vqae-sparse"


def test_rank_buckets_and_variable_width_bits_round_trip() -> None:
    ranks = torch.tensor([0, 1, 2, 3, 6, 7, 1022, 1023, 49151, 65534])
    assert rank_bucket(ranks).tolist() == [0, 1, 1, 2, 2, 3, 9, 10, 15, 15]
    g = torch.Generator().manual_seed(3)
    widths = torch.randint(0, 16, (500,), generator=g)
    values = torch.randint(0, 1 << 15, (500,), generator=g) % (1 << widths)
    packed = pack_varbits(values, widths)
    assert packed.numel() == math.ceil(int(widths.sum()) / 8)
    assert torch.equal(unpack_varbits(packed, widths), values)


def test_decoded_is_a_distribution_on_the_teacher_support(
    codec: VQAESparseCodec, test_logits: torch.Tensor
) -> None:
    decoded = codec.decode(codec.encode(test_logits))
    assert decoded.shape == test_logits.shape and decoded.dtype == torch.float32
    assert bool(torch.isfinite(decoded).all())
    total = torch.logsumexp(decoded.double(), dim=1)
    assert torch.allclose(total, torch.zeros_like(total), atol=1e-4)
    # the support is stored exactly: the teacher's top ids stay on top
    assert float(topk_overlap(test_logits, decoded, k=5)) > 0.9
    kl = kl_divergence(test_logits, decoded).mean()
    uniform = kl_divergence(test_logits, torch.zeros_like(test_logits)).mean()
    assert float(kl) < 0.25 * float(uniform)


def test_same_input_same_bytes_and_stored_round_trip(
    codec: VQAESparseCodec, fit_logits: torch.Tensor, test_logits: torch.Tensor
) -> None:
    block = codec.encode(test_logits)
    assert torch.equal(block.data, codec.encode(test_logits).data)
    again = _fit(
        fit_logits, k=24, k_levels=1
    )  # same data and seed: same model and bytes
    assert torch.equal(again.encode(test_logits).data, block.data)
    stored = VQAESparseCodec.from_stored(codec.to_config(), codec.model_tensors())
    assert torch.equal(stored.decode(block), codec.decode(block))
    # what encode_support hands out is what decode_support reads back
    again_block, ids, log_q = codec.encode_support(test_logits)
    assert torch.equal(again_block.data, block.data)
    read_ids, read_q = stored.decode_support(block)
    assert torch.equal(ids, read_ids) and torch.equal(log_q, read_q)
    with pytest.raises(NotFittedError, match="no encoder"):
        stored.encode(test_logits)


def test_block_and_model_bytes_are_exact(
    codec: VQAESparseCodec, test_logits: torch.Tensor
) -> None:
    cfg = codec.config
    for n in (1, 7, 96):
        block = codec.encode(test_logits[:n])
        length = int(block.data[:4].clone().view(torch.int32)[0])
        ids = test_logits[:n].topk(24, dim=1).indices
        assert codec._rank is not None
        widths = int(rank_bucket(codec._rank[ids]).sum())
        expected = (
            4
            + length
            + math.ceil(widths / 8)
            + n * cfg.num_chunks * cfg.num_stages
            + math.ceil(n * cfg.tail_bits / 8)
        )
        assert block.nbytes == expected
    latent = cfg.num_chunks * cfg.chunk_dim
    decoder = latent * 32 + 32 + 32 * 25 + 25
    books = cfg.num_stages * cfg.num_chunks * 256 * cfg.chunk_dim
    tables = 5 * 11  # slot groups 0|1-2|3-6|7-14|15-23, 11 rank buckets (C=2000)
    assert codec.model_bytes() == 2 * (C + decoder + books + tables)
    assert codec.model_bytes() == VQAESparseCodec.model_bytes_for(cfg, 24, C)
    with pytest.raises(ArchiveFormatError, match="must hold"):
        codec.decode(EncodedBlock(num_labels=96, data=block.data[:-1]))
    with pytest.raises(ArchiveFormatError, match="corrupt"):
        codec.decode(EncodedBlock(num_labels=7, data=block.data))


def test_archive_round_trip(
    tmp_path: Any, codec: VQAESparseCodec, test_logits: torch.Tensor
) -> None:
    account = save_archive(tmp_path / "t.lz", codec, test_logits, chunk_size=40)
    with ArchiveReader(tmp_path / "t.lz") as reader:
        assert reader.codec_name == "vqae-sparse"
        expected = torch.cat(
            [codec.decode(codec.encode(x)) for x in test_logits.split(40)]
        )
        assert torch.equal(reader.decode(slice(0, 96)), expected)
        assert reader.account().total_bytes == (tmp_path / "t.lz").stat().st_size
    assert account.model_bytes == codec.model_bytes()


def test_rate_control_meets_the_target_and_spends_it(
    fit_logits: torch.Tensor,
) -> None:
    n = 512
    sizes = {}
    for ratio in (40.0, 100.0):
        codec = sized_codec(
            "vqae-sparse", num_labels=n, num_classes=C, ratio=ratio, **FAST
        )
        assert isinstance(codec, VQAESparseCodec)
        codec.fit([fit_logits], num_labels=n)
        payload = sum(codec.encode(x).nbytes for x in fit_logits.split(256))
        total = payload + codec.model_bytes()
        budget = n * C * 2 / ratio
        assert total <= budget
        assert total > 0.8 * budget  # K is the largest that fits, not a tiny one
        sizes[ratio] = codec.k
    assert sizes[40.0] > sizes[100.0] >= 1


def test_errors(fit_logits: torch.Tensor, codec: VQAESparseCodec) -> None:
    fresh = create_codec("vqae-sparse", k=4)
    with pytest.raises(NotFittedError, match="before fit"):
        fresh.encode(fit_logits)
    with pytest.raises(NotFittedError, match="before fit"):
        fresh.model_tensors()
    with pytest.raises(InputError, match="empty source"):
        create_codec("vqae-sparse", k=4).fit([])
    with pytest.raises(ConfigError, match="budget_bytes"):
        create_codec("vqae-sparse", **FAST).fit([fit_logits])
    with pytest.raises(ConfigError, match="budget_bytes"):
        create_codec("vqae-sparse", k_levels=1, **FAST).fit([fit_logits])
    with pytest.raises(ConfigError, match="below the 2000 classes"):
        create_codec("vqae-sparse", k=2000, **FAST).fit([fit_logits])
    with pytest.raises(InputError, match="fitted for 2000 classes"):
        codec.encode(torch.zeros(2, 10))
    with pytest.raises(UnreachableTargetError, match="best reachable ratio"):
        sized_codec("vqae-sparse", num_labels=100, num_classes=C, ratio=2000)
    with pytest.raises(ConfigError, match="invalid vqae-sparse"):
        create_codec("vqae-sparse", num_chunks=0)
    tensors = dict(codec.model_tensors())
    tensors.pop("codebooks")
    with pytest.raises(ArchiveFormatError, match="codebooks"):
        VQAESparseCodec.from_stored(codec.to_config(), tensors)


def test_archive_at_a_target_ratio_meets_it(
    tmp_path: Any, fit_logits: torch.Tensor
) -> None:
    from labelzip.archive import Layout

    layout = Layout(("sample",), (512,))
    codec = fit_codec(
        "vqae-sparse",
        [fit_logits],
        FAST,
        target=ArchiveTarget(RateGoal(ratio=50), layout, C),
    )
    save_archive(tmp_path / "r.lz", codec, fit_logits, chunk_size=128)
    size = (tmp_path / "r.lz").stat().st_size
    assert 0.8 * 512 * C * 2 / 50 < size <= 512 * C * 2 / 50


def test_per_label_levels_round_trip_and_bytes(
    leveled: VQAESparseCodec, test_logits: torch.Tensor
) -> None:
    assert leveled._levels() == [4, 8, 16, 32]
    block = leveled.encode(test_logits)
    log_p = torch.log_softmax(test_logits, 1)
    which, _ = leveled._choose(leveled._row_stats(log_p), *log_p.topk(32, dim=1), 0.002)
    assert len(set(which.tolist())) > 1  # labels really get different K
    kept = torch.tensor([4, 8, 16, 32])[which]
    assert leveled._rank is not None
    buckets = rank_bucket(leveled._rank[test_logits.topk(32, dim=1).indices])
    widths = int(buckets.masked_fill(torch.arange(32)[None] >= kept[:, None], 0).sum())
    length = int(block.data[:4].clone().view(torch.int32)[0])
    cfg = leveled.config
    assert block.nbytes == 4 + length + math.ceil(widths / 8) + 96 * cfg.code_bytes + 36
    decoded = leveled.decode(block)
    stored = VQAESparseCodec.from_stored(leveled.to_config(), leveled.model_tensors())
    assert torch.equal(stored.decode(block), decoded)
    total = torch.logsumexp(decoded.double(), dim=1)
    assert torch.allclose(total, torch.zeros_like(total), atol=1e-4)
    assert float(topk_overlap(test_logits, decoded, k=3)) > 0.9
    tensors = dict(leveled.model_tensors())
    tensors.pop("level_table")
    with pytest.raises(ArchiveFormatError, match="level_table"):
        VQAESparseCodec.from_stored(leveled.to_config(), tensors)


def test_closed_form_oracle_kl_matches_the_dense_one(
    codec: VQAESparseCodec, test_logits: torch.Tensor
) -> None:
    log_p = torch.log_softmax(test_logits, dim=1)
    top, ids = log_p.topk(24, dim=1)
    for k in (3, 24):
        kl, which = codec._oracle(codec._row_stats(log_p), top, ids, k)
        tail = (1.0 - top[:, :k].double().exp().sum(1)).log().float()[:, None]
        q = codec._densify(torch.cat([top[:, :k], tail], 1), ids[:, :k], which)
        dense = (log_p.exp() * (log_p - q)).sum(dim=1)
        assert torch.allclose(kl.float(), dense, atol=1e-4)
        # the chosen tail exponent is the best one on the grid
        assert codec._grid is not None
        for other in range(codec._grid.numel()):
            q2 = codec._densify(
                torch.cat([top[:, :k], tail], 1),
                ids[:, :k],
                torch.full_like(which, other),
            )
            assert bool(((log_p.exp() * (log_p - q2)).sum(1) >= dense - 1e-4).all())
