from __future__ import annotations

import pytest
import torch

from labelzip.codecs.vqae.idprior import IdPrior
from labelzip.errors import ArchiveFormatError


def _fitted(
    seed: int = 0, num_classes: int = 200
) -> tuple[IdPrior, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    books = torch.randn(2, 4, 8, 2, generator=g)  # two residual stages
    codes = torch.randint(0, 8, (600, 8), generator=g)
    staged = codes.view(600, 2, 4)
    chunk = torch.arange(4)
    latent = (books[0][chunk, staged[:, 0]] + books[1][chunk, staged[:, 1]]).reshape(
        600, -1
    )
    logits = latent @ torch.randn(8, num_classes, generator=g)
    logits = logits + 0.2 * torch.randn(600, num_classes, generator=g)
    return IdPrior.fit(books, codes, logits), codes, logits


def test_scores_are_exact_integers_and_rank_well() -> None:
    prior, codes, logits = _fitted()
    scores = prior.scores(codes)
    assert scores.dtype == torch.float32
    # Float32 matmul on integers below 2**24 is exact: a float64 recomputation agrees.
    books = prior.codebooks.double()
    staged = codes.view(-1, 2, 4)
    chunk = torch.arange(4)
    u = (books[0][chunk, staged[:, 0]] + books[1][chunk, staged[:, 1]]).reshape(
        len(codes), -1
    )
    exact = u @ prior.weight.double().T + prior.bias.double()
    assert torch.equal(scores.double(), exact)
    assert torch.equal(exact, exact.round())
    # The prior predicts the teacher's argmax far better than chance (rank 0 of 200).
    ranks = prior.ranks(scores, logits.argmax(1, keepdim=True))
    assert float(ranks.float().mean()) < 5.0


def test_ties_rank_by_class_id() -> None:
    prior, codes, _ = _fitted()
    scores = torch.zeros(2, 200)
    scores[:, 50] = 3.0  # one clear winner, then 199 tied classes in id order
    ids = torch.tensor([[50, 0, 7], [50, 199, 1]])
    ranks = prior.ranks(scores, ids)
    assert ranks.tolist() == [[0, 0, 6], [0, 198, 1]]
    assert torch.equal(prior.ids(scores, ranks), ids)


def test_ids_invert_ranks_skipping_earlier_slots() -> None:
    prior, codes, logits = _fitted(1)
    keys = prior.scores(codes)
    ids = logits.topk(5, dim=1).indices
    ranks = prior.ranks(keys, ids)
    assert torch.equal(prior.ids(keys, ranks), ids)
    # Deep ranks (past the shallow first pass) decode too.
    deep = logits.topk(40, dim=1).indices[:, 30:35]
    deep_ranks = prior.ranks(keys, deep)
    assert int(deep_ranks.max()) > 24
    assert torch.equal(prior.ids(keys, deep_ranks), deep)
    # Escaped slots come back from their raw ids, and later slots still decode.
    escaped = ranks >= 3
    raw = torch.where(escaped, ids, torch.full_like(ids, -1))
    assert torch.equal(prior.ids(keys, ranks.masked_fill(escaped, 99), raw), ids)
    # Each rank counts only classes not taken by earlier slots.
    manual = (keys > keys.gather(1, ids[:, 1:2])).sum(1) - (
        keys.gather(1, ids[:, :1]) > keys.gather(1, ids[:, 1:2])
    ).squeeze(1).long()
    assert torch.equal(ranks[:, 1], manual)


def test_stored_tensors_round_trip_and_are_checked() -> None:
    prior, codes, _ = _fitted(2)
    again = IdPrior.from_stored(prior.tensors())
    assert torch.equal(again.scores(codes), prior.scores(codes))
    assert all(t.dtype in (torch.int8, torch.int32) for t in prior.tensors().values())
    with pytest.raises(ArchiveFormatError, match="lacks prior_bias"):
        IdPrior.from_stored(
            {k: v for k, v in prior.tensors().items() if k != "prior_bias"}
        )
    big = torch.full((200,), 1 << 24, dtype=torch.int32)
    with pytest.raises(ArchiveFormatError, match="not exact in float32"):
        IdPrior(prior.codebooks, prior.weight, big)
