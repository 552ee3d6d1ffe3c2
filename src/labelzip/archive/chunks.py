"""Encode one archive chunk: the single code path from labels to stored chunk bytes.

An archive's payload is a run of chunks of ``chunk_size`` stored labels (the
last one shorter). :class:`ChunkEncoder` turns one chunk's rows into the bytes
the archive stores for it. :class:`~labelzip.archive.ArchiveWriter` uses it for
the labels it is given, and the resumable and multi-process encode of
``labelzip compress`` uses it for chunks encoded elsewhere (another process, an
earlier run) that the writer then appends with
:meth:`~labelzip.archive.ArchiveWriter.write_chunk` or
:meth:`~labelzip.archive.ArchiveWriter.link_chunk`. Both therefore produce the
same bytes for the same chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from labelzip.archive.format import (
    MAX_CHUNK_VALUES,
    ArchiveMetadata,
    Layout,
    tensor_bytes,
)
from labelzip.codecs.base import Codec, EncodedBlock, LabelContext
from labelzip.codecs.context.recipe import recipe_context
from labelzip.errors import ConfigError

__all__ = ["ChunkCutter", "ChunkEncoder", "EncodedChunk"]


@dataclass(frozen=True)
class EncodedChunk:
    """The stored bytes of one chunk.

    Attributes:
        num_labels: stored labels in the chunk.
        data: the chunk's bytes exactly as the archive stores them.
        sha256: binary sha256 of ``data`` (the archive's per-chunk digest input).
    """

    num_labels: int
    data: bytes
    sha256: bytes

    @classmethod
    def of(cls, num_labels: int, data: bytes) -> EncodedChunk:
        """A chunk of ``data``, with its digest computed here."""
        return cls(num_labels, data, hashlib.sha256(data).digest())

    @classmethod
    def of_block(cls, block: EncodedBlock) -> EncodedChunk:
        """The chunk a codec's encoded block is stored as."""
        data = block.data.detach().to("cpu", torch.uint8).contiguous().reshape(-1)
        return cls.of(block.num_labels, tensor_bytes(data))


class ChunkEncoder:
    """Encode the rows of one chunk with a fitted codec.

    Args:
        codec: a fitted codec.
        layout: the archive's layout; needed by context codecs only.
        metadata: the archive's metadata; context codecs rebuild each label's
            view context from its relabel recipe.

    Raises:
        ConfigError: a context codec without a layout or a usable view recipe.
    """

    def __init__(
        self,
        codec: Codec,
        *,
        layout: Layout | None = None,
        metadata: ArchiveMetadata | None = None,
    ) -> None:
        if codec.num_classes is None:
            raise ConfigError(
                "encoding needs a fitted codec; call codec.fit(batches) first"
            )
        self.codec = codec
        self.num_classes: int = codec.num_classes
        self.layout = layout
        self.metadata = metadata or ArchiveMetadata()
        if codec.needs_context:
            self.context_at(torch.zeros(0, dtype=torch.int64))  # recipe usable?

    def context_at(self, flat: torch.Tensor) -> LabelContext:
        """The view context of flat labels, from the metadata's relabel recipe."""
        if self.layout is None:
            raise ConfigError(
                f"codec {self.codec.kind} encodes labels with their view context and "
                "needs the relabel layout [epoch, sample]; pass layout= and the "
                "relabel metadata (or write with `labelzip relabel`)"
            )
        return recipe_context(
            self.metadata.user,
            self.layout.dims,
            self.layout.shape,
            flat,
            error=ConfigError,
        )

    def encode(
        self, rows: torch.Tensor, flat: torch.Tensor | None = None
    ) -> EncodedChunk:
        """Encode one chunk: (n, C) rows, and for context codecs their (n,) flat
        label indices (the position of each label in the layout)."""
        if rows.shape[0] * self.num_classes > MAX_CHUNK_VALUES:
            raise ConfigError(
                f"a chunk of {rows.shape[0]} labels x {self.num_classes} classes "
                f"exceeds the {MAX_CHUNK_VALUES} values a reader decodes at once; "
                "use a smaller chunk_size"
            )
        if self.codec.needs_context:
            if flat is None or len(flat) != rows.shape[0]:
                raise ConfigError(
                    f"codec {self.codec.kind} needs the flat index of every label"
                )
            block = self.codec.encode_in_context(rows, self.context_at(flat))
        else:
            block = self.codec.encode(rows)
        if block.num_labels != rows.shape[0]:
            raise ConfigError(
                f"{self.codec.kind} encoded {block.num_labels} labels from {rows.shape[0]}"
            )
        return EncodedChunk.of(
            rows.shape[0], tensor_bytes(block.data.detach().to("cpu", torch.uint8))
        )


class ChunkCutter:
    """Cut labels given in pieces of any size into chunks of ``chunk_size``,
    encode each and hand it to ``sink``: the chunks
    :meth:`~labelzip.archive.ArchiveWriter.write` makes of the same rows.

    Rows of one chunk that came in several pieces are joined (in float32 when
    the pieces' dtypes differ, as the writer does).
    """

    def __init__(
        self,
        encoder: ChunkEncoder,
        chunk_size: int,
        sink: Callable[[EncodedChunk], None],
    ) -> None:
        self.encoder, self.size, self.sink = encoder, chunk_size, sink
        self._rows: list[torch.Tensor] = []
        self._flat: list[torch.Tensor] = []
        self._held = 0

    def add(self, rows: torch.Tensor, flat: torch.Tensor | None = None) -> None:
        """Append (n, C) rows and, for context codecs, their (n,) flat indices."""
        while rows.shape[0]:
            take = self.size - self._held
            if not self._held and rows.shape[0] >= self.size:
                part = flat[:take] if flat is not None else None
                self.sink(self.encoder.encode(rows[:take], part))
            else:
                self._rows.append(rows[:take].detach().to("cpu").clone())
                if flat is not None:
                    self._flat.append(flat[:take])
                self._held += min(take, rows.shape[0])
                if self._held == self.size:
                    self.finish()
            rows = rows[take:]
            flat = flat[take:] if flat is not None else None

    def finish(self) -> None:
        """Encode the rows held (the last, shorter chunk)."""
        if self._rows:
            same = len({t.dtype for t in self._rows}) == 1
            rows = torch.cat(self._rows if same else [t.float() for t in self._rows])
            flat = torch.cat(self._flat) if self._flat else None
            self.sink(self.encoder.encode(rows, flat))
        self._rows, self._flat, self._held = [], [], 0
