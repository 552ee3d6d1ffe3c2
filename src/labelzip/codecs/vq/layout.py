"""Byte layout of a VQAE block, fixed rate or entropy coded.

Per label: K explicit ids (``b_id = ceil(log2 C)`` bits), K value levels
(``b_v`` bits, absent when values are off) and R*M code indices (``b_k =
ceil(log2 k)`` bits). For N labels a block is one of::

    fixed    : pack_bits(id * 2**b_v + level, b_id + b_v)  (N*K values)
               pack_bits(codes, b_k)                        (N*R*M values)
    entropy  : pack_bits(id, b_id)                          (N*K values)
               one ANS stream: levels (N, K), then codes (N, R*M)

Each ``pack_bits`` section is padded to a whole byte, the ANS stream is whole
32-bit words. The entropy layout is written only when it is strictly shorter
than the fixed one, so a block's length tells the reader which it is and the
fixed size is a guaranteed upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from labelzip.codecs.entropy import CategoricalStreamCoder, decode_joint, encode_joint
from labelzip.errors import ArchiveFormatError, InputError
from labelzip.ops.bitpack import pack_bits, packed_size, unpack_bits

__all__ = ["BlockLayout", "EntropyModel"]

LEVEL_TABLES_KEY = "entropy_level_tables"
CODE_TABLES_KEY = "entropy_code_tables"


@dataclass(frozen=True)
class EntropyModel:
    """Static ANS models of the value levels (one table per slot) and codes.

    ``levels`` is ``None`` when no values are stored.
    """

    levels: CategoricalStreamCoder | None
    codes: CategoricalStreamCoder

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {CODE_TABLES_KEY: self.codes.tables}
        if self.levels is not None:
            out[LEVEL_TABLES_KEY] = self.levels.tables
        return out

    def table_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to_config(self) -> dict[str, Any]:
        return {
            "code_columns": list(self.codes.column_tables),
            "level_columns": (
                list(self.levels.column_tables) if self.levels is not None else None
            ),
        }

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> EntropyModel:
        """Rebuild from :meth:`to_config` and :meth:`tensors`."""
        try:
            codes = CategoricalStreamCoder(
                tensors[CODE_TABLES_KEY].to("cpu", torch.int16), config["code_columns"]
            )
            levels = None
            if config.get("level_columns") is not None:
                levels = CategoricalStreamCoder(
                    tensors[LEVEL_TABLES_KEY].to("cpu", torch.int16),
                    config["level_columns"],
                )
        except (KeyError, TypeError, InputError) as exc:
            raise ArchiveFormatError(
                f"vqae entropy model is incomplete: {exc}"
            ) from exc
        return cls(levels, codes)


@dataclass(frozen=True)
class BlockLayout:
    """How ids, value levels and codes of N labels become bytes and back.

    Attributes:
        num_ids: K.
        id_bits: bits of one class id.
        value_bits: bits of one value level (0: no values).
        num_codes: R*M code indices per label.
        code_bits: bits of one code index.
        entropy: the ANS models, or ``None`` for fixed rate only.
    """

    num_ids: int
    id_bits: int
    value_bits: int
    num_codes: int
    code_bits: int
    entropy: EntropyModel | None = None

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
        slots = ids * (1 << self.value_bits) + levels if self.value_bits else ids
        fixed = torch.cat(
            [pack_bits(slots, self.slot_bits), pack_bits(codes, self.code_bits)]
        )
        if self.entropy is None or n == 0:
            return fixed
        parts = [(self.entropy.codes, codes)]
        if self.entropy.levels is not None:
            parts.insert(0, (self.entropy.levels, levels))
        coded = torch.cat([pack_bits(ids, self.id_bits), encode_joint(parts)])
        return coded if coded.numel() < fixed.numel() else fixed

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
        id_bytes = packed_size(n * k, self.id_bits)
        if self.entropy is None or not id_bytes <= data.numel() < fixed:
            raise ArchiveFormatError(
                f"VQAE block of {n} labels must hold {fixed} bytes (fixed rate)"
                f"{' or fewer (entropy coded)' if self.entropy else ''}, "
                f"got {data.numel()}"
            )
        ids = unpack_bits(data[:id_bytes].to(device), self.id_bits, n * k).view(n, k)
        parts: list[tuple[CategoricalStreamCoder, int]] = [(self.entropy.codes, n)]
        if self.entropy.levels is not None:
            parts.insert(0, (self.entropy.levels, n))
        try:
            decoded = decode_joint(data[id_bytes:], parts)
        except InputError as exc:
            raise ArchiveFormatError(f"VQAE entropy-coded section: {exc}") from exc
        codes = decoded[-1].to(device)
        levels = decoded[0].to(device) if len(decoded) == 2 else torch.zeros_like(ids)
        return ids, levels, codes
