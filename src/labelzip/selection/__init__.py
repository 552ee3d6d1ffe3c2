"""Choosing a codec for the data: ``--codec auto`` (:mod:`labelzip.selection.auto`).

Sits above :mod:`labelzip.archive` (it fits candidates with archive rate
control) and below the pipelines and the CLI that call it.
"""

from __future__ import annotations

__all__: list[str] = []
