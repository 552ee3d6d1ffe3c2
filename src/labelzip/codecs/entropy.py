"""Entropy coding of integer symbols with a stored frequency table (rANS).

Fixed-rate bit packing spends ``ceil(log2 A)`` bits on every symbol of an
alphabet of size ``A``. When symbols are skewed (VQ code indices that favour a
few codewords, top-k class ids that follow the class prior) an entropy coder
with a static model spends close to the empirical entropy instead. The model
is a table of integer frequencies, stored once with the codec (it counts in
``model_bytes``), so encoder and decoder see bit-identical probabilities and
the output is deterministic.

Symbols come as an (N, S) matrix: N rows (labels) of S columns (chunks, ids).
Each column uses one row of the table (``column_tables``), so several columns
can share a model. Coding uses ``constriction``'s ANS stack coder; the stream is
stored as little-endian 32-bit words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import constriction
import numpy as np
import torch

from labelzip.errors import InputError

__all__ = [
    "TABLE_PRECISION_BITS",
    "CategoricalStreamCoder",
    "StreamCoder",
    "UniformStreamCoder",
    "decode_joint",
    "encode_joint",
    "quantize_counts",
]

# Each table row sums to 2**TABLE_PRECISION_BITS; every symbol gets at least 1,
# so symbols never seen while fitting stay encodable (at <= 14 bits each).
TABLE_PRECISION_BITS = 14


def quantize_counts(
    counts: torch.Tensor, precision_bits: int = TABLE_PRECISION_BITS
) -> torch.Tensor:
    """Scale symbol counts to integer frequencies that sum to ``2**precision_bits``.

    Args:
        counts: (T, A) non-negative counts, one row per model.
        precision_bits: log2 of each row's total, at most 15 (stored as int16).

    Returns:
        (T, A) ``int16`` frequencies, every entry >= 1, each row summing to
        exactly ``2**precision_bits``.

    Raises:
        InputError: negative counts, or an alphabet larger than the total.
    """
    if counts.dim() != 2:
        raise InputError(f"counts must have shape (T, A), got {tuple(counts.shape)}")
    if not 1 <= precision_bits <= 15:
        raise InputError(f"precision_bits must be in 1..15, got {precision_bits}")
    num_tables, alphabet = counts.shape
    total = 1 << precision_bits
    if alphabet > total:
        raise InputError(
            f"alphabet of {alphabet} symbols does not fit a table of total {total}; "
            "raise precision_bits"
        )
    counts = counts.to(torch.float64)
    if bool((counts < 0).any()):
        raise InputError("counts must be non-negative")
    # Reserve one unit per symbol, spread the rest in proportion to the counts.
    spare = total - alphabet
    row_sum = counts.sum(dim=1, keepdim=True)
    share = torch.where(row_sum > 0, counts / row_sum.clamp(min=1e-300), 1.0 / alphabet)
    extra = torch.floor(share * spare).to(torch.int64)
    # Hand out the rounding remainder to the largest fractional parts (ties: low id).
    remainder = spare - extra.sum(dim=1)
    frac = share * spare - extra.to(torch.float64)
    order = torch.argsort(-frac, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(alphabet).expand(num_tables, -1).contiguous())
    extra += (ranks < remainder.unsqueeze(1)).to(torch.int64)
    freqs = extra + 1
    assert bool((freqs.sum(dim=1) == total).all())
    return freqs.to(torch.int16)


class CategoricalStreamCoder:
    """Static-model ANS coder for an (N, S) matrix of symbols in ``range(A)``.

    Args:
        tables: (T, A) ``int16`` frequencies (from :func:`quantize_counts`); this
            tensor is what a codec stores.
        column_tables: for each of the S columns, the table row it is coded with.

    Example:
        >>> coder = CategoricalStreamCoder.fit(symbols, alphabet_size=256)
        >>> data = coder.encode(symbols)           # uint8 bytes
        >>> assert torch.equal(coder.decode(data, symbols.shape[0]), symbols)
    """

    def __init__(self, tables: torch.Tensor, column_tables: Sequence[int]) -> None:
        if tables.dim() != 2 or tables.dtype != torch.int16:
            raise InputError(
                f"tables must be a (T, A) int16 tensor, got {tuple(tables.shape)} "
                f"{tables.dtype}"
            )
        if bool((tables <= 0).any()):
            raise InputError("every table frequency must be >= 1")
        cols = [int(c) for c in column_tables]
        if not cols or min(cols) < 0 or max(cols) >= tables.shape[0]:
            raise InputError(
                f"column_tables must name rows in 0..{tables.shape[0] - 1}, got {cols}"
            )
        self.tables = tables.cpu()
        self.column_tables = tuple(cols)
        probs = self.tables.to(torch.float64)
        probs = probs / probs.sum(dim=1, keepdim=True)
        self._log2_probs = torch.log2(probs)
        self._models = [
            constriction.stream.model.Categorical(row.numpy(), perfect=False)
            for row in probs
        ]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the tables (the constriction models are rebuilt from them),
        so a fitted codec can be sent to the other ranks of a torchrun job."""
        return (type(self), (self.tables, self.column_tables))

    @classmethod
    def fit(
        cls,
        symbols: torch.Tensor,
        alphabet_size: int,
        column_tables: Sequence[int] | None = None,
        precision_bits: int = TABLE_PRECISION_BITS,
    ) -> CategoricalStreamCoder:
        """Count symbols column by column (pooled per table) and build the coder.

        Args:
            symbols: (N, S) integer symbols in ``range(alphabet_size)``.
            alphabet_size: A.
            column_tables: table row of each column; default one table per column.
        """
        symbols = _check_symbols(symbols, alphabet_size)
        num_cols = symbols.shape[1]
        cols = list(range(num_cols)) if column_tables is None else list(column_tables)
        if len(cols) != num_cols:
            raise InputError(
                f"column_tables has {len(cols)} entries for {num_cols} symbol columns"
            )
        num_tables = max(cols) + 1 if cols else 1
        counts = torch.zeros(num_tables, alphabet_size, dtype=torch.int64)
        for col, table in enumerate(cols):
            counts[table] += torch.bincount(symbols[:, col], minlength=alphabet_size)
        return cls(quantize_counts(counts, precision_bits), cols)

    @property
    def alphabet_size(self) -> int:
        return int(self.tables.shape[1])

    @property
    def num_columns(self) -> int:
        return len(self.column_tables)

    def table_bytes(self) -> int:
        """Bytes the stored frequency tables take."""
        return self.tables.numel() * self.tables.element_size()

    def cost_bits(self, symbols: torch.Tensor) -> float:
        """Ideal code length of ``symbols`` under the stored model, in bits.

        The real stream is within a few words of this (ANS has a 32-64 bit tail).
        """
        symbols = self._check(symbols)
        total = 0.0
        for col, table in enumerate(self.column_tables):
            total -= float(self._log2_probs[table][symbols[:, col]].sum())
        return total

    def encode(self, symbols: torch.Tensor) -> torch.Tensor:
        """Encode (N, S) symbols into a flat ``uint8`` tensor (whole 32-bit words)."""
        return encode_joint([(self, symbols)])

    def decode(self, data: torch.Tensor, num_rows: int) -> torch.Tensor:
        """Inverse of :meth:`encode`: (num_rows, S) ``int64`` symbols on the CPU.

        Raises:
            InputError: the bytes are not whole words, or do not hold the symbols.
        """
        return decode_joint(data, [(self, num_rows)])[0]

    def _push(self, ans: Any, symbols: torch.Tensor) -> None:
        array = symbols.numpy().astype(np.int32)
        # ANS is a stack: push the last column first so decoding pops column 0 first.
        for col in reversed(range(self.num_columns)):
            model = self._models[self.column_tables[col]]
            ans.encode_reverse(np.ascontiguousarray(array[:, col]), model)

    def _pop(self, ans: Any, num_rows: int) -> torch.Tensor:
        out = np.empty((num_rows, self.num_columns), dtype=np.int64)
        for col in range(self.num_columns):
            model = self._models[self.column_tables[col]]
            out[:, col] = ans.decode(model, num_rows)
        return torch.from_numpy(out)

    def _check(self, symbols: torch.Tensor) -> torch.Tensor:
        symbols = _check_symbols(symbols, self.alphabet_size)
        if symbols.shape[1] != self.num_columns:
            raise InputError(
                f"coder has {self.num_columns} columns, symbols have {symbols.shape[1]}"
            )
        return symbols


