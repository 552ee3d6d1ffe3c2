"""ArchiveWriter.append_side (streamed side tensors) and write_block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveReader, ArchiveWriter, Layout
from labelzip.codecs.baseline.topk import TopKCodec
from labelzip.codecs.registry import create_codec
from labelzip.errors import ConfigError


def test_append_side_equals_side_tensors_given_at_once(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 6, generator=gen)
    coords = torch.rand(10, 4, generator=gen)
    flip = torch.rand(10, generator=gen) < 0.5
    codec = create_codec("dense", dtype="fp32").fit([logits])
    with ArchiveWriter(tmp_path / "a.lz", codec, chunk_size=4) as writer:
        for start in range(0, 10, 3):
            writer.write(logits[start : start + 3])
            writer.append_side("coords", coords[start : start + 3])
            writer.append_side("flip", flip[start : start + 3])
    with ArchiveWriter(
        tmp_path / "b.lz",
        codec,
        chunk_size=4,
        side_tensors={"coords": coords, "flip": flip},
    ) as writer:
        writer.write(logits)
    assert (tmp_path / "a.lz").read_bytes() == (tmp_path / "b.lz").read_bytes()
    with ArchiveReader(tmp_path / "a.lz") as reader:
        reader.verify()
        side = reader.side_tensors()
        assert reader.account().side_bytes == 10 * 4 * 4 + 10
    assert torch.equal(side["coords"], coords) and torch.equal(side["flip"], flip)


def test_append_side_checks_rows(tmp_path: Path) -> None:
    codec = create_codec("dense").fit([torch.zeros(1, 3)])
    writer = ArchiveWriter(tmp_path / "a.lz", codec, side_tensors={"x": torch.zeros(2)})
    with pytest.raises(ConfigError, match="side_tensors too"):
        writer.append_side("x", torch.zeros(2))
    writer.append_side("y", torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="has rows of torch.float32 \\[4\\]"):
        writer.append_side("y", torch.zeros(2, 5))
    writer.abort()
    assert not (tmp_path / "a.lz").exists()


def test_write_block_is_a_chunk(tmp_path: Path) -> None:
    codec = create_codec("topk", k=2, decoder="mr", relative=False).fit(
        [torch.zeros(1, 8)]
    )
    assert isinstance(codec, TopKCodec)
    values = torch.randn(7, 2).half()
    ids = torch.tensor([[1, 0]] * 7)
    layout = Layout(("label",), (7,))
    with ArchiveWriter(tmp_path / "a.lz", codec, layout=layout, chunk_size=4) as writer:
        writer.write_block(codec.encode_topk(values[:4], ids[:4]))
        writer.write_block(codec.encode_topk(values[4:], ids[4:]))
    with ArchiveReader(tmp_path / "a.lz") as reader:
        assert reader.header.chunk_labels == [4, 3]
        assert torch.equal(codec.decode_topk(reader.read_chunk(1))[0], values[4:])
    with ArchiveWriter(tmp_path / "b.lz", codec, chunk_size=4) as writer:
        writer.write_block(codec.encode_topk(values[:3], ids[:3]))
        with pytest.raises(ConfigError, match="only the last block"):
            writer.write_block(codec.encode_topk(values[:3], ids[:3]))
