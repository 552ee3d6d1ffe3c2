"""The contract every imported label-store format implements.

A format (``sre2l``, ``lpqld``, ``fkd``, ``distillkit``, ...) turns a folder of
another framework's label files into a stream of :class:`StoreRecord` (one
file, row group or tar member at a time, in the files' own label order) and
turns an archive back into that folder. The drivers in
:mod:`labelzip.interop.convert` do the rest: codec choice and fitting, the
archive writer, atomic output folders. Nothing here holds more than one file's
labels in memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from labelzip.archive.format import Layout
from labelzip.errors import InputError

__all__ = [
    "INTEROP_KEY",
    "ExportOptions",
    "ImportOptions",
    "ImportedStore",
    "LabelRows",
    "LabelSource",
    "StoreFormat",
    "StoreRecord",
]

# metadata.user key of the JSON document an import records (ImportedStore.describe()).
INTEROP_KEY = "interop"

LabelKind = Literal["dense", "topk"]


@dataclass(frozen=True)
class ImportOptions:
    """What the files themselves cannot say, given on the command line.

    Attributes:
        sampler_seed: seed of the ``RandomSampler`` that ordered the images
            (SRe2L / CDA files do not name their images).
        batch_size: images per batch of that sampler.
        num_classes: C, for formats whose files hold only top-k ids (FKD).
        temperature: the temperature probabilities were taken at, where the
            files hold probabilities and do not say it (FKD ``--temp``).
        extra: format-specific options (``--opt KEY=VALUE``).
    """

    sampler_seed: int | None = None
    batch_size: int | None = None
    num_classes: int | None = None
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportOptions:
    """How an export writes its folder.

    Attributes:
        extra: format-specific options (``--opt KEY=VALUE``).
    """

    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreRecord:
    """The labels of one stored file (or row group, or tar member), in label order.

    Exactly one of ``dense`` and (``topk_values``, ``topk_ids``) is set.

    Attributes:
        source: the file's path relative to the store (``epoch_3/batch_7.tar``),
            plus ``:member`` inside a container; errors name it.
        dense: (B, C) values exactly as stored (dtype kept).
        topk_values: (B, K) kept values as stored (dtype kept, stored order).
        topk_ids: (B, K) int64 class ids in the stored order.
        side: per-label tensors, first dimension B (``coords``, ``flip``,
            ``mix_index``, ...), appended to the archive's ``side/<name>``.
        file_side: per-file tensors whose first dimension is 1 (``mix_lam``,
            ``mix_bbox``, row counts ...), appended as ``side/<name>``: one row
            per record.
        blobs: tensors appended as they are (any number of rows), e.g. the
            bytes of a side file kept verbatim; usually only on one record.
    """

    source: str
    dense: torch.Tensor | None = None
    topk_values: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    side: dict[str, torch.Tensor] = field(default_factory=dict)
    file_side: dict[str, torch.Tensor] = field(default_factory=dict)
    blobs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """B, the labels this record holds."""
        held = self.dense if self.dense is not None else self.topk_values
        if held is None:
            raise InputError(f"{self.source} holds no labels")
        return int(held.shape[0])


class ImportedStore(ABC):
    """An opened label store: its description, then its records in label order.

    Subclasses fill the attributes in ``open`` (a scan that reads what it must
    to know the variant, C and the label count) and stream in :meth:`records`.

    Attributes:
        format: registry name of the format (``sre2l``, ``lpqld``, ...).
        variant: the detected variant (``mix-cutmix``, ``randaugment``, ...).
        kind: ``dense`` (every class stored) or ``topk`` (kept values + ids).
        value_dtype: dtype of the stored values (kept on a lossless import).
        k: kept entries per label (``topk``), else ``None``.
        num_classes: C.
        num_labels: labels in all files.
        value_convention: ``logits``, ``probabilities@T`` (T a number or
            ``?``) or ``log-probs``.
        layout: named label dims (row-major = label order).
    """

    format: str
    variant: str
    kind: LabelKind
    value_dtype: torch.dtype
    k: int | None
    num_classes: int
    num_labels: int
    value_convention: str
    layout: Layout

    @abstractmethod
    def records(self) -> Iterator[StoreRecord]:
        """Every file's labels and side information, one file at a time, in order."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON recorded as ``metadata.user["interop"]``: all that export needs
        besides the labels and side tensors (format, variant, convention, file
        structure, sampler seed / batch size, element types)."""

    def to_dense(self, record: StoreRecord) -> torch.Tensor:
        """(B, C) finite float32 logits of a record, with the format's own reader
        semantics: what a lossy codec is fitted on and encodes.

        The default suits stores of logits: dense values as float32, or top-k
        logits with the missing classes at a finite floor below the smallest
        kept one (``softmax`` over them is the kept-only distribution up to
        ``exp(-30)``).
        """
        if record.dense is not None:
            return record.dense.float()
        assert record.topk_values is not None and record.topk_ids is not None
        values = record.topk_values.float()
        floor = values.min(dim=1, keepdim=True).values - 30.0
        out = floor.expand(values.shape[0], self.num_classes).contiguous()
        return out.scatter_(1, record.topk_ids.long(), values)


@dataclass
class LabelRows:
    """Labels an export gets from an archive, in the stored form when it is exact.

    Exactly one of ``dense`` and (``values``, ``ids``) is set. After a lossless
    import they are the stored values bit for bit (dense in the stored dtype,
    top-k in the stored id order and value dtype); after a lossy one ``dense``
    holds the decoded float32 logits and ``exact`` is False.
    """

    dense: torch.Tensor | None = None
    values: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    exact: bool = True


class LabelSource(ABC):
    """An imported archive, read in label order for an export (one file at a time).

    Attributes:
        interop: the ``metadata.user["interop"]`` document of the import.
        num_classes: C.
        num_labels: labels in the archive.
    """

    interop: dict[str, Any]
    num_classes: int
    num_labels: int

    @abstractmethod
    def take(self, count: int) -> LabelRows:
        """The next ``count`` labels (label order, continuing the last call)."""

    @abstractmethod
    def side(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of side tensor ``name`` (read from disk, not cached)."""

    @abstractmethod
    def has_side(self, name: str) -> bool:
        """Whether the archive holds side tensor ``name``."""

    @abstractmethod
    def side_rows(self, name: str) -> int:
        """Rows (first dimension) of side tensor ``name``."""


class StoreFormat(ABC):
    """One framework's on-disk label format: open (import) and write (export).

    Attributes:
        name: registry name (``sre2l``).
        aliases: other names accepted on the command line (``("cda",)``).
        summary: one line for ``--help``.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""

    @abstractmethod
    def open(self, path: Path, options: ImportOptions) -> ImportedStore:
        """Scan the store at ``path`` (checking layout, variant, C, counts).

        Raises:
            InputError: naming the file, for anything the format does not allow.
        """

    @abstractmethod
    def export(self, source: LabelSource, dest: Path, options: ExportOptions) -> None:
        """Write the framework's own layout into ``dest``, an empty new folder
        (the driver renames it into place only when this returns)."""