class UniformStreamCoder:
    """Uniform model over ``range(alphabet_size)`` for S columns: nothing to store.

    For symbols with no useful statistics (escaped raw class ids) that must
    share a stream with modelled ones; any alphabet up to 2**24 symbols.
    """

    def __init__(self, alphabet_size: int, num_columns: int = 1) -> None:
        if not 1 <= alphabet_size <= (1 << 24):
            raise InputError(f"alphabet_size must be in 1..2**24, got {alphabet_size}")
        self.alphabet_size = alphabet_size
        self.num_columns = num_columns
        self._model = constriction.stream.model.Uniform(alphabet_size)

    def cost_bits(self, symbols: torch.Tensor) -> float:
        return symbols.numel() * math.log2(self.alphabet_size)

    def _check(self, symbols: torch.Tensor) -> torch.Tensor:
        symbols = _check_symbols(symbols, self.alphabet_size, limit=1 << 24)
        if symbols.shape[1] != self.num_columns:
            raise InputError(
                f"coder has {self.num_columns} columns, symbols have {symbols.shape[1]}"
            )
        return symbols

    def _push(self, ans: Any, symbols: torch.Tensor) -> None:
        array = symbols.numpy().astype(np.int32)
        for col in reversed(range(self.num_columns)):
            ans.encode_reverse(np.ascontiguousarray(array[:, col]), self._model)

    def _pop(self, ans: Any, num_rows: int) -> torch.Tensor:
        out = np.empty((num_rows, self.num_columns), dtype=np.int64)
        for col in range(self.num_columns):
            out[:, col] = ans.decode(self._model, num_rows)
        return torch.from_numpy(out)


