"""Choosing a codec for the data: ``--codec auto`` (:mod:`labelzip.selection.auto`).

Sits above :mod:`labelzip.archive` (it fits candidates with archive rate
control) and uses the LPLD budget search of :mod:`labelzip.pipelines.ratecontrol`;
``pipelines.compress``, ``pipelines.relabel_auto``, ``lm.relabel``,
``interop.convert`` and the CLI call it.
"""

from __future__ import annotations

__all__: list[str] = []
