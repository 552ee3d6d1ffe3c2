"""The distillkit codec: DistillKit's quantised rows as an archive codec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveReader, ArchiveWriter
from labelzip.codecs.baseline.distillkit import (
    DistillKitCodec,
    DistillKitCodecConfig,
    preset_config,
    spread_missing_mass,
)
from labelzip.codecs.baseline.distillkit_quant import decompress_logprobs
from labelzip.codecs.registry import codec_class, create_codec
from labelzip.errors import InputError, UnreachableTargetError

from .sizing import sized_codec

V = 400


def logits(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rank = torch.randperm(V, generator=g).float()
    return -1.1 * torch.log1p(rank)[None] + torch.randn(n, V, generator=g)


def test_encode_is_distillkits_quantiser_on_the_top_k() -> None:
    codec = create_codec("distillkit", preset="budget").fit([logits(1)])
    assert (
        isinstance(codec, DistillKitCodec)
        and codec_class("distillkit") is DistillKitCodec
    )
    x = logits()
    block = codec.encode(x)
    rows, ids = codec.decode_topk(block)
    cfg = preset_config("budget", V)
    assert rows.shape == (64, cfg.row_bytes()) and block.nbytes == codec.block_bytes(64)
    want_values, want_ids = torch.log_softmax(x, 1).topk(cfg.k, dim=1)
    assert torch.equal(ids, want_ids)
    values = decompress_logprobs(rows, cfg)
    assert torch.equal(codec.values(rows), values)
    dense = codec.decode(block)
    assert torch.equal(dense.gather(1, ids), values.float())
    assert torch.allclose(torch.logsumexp(dense, 1), torch.zeros(64), atol=1e-4)
    # the stored rows come back through the sparse path bit for bit
    assert torch.equal(codec.encode_topk(rows, ids).data, block.data)


def test_missing_zero_gives_only_the_kept_mass() -> None:
    codec = create_codec("distillkit", preset="budget", missing="zero").fit([logits(1)])
    dense = codec.decode(codec.encode(logits(4)))
    assert int(torch.isfinite(dense).sum(1).max()) == 50


def test_spread_missing_mass_floor() -> None:
    values = torch.log(torch.tensor([[0.5, 0.5]]))  # nothing missing: the floor
    out = spread_missing_mass(values, torch.tensor([[0, 1]]), 4)
    assert torch.allclose(out[0, 2:].exp(), torch.full((2,), 1e-8))


def test_archive_round_trip_and_sparse_input_checks(tmp_path: Path) -> None:
    codec = create_codec("distillkit").fit([logits(1)])
    with ArchiveWriter(tmp_path / "a.lz", codec, chunk_size=16) as writer:
        writer.write(logits(40))
    with ArchiveReader(tmp_path / "a.lz") as reader:
        stored = reader.codec
        assert isinstance(stored, DistillKitCodec)
        assert stored.to_config() == codec.to_config()
        assert torch.equal(
            reader.decode(slice(0, 40)), codec.decode(codec.encode(logits(40)))
        )
    rows = torch.zeros(2, codec.row_bytes, dtype=torch.uint8)
    with pytest.raises(InputError, match="outside"):
        codec.encode_topk(rows, torch.full((2, codec.k), V))
    with pytest.raises(InputError, match="uint8"):
        codec.encode_topk(rows.float(), torch.zeros(2, codec.k, dtype=torch.long))


def test_rate_control_accepts_the_settings_or_names_the_need() -> None:
    codec = sized_codec("distillkit", num_labels=1000, num_classes=V, ratio=2)
    assert isinstance(codec.config, DistillKitCodecConfig)
    with pytest.raises(UnreachableTargetError, match="distillkit"):
        sized_codec("distillkit", num_labels=1000, num_classes=V, ratio=5000)
