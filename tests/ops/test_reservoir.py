import pytest
import torch

from labelzip.errors import ConfigError, InputError
from labelzip.ops.reservoir import Reservoir, reservoir_sample


def _stream(n: int, batch: int) -> list[torch.Tensor]:
    rows = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    return list(rows.split(batch))


def test_keeps_everything_below_capacity_in_order() -> None:
    kept, seen = reservoir_sample(_stream(50, 7), capacity=100)
    assert seen == 50
    assert torch.equal(kept[:, 0], torch.arange(50, dtype=torch.float32))


def test_sample_is_uniform_over_a_sorted_stream() -> None:
    # The first rows of a sorted stream would all be small; a uniform sample is not.
    kept, seen = reservoir_sample(_stream(20_000, 1000), capacity=2000, generator=3)
    assert seen == 20_000 and kept.shape == (2000, 3)
    values = kept[:, 0]
    assert values.unique().numel() == 2000  # without replacement
    assert abs(float(values.mean()) - 9999.5) < 400  # ~5 standard errors
    assert float((values >= 10_000).float().mean()) == pytest.approx(0.5, abs=0.05)


def test_same_seed_same_sample_and_batching_does_not_matter_for_fill() -> None:
    a, _ = reservoir_sample(_stream(5000, 500), capacity=300, generator=1)
    b, _ = reservoir_sample(_stream(5000, 500), capacity=300, generator=1)
    c, _ = reservoir_sample(_stream(5000, 500), capacity=300, generator=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dtype_and_batches() -> None:
    res = Reservoir(10, 3, seed=0, dtype=torch.float16)
    for batch in _stream(25, 4):
        res.add(batch)
    assert res.rows().dtype == torch.float16 and res.seen == 25
    assert res.nbytes == 10 * 3 * 2
    out = list(res.batches(size=4))
    assert [b.shape[0] for b in out] == [4, 4, 2] and out[0].dtype == torch.float32


def test_errors() -> None:
    with pytest.raises(ConfigError, match="capacity must be >= 1"):
        Reservoir(0, 3)
    with pytest.raises(InputError, match="no labels"):
        reservoir_sample([], capacity=4)
    with pytest.raises(InputError, match="NaN or Inf"):
        reservoir_sample([torch.tensor([[0.0, float("nan")]])], capacity=4)
