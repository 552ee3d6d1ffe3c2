from __future__ import annotations

import pytest
import torch

from labelzip.codecs.entropy import CategoricalStreamCoder
from labelzip.codecs.vq.layout import BlockLayout, EntropyModel
from labelzip.errors import ArchiveFormatError


def _symbols(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (n, 2), generator=g)
    levels = torch.multinomial(torch.tensor([8.0, 4, 2, 1]), n * 2, True, generator=g)
    codes = torch.multinomial(
        torch.softmax(torch.arange(16.0), 0), n * 3, True, generator=g
    )
    return ids, levels.view(n, 2), codes.view(n, 3)


def test_fixed_layout_sizes_and_round_trip() -> None:
    layout = BlockLayout(num_ids=2, id_bits=7, value_bits=2, num_codes=3, code_bits=4)
    ids, levels, codes = _symbols(10)
    data = layout.pack(ids, levels, codes)
    assert data.numel() == layout.fixed_bytes(10) == (10 * 2 * 9 + 7) // 8 + 15
    out = layout.unpack(data, 10, None)
    for got, want in zip(out, (ids, levels, codes), strict=True):
        assert torch.equal(got, want)


def test_entropy_layout_is_shorter_and_exact() -> None:
    ids, levels, codes = _symbols(500, seed=1)
    model = EntropyModel(
        CategoricalStreamCoder.fit(levels, 4), CategoricalStreamCoder.fit(codes, 16)
    )
    layout = BlockLayout(2, 7, 2, 3, 4, entropy=model)
    data = layout.pack(ids, levels, codes)
    assert data.numel() < layout.fixed_bytes(500)
    out = layout.unpack(data, 500, None)
    for got, want in zip(out, (ids, levels, codes), strict=True):
        assert torch.equal(got, want)
    rebuilt = EntropyModel.from_stored(model.to_config(), model.tensors())
    again = BlockLayout(2, 7, 2, 3, 4, entropy=rebuilt).unpack(data, 500, None)
    assert torch.equal(again[2], codes)
    with pytest.raises(ArchiveFormatError, match="incomplete"):
        EntropyModel.from_stored(model.to_config(), {})


def test_bad_lengths_are_rejected() -> None:
    layout = BlockLayout(2, 7, 2, 3, 4)
    with pytest.raises(
        ArchiveFormatError, match=r"must hold \d+ bytes \(fixed rate\), got 3"
    ):
        layout.unpack(torch.zeros(3, dtype=torch.uint8), 10, None)
    ids, levels, codes = _symbols(50, seed=2)
    model = EntropyModel(
        CategoricalStreamCoder.fit(levels, 4), CategoricalStreamCoder.fit(codes, 16)
    )
    coded = BlockLayout(2, 7, 2, 3, 4, entropy=model)
    data = coded.pack(ids, levels, codes)
    with pytest.raises(ArchiveFormatError, match="entropy-coded section"):
        coded.unpack(data[:-4], 50, None)
