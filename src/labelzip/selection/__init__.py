"""Choosing a codec for the data: ``--codec auto`` (:mod:`labelzip.selection.auto`).

Sits above :mod:`labelzip.rate` (it fits candidates with rate control and
uses its LPLD budget search, :func:`~labelzip.rate.auto_prune_plan`);
``pipelines.compress``, ``pipelines.relabel_auto``, ``lm.relabel``,
``interop.convert`` and the CLI call it.
"""

from __future__ import annotations

__all__: list[str] = []