StreamCoder = CategoricalStreamCoder | UniformStreamCoder

# Rows of one part: a count, or a function of the parts decoded before it.
RowCount = int | Callable[[list[torch.Tensor]], int]


def encode_joint(
    parts: Sequence[tuple[StreamCoder, torch.Tensor]],
) -> torch.Tensor:
    """Encode several symbol matrices (each with its own coder) into one stream.

    Args:
        parts: (coder, (N_i, S_i) symbols) pairs; alphabets may differ.

    Returns:
        flat ``uint8`` tensor of whole little-endian 32-bit words (empty when
        there are no symbols at all). One stream saves the per-stream ANS tail.
    """
    checked = [(coder, coder._check(symbols)) for coder, symbols in parts]
    if all(symbols.numel() == 0 for _, symbols in checked):
        return torch.zeros(0, dtype=torch.uint8)
    ans = constriction.stream.stack.AnsCoder()
    for coder, symbols in reversed(checked):
        if symbols.numel():
            coder._push(ans, symbols)
    words = ans.get_compressed().astype("<u4")
    return torch.from_numpy(words.view(np.uint8).copy())


def decode_joint(
    data: torch.Tensor, parts: Sequence[tuple[StreamCoder, RowCount]]
) -> list[torch.Tensor]:
    """Inverse of :func:`encode_joint`: one (num_rows, S) int64 matrix per coder.

    A part's row count may be a function of the parts decoded before it (e.g.
    how many escapes they hold).

    Raises:
        InputError: the bytes are not whole words, are corrupt, or hold more
            or fewer symbols than asked for.
    """
    raw = data.reshape(-1).cpu()
    if raw.dtype != torch.uint8 or raw.numel() % 4:
        raise InputError(
            f"entropy-coded data must be uint8 in whole 32-bit words, got "
            f"{raw.numel()} bytes of {raw.dtype}"
        )
    out: list[torch.Tensor] = []
    # Symbols of (near-)certain probability cost less than one bit each: a long
    # run of them can code to zero words, so an empty stream is valid and decodes
    # from the coder's initial state (block checksums catch truncation).
    words = raw.numpy().view("<u4").astype(np.uint32)
    ans = constriction.stream.stack.AnsCoder(words)
    try:
        for coder, rows in parts:
            count = rows(out) if callable(rows) else rows
            if count * coder.num_columns:
                out.append(coder._pop(ans, count))
            else:
                out.append(torch.zeros(count, coder.num_columns, dtype=torch.int64))
    except Exception as exc:  # constriction raises on exhausted/corrupt data
        raise InputError(f"entropy-coded data is corrupt: {exc}") from exc
    if not ans.is_empty():
        raise InputError(
            "entropy-coded data has bytes left over after decoding the expected "
            "symbols; the block and its num_labels do not match"
        )
    return out


def _check_symbols(
    symbols: torch.Tensor, alphabet_size: int, limit: int = 1 << 15
) -> torch.Tensor:
    if symbols.dim() != 2 or symbols.is_floating_point():
        raise InputError(
            f"symbols must be an (N, S) integer tensor, got {tuple(symbols.shape)} "
            f"{symbols.dtype}"
        )
    if alphabet_size < 1 or alphabet_size > limit:
        raise InputError(f"alphabet_size must be in 1..{limit}, got {alphabet_size}")
    symbols = symbols.to(device="cpu", dtype=torch.int64)
    if symbols.numel() and (
        int(symbols.min()) < 0 or int(symbols.max()) >= alphabet_size
    ):
        raise InputError(
            f"symbols must lie in [0, {alphabet_size}); got range "
            f"[{int(symbols.min())}, {int(symbols.max())}]"
        )
    return symbols
