from __future__ import annotations

import pytest
import torch

from labelzip.codecs.entropy import (
    TABLE_PRECISION_BITS,
    CategoricalStreamCoder,
    quantize_counts,
)
from labelzip.errors import InputError
from labelzip.ops.bitpack import bits_for, pack_bits


def _skewed(n: int, cols: int, alphabet: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(alphabet, generator=g) * 2.5, dim=0)
    return torch.multinomial(probs, n * cols, replacement=True, generator=g).view(
        n, cols
    )


def test_quantize_counts_sums_exactly_and_keeps_every_symbol() -> None:
    counts = torch.tensor([[0, 0, 5, 1000], [3, 3, 3, 3], [0, 0, 0, 0]])
    freqs = quantize_counts(counts)
    assert freqs.dtype == torch.int16
    assert torch.equal(freqs.long().sum(1), torch.full((3,), 1 << TABLE_PRECISION_BITS))
    assert int(freqs.min()) >= 1
    assert int(freqs[0, 3]) > int(freqs[0, 2]) > int(freqs[0, 0])
    assert torch.equal(freqs[1], freqs[1, :1].expand(4))  # uniform stays uniform


def test_quantize_counts_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="non-negative"):
        quantize_counts(torch.tensor([[1, -1]]))
    with pytest.raises(InputError, match="does not fit"):
        quantize_counts(torch.ones(1, 300), precision_bits=8)


@pytest.mark.parametrize("shared", [False, True])
def test_round_trip_is_exact(shared: bool) -> None:
    symbols = _skewed(500, 6, 64)
    columns = [0] * 6 if shared else None
    coder = CategoricalStreamCoder.fit(symbols, 64, columns)
    data = coder.encode(symbols)
    assert data.dtype == torch.uint8 and data.numel() % 4 == 0
    assert torch.equal(coder.decode(data, 500), symbols)
    # Rebuilt from its stored table alone, it decodes the same stream.
    again = CategoricalStreamCoder(coder.tables.clone(), coder.column_tables)
    assert torch.equal(again.decode(data, 500), symbols)


def test_smaller_than_fixed_rate_on_skewed_symbols() -> None:
    symbols = _skewed(2000, 4, 256)
    coder = CategoricalStreamCoder.fit(symbols, 256)
    coded = coder.encode(symbols).numel()
    fixed = pack_bits(symbols, bits_for(256)).numel()
    assert coded < 0.8 * fixed
    # The real stream is within two words of the ideal code length.
    assert coded * 8 <= coder.cost_bits(symbols) + 64


def test_unseen_symbols_stay_encodable() -> None:
    train = torch.zeros(100, 2, dtype=torch.int64)
    coder = CategoricalStreamCoder.fit(train, 16)
    other = torch.arange(32).view(16, 2) % 16
    assert torch.equal(coder.decode(coder.encode(other), 16), other)


def test_determinism_and_empty() -> None:
    symbols = _skewed(300, 3, 32, seed=3)
    a = CategoricalStreamCoder.fit(symbols, 32)
    b = CategoricalStreamCoder.fit(symbols.clone(), 32)
    assert torch.equal(a.encode(symbols), b.encode(symbols))
    assert a.encode(symbols[:0]).numel() == 0
    assert a.decode(torch.zeros(0, dtype=torch.uint8), 0).shape == (0, 3)


def test_errors_name_the_problem() -> None:
    symbols = _skewed(50, 2, 8)
    coder = CategoricalStreamCoder.fit(symbols, 8)
    with pytest.raises(InputError, match=r"symbols must lie in \[0, 8\)"):
        coder.encode(symbols + 8)
    with pytest.raises(InputError, match="2 columns"):
        coder.encode(symbols[:, :1])
    with pytest.raises(InputError, match="whole 32-bit words"):
        coder.decode(torch.zeros(3, dtype=torch.uint8), 50)
    with pytest.raises(InputError, match="left over|corrupt"):
        coder.decode(coder.encode(symbols), 10)
    with pytest.raises(InputError, match="int16"):
        CategoricalStreamCoder(torch.ones(1, 8, dtype=torch.int32), [0])
    with pytest.raises(InputError, match="column_tables"):
        CategoricalStreamCoder(coder.tables, [5])


def test_a_run_of_near_certain_symbols_may_code_to_zero_words() -> None:
    """A valid empty stream decodes (it used to be refused as 'empty')."""
    train = torch.zeros(1_000_000, 1, dtype=torch.int64)
    train[0] = 1  # symbol 0 gets almost all of the table's precision
    coder = CategoricalStreamCoder.fit(train, 2)
    run = torch.zeros(20, 1, dtype=torch.int64)
    data = coder.encode(run)
    assert data.numel() == 0
    assert torch.equal(coder.decode(data, 20), run)
