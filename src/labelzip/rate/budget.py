"""The archive a rate target is met for: the goal plus what shares its bytes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from labelzip.archive.format import DEFAULT_CHUNK_SIZE, ArchiveMetadata, Layout
from labelzip.codecs.prune import PrunePlan
from labelzip.rate.target import RateGoal

__all__ = ["ArchiveTarget"]


@dataclass(frozen=True)
class ArchiveTarget:
    """A :class:`~labelzip.rate.target.RateGoal` for one archive.

    The goal counts every represented label of ``layout``; the header (from
    ``chunk_size``, ``prune``, ``metadata``) and ``side_bytes`` come off the
    budget first, and with ``prune`` the codec gets what is left for the kept
    labels only.

    Attributes:
        header_bytes: the header's size when known; ``None`` estimates it
            (:func:`~labelzip.rate.header.estimate_header_bytes`). ``0`` sizes
            the codec alone (codec tests, benchmarks of a bare codec).
    """

    goal: RateGoal
    layout: Layout
    num_classes: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prune: PrunePlan | None = None
    metadata: ArchiveMetadata | None = None
    side_bytes: int = 0
    header_bytes: int | None = None

    @classmethod
    def of(
        cls,
        goal: RateGoal | None,
        layout: Layout,
        num_classes: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **fields: Any,
    ) -> ArchiveTarget | None:
        """The target of ``goal`` for this archive, or ``None`` without a goal
        (a fixed configuration): the one fixed-or-targeted branch of a command."""
        if goal is None:
            return None
        return cls(goal, layout, num_classes, chunk_size, **fields)

    @classmethod
    def flat(
        cls,
        num_labels: int,
        num_classes: int,
        goal: RateGoal | None = None,
        **fields: Any,
    ) -> ArchiveTarget:
        """A target for ``num_labels`` labels in one ``sample`` dimension.

        ``goal`` defaults to one built from ``ratio`` / ``bits_per_label`` /
        ``reference`` among ``fields``.
        """
        if goal is None:
            made = RateGoal.of(
                fields.pop("ratio", None),
                fields.pop("bits_per_label", None),
                fields.pop("reference", "fp16"),
            )
            if made is None:
                made = RateGoal.parse({})  # raises: no target given
            goal = made
        layout = Layout(("sample",), (num_labels,))
        return cls(goal, layout, num_classes, **fields)

    @property
    def num_labels(self) -> int:
        """Represented labels (pruned ones included)."""
        return self.layout.num_labels

    @property
    def num_stored(self) -> int:
        """Labels the codec encodes (the kept ones under ``prune``)."""
        return self.prune.num_kept if self.prune is not None else self.num_labels

    @property
    def total_bytes(self) -> int:
        """The all-in byte budget of the whole archive."""
        return self.goal.total_bytes(self.num_labels, self.num_classes)

    @property
    def reference_bytes(self) -> int:
        return self.goal.reference_bytes(self.num_labels, self.num_classes)

    def replace(self, **changes: Any) -> ArchiveTarget:
        """A copy with ``changes`` (dataclass fields)."""
        return dataclasses.replace(self, **changes)
