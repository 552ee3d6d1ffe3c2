"""Rate control: every decision that sizes an archive for a target lives here.

* :class:`RateGoal` (:mod:`.target`): the one target model, an all-in ratio vs
  a dense reference or bits per label; :class:`TargetFields` gives a config the
  two optional fields and their rule.
* :class:`ArchiveTarget` (:mod:`.budget`): a goal for one archive (layout,
  classes, chunking, pruning, side bytes).
* :func:`fit_codec` (:mod:`.fit`): THE function that fits a codec, to a fixed
  configuration or to a target; :func:`configure_codec` makes the same choice
  without the fit.
* :func:`estimate_header_bytes` (:mod:`.header`), :func:`auto_prune_plan`
  (:mod:`.prune`), :func:`rate_note` (:mod:`.note`) and the bisection the
  codecs' size models share (:mod:`.search`).

Layering: this package sits above :mod:`labelzip.codecs` and
:mod:`labelzip.archive` (it calls the codecs' ``for_target`` size models and
builds headers); pipelines, selection, interop, lm, bench and the CLI use it.
The codecs import only :mod:`labelzip.rate.search`, which imports no codec.
"""

from labelzip.rate.budget import ArchiveTarget
from labelzip.rate.fit import configure_codec, fit_codec
from labelzip.rate.header import (
    UNFITTED_MODEL_ALLOWANCE,
    estimate_header_bytes,
    target_header_bytes,
)
from labelzip.rate.note import RATE_TOLERANCE, rate_note
from labelzip.rate.prune import SIDE_ENTRY_BYTES, auto_prune_plan, side_entry_bytes
from labelzip.rate.search import bisect_largest, largest_fitting
from labelzip.rate.target import RateGoal, RateValue, TargetFields, check_rate_value

__all__ = [
    "RATE_TOLERANCE",
    "SIDE_ENTRY_BYTES",
    "UNFITTED_MODEL_ALLOWANCE",
    "ArchiveTarget",
    "RateGoal",
    "RateValue",
    "TargetFields",
    "auto_prune_plan",
    "bisect_largest",
    "check_rate_value",
    "configure_codec",
    "estimate_header_bytes",
    "fit_codec",
    "largest_fitting",
    "rate_note",
    "side_entry_bytes",
    "target_header_bytes",
]
