from __future__ import annotations

import pytest
import torch

from labelzip.codecs.entropy import CategoricalStreamCoder
from labelzip.codecs.vqae.idprior import RANK_ALPHABET, IdPrior
from labelzip.codecs.vqae.layout import BlockLayout, EntropyModel
from labelzip.errors import ArchiveFormatError


def _symbols(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(100, generator=g)[:2] for _ in range(n)])
    levels = torch.multinomial(torch.tensor([8.0, 4, 2, 1]), n * 2, True, generator=g)
    codes = torch.multinomial(
        torch.softmax(torch.arange(16.0), 0), n * 3, True, generator=g
    )
    return ids, levels.view(n, 2), codes.view(n, 3)


def _entropy(levels: torch.Tensor, codes: torch.Tensor) -> EntropyModel:
    return EntropyModel(
        CategoricalStreamCoder.fit(levels, 4), CategoricalStreamCoder.fit(codes, 16)
    )


def _check(out: tuple[torch.Tensor, ...], *want: torch.Tensor) -> None:
    for got, expected in zip(out, want, strict=True):
        assert torch.equal(got, expected)


def test_fixed_layout_sizes_and_round_trip() -> None:
    layout = BlockLayout(
        num_classes=100, num_ids=2, value_bits=2, num_codes=3, code_bits=4
    )
    ids, levels, codes = _symbols(10)
    data = layout.pack(ids, levels, codes)
    assert data.numel() == layout.fixed_bytes(10) == (10 * 2 * 9 + 7) // 8 + 15
    _check(layout.unpack(data, 10, None), ids, levels, codes)


def test_entropy_layout_is_shorter_and_exact() -> None:
    ids, levels, codes = _symbols(500, seed=1)
    model = _entropy(levels, codes)
    layout = BlockLayout(100, 2, 2, 3, 4, entropy=model)
    data = layout.pack(ids, levels, codes)
    assert data.numel() < layout.fixed_bytes(500)
    _check(layout.unpack(data, 500, None), ids, levels, codes)
    rebuilt = EntropyModel.from_stored(model.to_config(), model.tensors())
    again = BlockLayout(100, 2, 2, 3, 4, entropy=rebuilt).unpack(data, 500, None)
    _check(again, ids, levels, codes)
    with pytest.raises(ArchiveFormatError, match="incomplete"):
        EntropyModel.from_stored(model.to_config(), {})


def test_ranked_layout_with_escapes_round_trips() -> None:
    # 300 classes > RANK_ALPHABET: ranks past the last symbol escape to raw ids.
    g = torch.Generator().manual_seed(4)
    num_classes, n = 300, 400
    books = torch.randn(1, 3, 16, 2, generator=g)
    codes = torch.randint(0, 16, (n, 3), generator=g)
    proj = torch.randn(6, num_classes, generator=g)
    latent = books[0][torch.arange(3), codes].reshape(n, -1)
    logits = latent @ proj + 1.5 * torch.randn(n, num_classes, generator=g)
    ids = logits.topk(3, dim=1).indices
    levels = torch.randint(0, 4, (n, 3), generator=g)
    prior = IdPrior.fit(books, codes, logits)
    ranks = prior.ranks(prior.scores(codes), ids)
    assert int(ranks.max()) >= RANK_ALPHABET - 1  # some escapes happen
    model = EntropyModel(
        CategoricalStreamCoder.fit(levels, 4),
        CategoricalStreamCoder.fit(codes, 16),
        CategoricalStreamCoder.fit(ranks.clamp(max=RANK_ALPHABET - 1), RANK_ALPHABET),
        prior,
    )
    layout = BlockLayout(num_classes, 3, 2, 3, 4, entropy=model)
    data = layout.pack(ids, levels, codes)
    assert data.numel() < layout.fixed_bytes(n)
    _check(layout.unpack(data, n, None), ids, levels, codes)
    rebuilt = EntropyModel.from_stored(model.to_config(), model.tensors())
    assert set(model.tensors()) >= {"prior_weight", "entropy_rank_tables"}
    _check(
        BlockLayout(num_classes, 3, 2, 3, 4, entropy=rebuilt).unpack(data, n, None),
        ids,
        levels,
        codes,
    )


def test_bad_lengths_are_rejected() -> None:
    layout = BlockLayout(100, 2, 2, 3, 4)
    with pytest.raises(
        ArchiveFormatError, match=r"must hold \d+ bytes \(fixed rate\), got 3"
    ):
        layout.unpack(torch.zeros(3, dtype=torch.uint8), 10, None)
    ids, levels, codes = _symbols(50, seed=2)
    coded = BlockLayout(100, 2, 2, 3, 4, entropy=_entropy(levels, codes))
    data = coded.pack(ids, levels, codes)
    with pytest.raises(ArchiveFormatError, match="entropy-coded section"):
        coded.unpack(data[:-4], 50, None)
