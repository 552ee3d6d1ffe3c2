"""Byte layout of a VQAE block, fixed rate or entropy coded.

Per label: K explicit ids (``b_id = ceil(log2 C)`` bits), K value levels
(``b_v`` bits, absent when values are off) and R*M code indices (``b_k =
ceil(log2 k)`` bits). For N labels a block is one of::

    fixed    : pack_bits(id * 2**b_v + level, b_id + b_v)  (N*K values)
               pack_bits(codes, b_k)                        (N*R*M values)
    entropy  : pack_bits(id, b_id)                          (N*K values)
               one ANS stream: levels (N, K), then codes (N, R*M)
    ranked   : one ANS stream: levels (N, K), id ranks (N, K), codes (N, R*M),
               then the escaped ids raw (uniform over C)

In the ranked layout the ids are coded as their ranks under a class prior
predicted exactly from the codes (:mod:`labelzip.codecs.vqae.idprior`).

Each ``pack_bits`` section is padded to a whole byte, the ANS stream is whole
32-bit words. The entropy layout is written only when it is strictly shorter
than the fixed one, so a block's length tells the reader which it is and the
fixed size is a guaranteed upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from labelzip.codecs.entropy import (
    CategoricalStreamCoder,
    RowCount,
    StreamCoder,
    UniformStreamCoder,
    decode_joint,
    encode_joint,
)
from labelzip.codecs.vqae.idprior import IdPrior
from labelzip.errors import ArchiveFormatError, InputError
from labelzip.ops.bitpack import bits_for, pack_bits, packed_size, unpack_bits

__all__ = ["BlockLayout", "EntropyModel"]

LEVEL_TABLES_KEY = "entropy_level_tables"
CODE_TABLES_KEY = "entropy_code_tables"
RANK_TABLES_KEY = "entropy_rank_tables"


@dataclass(frozen=True)
class EntropyModel:
    """Static ANS models of a block's symbols, and the optional id prior.

    ``levels`` is ``None`` when no values are stored. With a ``prior`` the ids
    are coded as ranks (``ranks``: one table per slot over ``RANK_ALPHABET``
    symbols, the last escaping to a raw id when C is larger); without it they
    are bit-packed.
    """

    levels: CategoricalStreamCoder | None
    codes: CategoricalStreamCoder
    ranks: CategoricalStreamCoder | None = None
    prior: IdPrior | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {CODE_TABLES_KEY: self.codes.tables}
        if self.levels is not None:
            out[LEVEL_TABLES_KEY] = self.levels.tables
        if self.ranks is not None and self.prior is not None:
            out[RANK_TABLES_KEY] = self.ranks.tables
            out.update(self.prior.tensors())
        return out

    def table_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to_config(self) -> dict[str, Any]:
        def columns(coder: CategoricalStreamCoder | None) -> list[int] | None:
            return list(coder.column_tables) if coder is not None else None

        return {
            "code_columns": columns(self.codes),
            "level_columns": columns(self.levels),
            "rank_columns": columns(self.ranks),
        }

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> EntropyModel:
        """Rebuild from :meth:`to_config` and :meth:`tensors`."""

        def coder(key: str, columns: Any) -> CategoricalStreamCoder | None:
            if columns is None:
                return None
            return CategoricalStreamCoder(tensors[key].to("cpu", torch.int16), columns)

        try:
            codes = coder(CODE_TABLES_KEY, config["code_columns"])
            levels = coder(LEVEL_TABLES_KEY, config.get("level_columns"))
            ranks = coder(RANK_TABLES_KEY, config.get("rank_columns"))
            prior = IdPrior.from_stored(tensors) if ranks is not None else None
        except (KeyError, TypeError, InputError) as exc:
            raise ArchiveFormatError(
                f"vqae entropy model is incomplete: {exc}"
            ) from exc
        if codes is None:
            raise ArchiveFormatError("vqae entropy model has no code tables")
        return cls(levels, codes, ranks, prior)


@dataclass(frozen=True)
class BlockLayout:
    """How ids, value levels and codes of N labels become bytes and back.

    Attributes:
        num_classes: C.
        num_ids: K.
        value_bits: bits of one value level (0: no values).
        num_codes: R*M code indices per label.
        code_bits: bits of one code index.
        entropy: the ANS models, or ``None`` for fixed rate only.
    """

    num_classes: int
    num_ids: int
    value_bits: int
    num_codes: int
    code_bits: int
    entropy: EntropyModel | None = None

    @property
    def id_bits(self) -> int:
        return bits_for(self.num_classes)

    @property
    def slot_bits(self) -> int:
        return self.id_bits + self.value_bits

    def fixed_bytes(self, num_labels: int) -> int:
        """Size of a fixed-rate block (the upper bound on every block)."""
        return packed_size(num_labels * self.num_ids, self.slot_bits) + packed_size(
            num_labels * self.num_codes, self.code_bits
        )

    def pack(
        self, ids: torch.Tensor, levels: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """(N, K) ids, (N, K) levels, (N, R*M) codes -> flat uint8 block."""
        n = codes.shape[0]
        ent = self.entropy
        if ent is None or n == 0:
            return self._pack_fixed(ids, levels, codes)
        parts: list[tuple[StreamCoder, torch.Tensor]] = []
        if ent.levels is not None:
            parts.append((ent.levels, levels))
        head = pack_bits(ids, self.id_bits)
        if ent.prior is not None and ent.ranks is not None:
            ranks = ent.prior.ranks(ent.prior.scores(codes), ids)
            escape = ent.ranks.alphabet_size - 1
            escaped = ranks >= escape if self.num_classes > escape + 1 else None
            if escaped is not None:
                ranks = ranks.clamp(max=escape)
            raw = ids[escaped].view(-1, 1) if escaped is not None else ids[:0, :1]
            parts += [(ent.ranks, ranks), (ent.codes, codes)]
            parts.append((UniformStreamCoder(self.num_classes), raw))
            head = head[:0]  # the ids travel as ranks
        else:
            parts.append((ent.codes, codes))
        coded = torch.cat([head, encode_joint(parts)])
        if coded.numel() < self.fixed_bytes(n):
            return coded
        return self._pack_fixed(ids, levels, codes)

    def _pack_fixed(
        self, ids: torch.Tensor, levels: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        slots = ids * (1 << self.value_bits) + levels if self.value_bits else ids
        return torch.cat(
            [pack_bits(slots, self.slot_bits), pack_bits(codes, self.code_bits)]
        )

    def unpack(
        self, data: torch.Tensor, num_labels: int, device: torch.device | str | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat block -> ((N, K) ids, (N, K) levels, (N, R*M) codes), int64.

        Raises:
            ArchiveFormatError: a length that fits neither layout, or corrupt data.
        """
        n, k = num_labels, self.num_ids
        data = data.reshape(-1)
        fixed = self.fixed_bytes(n)
        if data.numel() == fixed:
            head_bytes = packed_size(n * k, self.slot_bits)
            slots = unpack_bits(data[:head_bytes].to(device), self.slot_bits, n * k)
            slots = slots.view(n, k)
            codes = unpack_bits(
                data[head_bytes:].to(device), self.code_bits, n * self.num_codes
            )
            levels = slots % (1 << self.value_bits)
            return slots >> self.value_bits, levels, codes.view(n, self.num_codes)
        ent = self.entropy
        ranked = ent is not None and ent.prior is not None
        id_bytes = 0 if ranked else packed_size(n * k, self.id_bits)
        if ent is None or not id_bytes <= data.numel() < fixed:
            raise ArchiveFormatError(
                f"VQAE block of {n} labels must hold {fixed} bytes (fixed rate)"
                f"{' or fewer (entropy coded)' if ent else ''}, got {data.numel()}"
            )
        parts: list[tuple[StreamCoder, RowCount]] = []
        if ent.levels is not None:
            parts.append((ent.levels, n))
        if ent.prior is not None and ent.ranks is not None:
            escape = ent.ranks.alphabet_size - 1
            can_escape = self.num_classes > escape + 1
            rank_at = len(parts)

            def escapes(done: list[torch.Tensor]) -> int:
                return int((done[rank_at] == escape).sum()) if can_escape else 0

            parts += [(ent.ranks, n), (ent.codes, n)]
            parts.append((UniformStreamCoder(self.num_classes), escapes))
        else:
            parts.append((ent.codes, n))
        try:
            decoded = decode_joint(data[id_bytes:], parts)
        except InputError as exc:
            raise ArchiveFormatError(f"VQAE entropy-coded section: {exc}") from exc
        levels = (
            decoded[0]
            if ent.levels is not None
            else torch.zeros(n, k, dtype=torch.int64)
        )
        if ent.prior is not None and ent.ranks is not None:
            ranks, codes, raw_ids = decoded[-3], decoded[-2], decoded[-1]
            codes = codes.to(device)
            raw = torch.full_like(ranks, -1)
            if can_escape:
                raw[ranks == escape] = raw_ids.view(-1)
            scores = ent.prior.scores(codes)
            ids = ent.prior.ids(scores, ranks.to(device), raw.to(device))
        else:
            ids = unpack_bits(data[:id_bytes].to(device), self.id_bits, n * k).view(
                n, k
            )
            codes = decoded[-1].to(device)
        return ids, levels.to(device), codes
