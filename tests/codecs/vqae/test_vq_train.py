from __future__ import annotations

import pytest
import torch

from labelzip.codecs.vqae.autoencoder import VQAutoencoder, normalize_logits
from labelzip.codecs.vqae.train import (
    TrainSchedule,
    kd_loss,
    reservoir_sample,
    top_ids,
    train_autoencoder,
)
from labelzip.errors import InputError


def _batches(n: int, c: int, size: int) -> list[torch.Tensor]:
    rows = torch.arange(n, dtype=torch.float32).unsqueeze(1).expand(n, c)
    return list(rows.split(size))


def test_reservoir_keeps_everything_under_capacity() -> None:
    kept, seen = reservoir_sample(_batches(10, 3, 4), 16, torch.Generator())
    assert seen == 10
    assert torch.equal(kept[:, 0], torch.arange(10.0))


def test_reservoir_is_capped_uniform_and_deterministic() -> None:
    def factory() -> list[torch.Tensor]:
        return _batches(2000, 2, 37)

    a, seen = reservoir_sample(factory, 100, torch.Generator().manual_seed(5))
    b, _ = reservoir_sample(factory, 100, torch.Generator().manual_seed(5))
    assert seen == 2000 and a.shape == (100, 2)
    assert torch.equal(a, b)
    ids = a[:, 0].long()
    assert ids.unique().numel() == 100  # no row kept twice
    # Uniform over the stream: about half the kept rows come from its second half.
    late = int((ids >= 1000).sum())
    assert 30 <= late <= 70


def test_reservoir_byte_cap_limits_capacity() -> None:
    kept, seen = reservoir_sample(
        _batches(500, 10, 50), 400, torch.Generator(), max_bytes=100 * 10 * 4
    )
    assert seen == 500 and kept.shape == (100, 10)


def test_reservoir_rejects_empty_and_bad_batches() -> None:
    with pytest.raises(InputError, match="no labels"):
        reservoir_sample([], 8, torch.Generator())
    with pytest.raises(InputError, match="NaN or Inf"):
        reservoir_sample([torch.tensor([[0.0, float("nan")]])], 8, torch.Generator())
    with pytest.raises(InputError, match="fitted for 3 classes"):
        reservoir_sample([torch.zeros(2, 3), torch.zeros(2, 4)], 8, torch.Generator())


def test_top_ids_order_and_ties() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 4.0, 3.0, 2.0]])
    assert top_ids(logits, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert top_ids(logits, 0).shape == (2, 0)


def test_kd_loss_is_zero_on_identity_and_ignores_row_shifts() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=g) * 3
    temps, weights = (1.0, 4.0), (1.0, 2.0)
    assert float(kd_loss(logits, logits + 7.0, temps, weights)) == pytest.approx(
        0.0, abs=1e-5
    )
    assert float(kd_loss(logits, torch.zeros_like(logits), temps, weights)) > 0.1


def test_training_lowers_the_kd_loss(make_logits) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    data = make_logits(512, 24, seed=4)
    model = VQAutoencoder(
        num_classes=24,
        num_ids=1,
        num_chunks=4,
        chunk_dim=2,
        codebook_size=16,
        num_stages=1,
        hidden_dim=16,
        encoder_dim=32,
    )
    schedule = TrainSchedule(
        steps=150,
        batch_size=64,
        learning_rate=5e-3,
        temperatures=(1.0, 4.0),
        temperature_weights=(1.0, 1.0),
        commit_weight=0.25,
        seed=0,
    )
    scale = float((data - data.mean(1, keepdim=True)).std())

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            decoded, _ = model(normalize_logits(data, scale), top_ids(data, 1))
        return float(kd_loss(data, decoded, (1.0, 4.0), (1.0, 1.0)))

    model.train()
    model(normalize_logits(data, scale), top_ids(data, 1))  # init codebooks
    before = loss()
    report = train_autoencoder(model, data, scale, schedule, labels_seen=512)
    after = loss()
    assert report.steps == 150 and report.labels_kept == 512
    assert after < 0.6 * before
