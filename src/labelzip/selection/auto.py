"""``--codec auto``: choose the codec and the view budget by measuring small candidates.

Every candidate is a (codec, options, keep fraction) triple. Each one is fitted
by the project's rate control (:func:`labelzip.rate.fit_codec`) for
the *whole* archive, at the same all-in byte budget (real layout, LPLD prune
plan of its keep fraction, metadata and side bytes, so header and model bytes
are charged as in the final archive), but on the fit part of a small sample and
with short training schedules. It then encodes and decodes the held-out
samples, and the distortion the student sees is measured: per held-out
label, KL(teacher || decoded) at the student's temperature, a pruned view
being given the decoded label of the kept view that stands in for it
(:meth:`~labelzip.codecs.prune.PrunePlan.stored_index`), split into the
codec's error on that stand-in and the reuse mismatch; the score charges the
first in full and a share of the second, larger for more classes
(:mod:`labelzip.selection.score`).
A sampled codec (:class:`~labelzip.codecs.base.SampledCodec`) drawing at the
student's temperature is measured on the mean of its draws, the label such a
student learns (:func:`scored_on_mean`); the temperature defaults to the
student's of the label family (:meth:`AutoConfig.for_labels`).

The winner has the lowest held-out score; candidates within noise of it (a
paired difference per held-out sample under two standard errors, or under a
relative tolerance) tie, and a tie goes to the cheaper codec (the order of
:data:`VISION_CANDIDATES` / :data:`LM_CANDIDATES`, a codec's option sets counting
as one), then to the larger keep fraction. Top-k is always a candidate, so the
choice is never worse than top-k beyond noise. A candidate that cannot reach the
target is skipped with its reason.

Keeping fewer of each sample's views leaves more bits for each kept view: the
view budget is measured, not fixed: ctx-transform's own rate control keeps a
fixed floor of 16 bits per stored label, which auto lifts for its candidates.
The budgets are the configured ones (halvings), each codec's own largest
fitting budget, smaller ones by :data:`BUDGET_STEP` while the fewest views
win, and the pick's codec one :data:`BUDGET_STEP` either side of its budget
(:func:`neighbour_budgets`); a budget the user fixed is the only one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from labelzip.archive import ArchiveMetadata
from labelzip.codecs.base import Codec, SampledCodec
from labelzip.codecs.prune import PrunePlan, keep_per_group
from labelzip.codecs.registry import codec_class, create_codec, with_num_images
from labelzip.errors import ConfigError, UnreachableTargetError
from labelzip.ops.metrics import kl_divergence, top1_agreement, top2_agreement
from labelzip.rate import auto_prune_plan, fit_codec, target_header_bytes
from labelzip.selection.config import LM_MIN_CLASSES, AutoConfig, ContextOf, Target
from labelzip.selection.record import (
    AUTO_KEY,
    RECORD_ROWS,
    AutoChoice,
    Candidate,
    CandidateResult,
    RecordRows,
    format_table,
    with_auto_record,
)
from labelzip.selection.sample import GroupShape, LabelSample
from labelzip.selection.score import set_aside

__all__ = [
    "AUTO",
    "AUTO_KEY",
    "LM_CANDIDATES",
    "LM_MIN_CLASSES",
    "BUDGET_STEP",
    "MIN_STORED_TOP1",
    "NEIGHBOUR_BUDGETS",
    "VISION_CANDIDATES",
    "CONTEXT_CANDIDATES",
    "AutoChoice",
    "AutoConfig",
    "Candidate",
    "CandidateResult",
    "Target",
    "candidate_options",
    "candidates_for",
    "choose_codec",
    "choose_from_rows",
    "pick_candidate",
    "format_table",
    "neighbour_budgets",
    "resolve_codec_name",
    "run_options",
    "scored_on_mean",
    "with_auto_record",
]

# The codec name that asks for a measured choice.
AUTO = "auto"

# (codec, options) in cost order: a tie within noise goes to the earlier one.
# Codecs that need a view context are candidates only where the labels have one
# (CONTEXT_CANDIDATES, relabel): a logits file carries no view recipe.
VISION_CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("topk", {"decoder": "mr"}),
    ("topk", {"decoder": "ms"}),
    # k = 2 fixed: rate control would spend a low budget on more views at k = 1,
    # which students of few-class sets trained worse on (docs/auto.md)
    ("topk", {"decoder": "ms", "k": 2}),
    ("topk", {"decoder": "mrs"}),
    ("dense", {}),
    ("rskd", {}),
    ("vqae", {}),
)
# ctx-transform without its fixed floor of bits per stored label: the view budgets
# auto measures (1, 1/2, 1/4, ... of the views) make that trade by measurement.
CONTEXT_CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("ctx-transform", {"min_label_bits": 0.0}),
    ("vqae-ctx", {}),
)
LM_CANDIDATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("topk", {"decoder": "ms"}),
    ("topk-tail", {}),
    ("rskd", {}),
    ("vqae-sparse", {}),
    ("vqae-rs", {}),
)
# A candidate whose decoded stored labels keep the teacher's argmax less often
# than this is not eligible: a flat label (top-k "mrs" at K = 1) scores a low KL
# at T = 4 on few classes while carrying no class information.
MIN_STORED_TOP1 = 0.5
# Below the smallest configured view budget, each budget tried keeps this many times
# fewer views than the last. Students are steep there: at 100x on four 10-class
# sets, ctx-transform on 13 of 300 views kept 1-6 points more than on 9, and
# halvings (19, 9) stepped over 13 (docs/auto.md, "How the choice is made").
BUDGET_STEPS_PER_HALVING = 2
BUDGET_STEP = 2.0 ** (1 / BUDGET_STEPS_PER_HALVING)
# Once the budgets are measured, the pick's codec is measured at the budgets one
# BUDGET_STEP above and below its own (when not yet): at most this many more fits.
NEIGHBOUR_BUDGETS = 2
# Learned codecs' schedule option, capped at AutoConfig.steps for candidates.
_STEP_OPTION = {
    "vqae": "steps",
    "vqae-sparse": "steps",
    "vqae-rs": "steps",
    "vqae-ctx": "prior_steps",
    "ctx-transform": "prior_steps",
}
# Labels per encode/decode call when measuring.
_BLOCK = 4096
# Characters of a skip reason kept in the archive's record.
_MAX_REASON = 48
_BEST_REACHABLE = re.compile(r"best reachable is ([0-9.]+x)")
# Stand-ins as wide as any stored value: the provisional record of candidate fits.
# A float of six significant digits (round6) is at most this wide; a keep fraction
# (any float of at least 1e-99) at most as wide as _PLACEHOLDER_KEEP (22 characters).
_WIDE_FLOAT = 1.23457e-05
_PLACEHOLDER_KEEP = 0.00012345678901234567
_WIDE_STEPS = 1 << 20
# The skip reason of a measured candidate whose stored labels lost the argmax.
_FLAT_REASON = "flat: stored top-1 {:.2f}"
# Characters charged per record row beyond the stand-ins: a real row's all-in ratio
# can print up to 2 characters wider than the stand-in's (which is tied to its bytes).
_ROW_SLACK = 4


def resolve_codec_name(
    codec: str | None,
    options: Mapping[str, Any],
    *,
    has_target: bool,
    default: str | None,
    auto_prune: bool = False,
) -> str | None:
    """The codec a command runs: the named one, :data:`AUTO`, or ``default``.

    No name with a target means :data:`AUTO`; no name without one means
    ``default`` (a command's fixed codec, or None when it needs a name). Every
    command that offers ``--codec auto`` resolves it here.

    Raises:
        ConfigError: ``auto`` without a target, with codec options (auto
            chooses them) or with ``auto_prune`` (auto measures the view budget).
    """
    if codec is None:
        codec = AUTO if has_target else default
    if codec == AUTO and not has_target:
        raise ConfigError(
            "--codec auto chooses for a target: give --ratio or --bits-per-label"
        )
    if codec == AUTO and options:
        raise ConfigError("codec options (--opt, --k, --decoder) need a named --codec")
    if codec == AUTO and auto_prune:
        raise ConfigError(
            "--codec auto measures the view budget itself: drop --auto-prune"
        )
    return codec


def run_options(
    codec: str, options: Mapping[str, Any], config: AutoConfig
) -> dict[str, Any]:
    """``options`` plus the auto seed and device where the codec's config has them."""
    out = dict(options)
    fields = codec_class(codec).config_class.model_fields
    if "seed" in fields:
        out.setdefault("seed", config.seed)
    if "device" in fields:
        out.setdefault("device", config.device)
    return out


def candidate_options(
    cand: Candidate, target: Target, config: AutoConfig
) -> dict[str, Any]:
    """The options a candidate is fitted with: :func:`run_options`, plus the
    image count of a view-context codec (its prototypes count in its bytes)."""
    options = run_options(cand.codec, cand.options, config)
    if target.num_images is not None:
        options = with_num_images(cand.codec, options, target.num_images)
    return options


def candidates_for(
    target: Target, config: AutoConfig, *, has_views: bool
) -> list[Candidate]:
    """Every candidate that applies: codecs by class count, crossed with view budgets.

    Keep fractions that keep the same number of views per sample collapse to one.
    """
    lm = target.is_lm
    config = config.for_labels(lm)
    table = LM_CANDIDATES if lm else VISION_CANDIDATES
    if not lm and target.context is not None:
        table = table + CONTEXT_CANDIDATES
    if config.codecs is not None:
        unknown = set(config.codecs) - {c for c, _ in table}
        if unknown:
            raise ConfigError(
                f"auto candidates {sorted(unknown)} do not apply to "
                f"{target.num_classes}-class labels; choose from "
                f"{sorted({c for c, _ in table})}"
            )
        table = tuple(t for t in table if t[0] in config.codecs)
    keeps = _view_budgets(target, config, has_views)
    out: list[Candidate] = []
    for keep in keeps:
        for codec, options in table:
            opts = dict(options)
            if codec == "topk" and opts.get("decoder") == "ms":
                opts["temperature"] = config.student_temperature
            out.append(Candidate(codec, opts, keep))
    return out


def _view_budgets(target: Target, config: AutoConfig, has_views: bool) -> list[float]:
    if not has_views:
        return [1.0]
    views = GroupShape.of(target.layout.dims, target.layout.shape).views
    seen: dict[int, float] = {}
    for keep in sorted(config.keep_fractions, reverse=True):
        seen.setdefault(keep_per_group(keep, views), keep)
    return list(seen.values())


def choose_codec(
    sample: LabelSample,
    target: Target,
    config: AutoConfig,
    *,
    candidates: Sequence[Candidate] | None = None,
) -> AutoChoice:
    """Measure every candidate on ``sample`` and pick the winner (module docstring).

    Raises:
        UnreachableTargetError: no candidate reaches the target (one line).
    """
    started = time.perf_counter()
    config = config.for_labels(target.is_lm)
    groups = GroupShape.of(target.layout.dims, target.layout.shape)
    # Pruning needs whole samples with their layout positions (a drawn sample).
    has_views = (
        groups.has_views
        and groups.views > 1
        and sample.held_rows.shape[1] == groups.views
    )
    todo = (
        list(candidates)
        if candidates is not None
        else candidates_for(target, config, has_views=has_views)
    )
    if not todo:
        raise ConfigError("--codec auto has no candidate codec for these labels")

    def choice(
        winner: Candidate,
        results: Sequence[CandidateResult],
        rows: RecordRows,
        winner_steps: int | None = None,
    ) -> AutoChoice:
        return AutoChoice(
            winner=winner,
            winner_steps=winner_steps,
            results=tuple(results),
            config=config,
            fit_labels=sample.fit_labels,
            held_labels=sample.held_labels,
            reference_total=target.goal.reference_bytes(
                target.layout.num_labels, target.num_classes
            ),
            seconds=time.perf_counter() - started,
            rows=rows,
            num_classes=target.num_classes,
        )

    # View budgets beyond the configured ones are searched unless the candidates
    # or the budget (the user's --prune-keep) are fixed.
    search = candidates is None and has_views and config.search_views
    extra = _extra_budgets(todo, target, has_views) if search else []
    # Candidates are charged for the record the final archive will carry: every
    # row that may be measured (view budgets extended), with the widest numbers.
    possible = todo + [c for level in extra for c in level]
    if search:  # each codec's own fitting budget, and the pick's neighbours
        possible += _fitting_keeps(todo, target, config, _PLACEHOLDER_KEEP)
        possible += [_widest_placeholder(todo)] * NEIGHBOUR_BUDGETS
    confirm = [c for c in possible if _capped(c, config, config.confirm_steps)]
    mean = _mean_scored(possible, config.student_temperature)
    widest = _widest_choice(todo, possible, confirm, mean, target, choice)
    rows = _record_rows(widest, config.record_share * target.total_bytes)
    charged = dataclasses.replace(
        target,
        metadata=_charged_metadata(
            target.metadata, dataclasses.replace(widest, rows=rows)
        ),
    )
    # Smaller budgets go on while the pick keeps no more views than the smallest
    # budget of the grid so far (a codec's own fitting budget may be smaller).
    smallest = min(c.keep_fraction for c in todo)
    if search:  # each codec's own largest view budget that fits
        todo = todo + _fitting_keeps(todo, charged, config, None)
    results = [_measure(c, sample, charged, config) for c in todo]
    for level in extra:  # fewer views while the fewest tried so far wins
        if (
            _contenders(results)
            and pick_candidate(results, config).keep_fraction > smallest
        ):
            break
        smallest = min(c.keep_fraction for c in level)
        results += [_measure(c, sample, charged, config) for c in level]
    if search and _contenders(results):  # the pick's codec at its neighbouring budgets
        near = neighbour_budgets(pick_candidate(results, config), results, target)
        results += [_measure(c, sample, charged, config) for c in near]
    pool, results = _confirm(results, sample, charged, config)
    best = pick_candidate(pool, config)
    steps = next(r.steps for r in pool if r.candidate == best)
    return choice(best, results, rows, steps)


def _record_rows(widest: AutoChoice, budget: float) -> RecordRows:
    """The widest form of the record (:data:`RECORD_ROWS`) whose stand-in fits
    in ``budget`` bytes; the choice alone where none does."""
    for rows in RECORD_ROWS[:-1]:
        record = dataclasses.replace(widest, rows=rows).to_dict()
        if len(json.dumps(record, separators=(",", ":"))) <= budget:
            return rows
    return RECORD_ROWS[-1]


def _capped(cand: Candidate, config: AutoConfig, steps: int) -> bool:
    """Whether ``cand`` is a learned codec that ``steps`` trains longer than
    the first round's ``config.steps`` (its full schedule is the limit)."""
    key = _STEP_OPTION.get(cand.codec)
    if key is None:
        return False
    default = int(codec_class(cand.codec).config_class.model_fields[key].default)
    return min(default, steps) > min(default, config.steps)


def _confirm(
    results: list[CandidateResult],
    sample: LabelSample,
    target: Target,
    config: AutoConfig,
) -> tuple[list[CandidateResult], list[CandidateResult]]:
    """Refit the finalists with ``config.confirm_steps`` (a bounded second round).

    Short fits rank learned codecs by how fast they train as much as by what
    they reach: at a low rate an undertrained codec looks better with fewer,
    richer labels (fewer views kept) than it is. The finalists are the first
    round's winner, if learned, and the best other learned candidate among
    those the pick may choose (:func:`_contenders`; at most two fits); their
    long fits replace their short ones in the pick.

    Returns (the results the pick is made from, every row for the record).
    """
    eligible = _contenders(results)
    if not eligible:
        return results, results
    winner = pick_candidate(results, config)
    learned = sorted(
        (r for r in eligible if _capped(r.candidate, config, config.confirm_steps)),
        key=lambda r: (r.score(config.reuse_weight), _order(results, r)),
    )
    finalists = [r for r in learned if r.candidate == winner][:1]
    finalists += [r for r in learned if r.candidate != winner][:1]
    if not finalists:
        return results, results
    long = [
        _measure(r.candidate, sample, target, config, steps=config.confirm_steps)
        for r in finalists
    ]
    pool = [r for r in results if all(r is not f for f in finalists)]
    return pool + long, results + long


def choose_from_rows(
    rows: torch.Tensor, target: Target, config: AutoConfig
) -> AutoChoice:
    """:func:`choose_codec` on single labels already sampled (e.g. a reservoir).

    A seeded subset of at most ``config.max_sample_labels`` rows is split into
    fit and held-out parts. The rows carry no layout positions, so the only
    view budget is 1 (keep every label).
    """
    config = config.model_copy(update={"keep_fractions": (1.0,)})
    count = min(rows.shape[0], config.max_sample_labels(target.num_classes))
    pick = torch.randperm(
        rows.shape[0], generator=torch.Generator().manual_seed(config.seed)
    )
    sample = LabelSample.from_rows(
        rows[pick[:count].sort().values].float(), config.held_fraction, config.seed
    )
    return choose_codec(sample, target, config)


def _widest_choice(
    todo: Sequence[Candidate],
    possible: Sequence[Candidate],
    confirm: Sequence[Candidate],
    mean: Sequence[Candidate],
    target: Target,
    choice: Callable[
        [Candidate, Sequence[CandidateResult], RecordRows, int | None], AutoChoice
    ],
) -> AutoChoice:
    """A stand-in for the choice the archive will record, at least as wide.

    One row per candidate that may be measured (``possible``: the view budgets
    extended, each codec's own fitting budget as a placeholder) and per finalist
    refit, each with numbers and a skip reason as wide as any real row's, and a
    winner with the longest options and keep fraction that has its own row (the
    "winner" form of the record keeps it); rows of the candidates in ``mean``
    (:func:`scored_on_mean`) carry that mark. Candidates are fitted against the
    header this record makes, so the archive's real record never outgrows it.
    """
    wide_bytes = 10 * target.total_bytes + 7
    reference = target.goal.reference_bytes(
        target.layout.num_labels, target.num_classes
    )

    def width(result: CandidateResult) -> int:
        return len(json.dumps(result.to_dict(reference, report=False)))

    def row(cand: Candidate, steps: int | None = None) -> CandidateResult:
        # the wider of a measured row (with the flat-label reason) and one skipped
        # before it was measured (no numbers, the longest reason)
        measured = CandidateResult(
            cand,
            wide_bytes,
            _WIDE_FLOAT,
            _WIDE_FLOAT,
            stored_top2=_WIDE_FLOAT,
            skipped=_FLAT_REASON.format(1.0),
            steps=steps,
            mean_label=cand in mean,
        )
        unmeasured = CandidateResult(cand, skipped="x" * _MAX_REASON, steps=steps)
        return max(measured, unmeasured, key=width)

    by_options = sorted(possible, key=lambda c: -len(json.dumps(dict(c.options))))
    finalists = [c for c in by_options if c in confirm][:2]
    winner = _widest_placeholder(todo)
    won = _WIDE_STEPS if confirm else None
    # a winner is never skipped: its row has numbers and no reason
    won_row = CandidateResult(
        winner,
        wide_bytes,
        _WIDE_FLOAT,
        _WIDE_FLOAT,
        stored_top2=_WIDE_FLOAT,
        steps=won,
        mean_label=bool(mean),
    )
    rows = [row(c) for c in possible] + [row(c, _WIDE_STEPS) for c in finalists]
    rows.append(won_row)
    return choice(winner, rows, RECORD_ROWS[0], won)


def _widest_placeholder(todo: Sequence[Candidate]) -> Candidate:
    """The candidate with the longest options at the widest keep fraction: a
    stand-in for a row whose codec and budget are not known yet."""
    longest = max(todo, key=lambda c: len(json.dumps(dict(c.options))))
    return Candidate(longest.codec, longest.options, _PLACEHOLDER_KEEP)


def _charged_metadata(metadata: ArchiveMetadata, widest: AutoChoice) -> ArchiveMetadata:
    """``metadata`` with the widest record, padded by :data:`_ROW_SLACK` per row
    (the choice alone counts as one)."""
    charged = with_auto_record(metadata, widest)
    record = dict(charged.user[AUTO_KEY])
    record["pad"] = "x" * (_ROW_SLACK * max(1, len(record.get("candidates", ()))))
    return dataclasses.replace(charged, user={**charged.user, AUTO_KEY: record})


def _fitting_keeps(
    todo: Sequence[Candidate],
    target: Target,
    config: AutoConfig,
    placeholder: float | None,
) -> list[Candidate]:
    """Per codec, the most views per sample at which it meets the target
    (relabel's ``--auto-prune`` rule), when no tried budget is that one.

    With ``placeholder`` every codec gets that keep fraction instead (a
    stand-in as wide as any real one, for the provisional record).
    """
    top = max((c.keep_fraction for c in todo), default=1.0)
    views = GroupShape.of(target.layout.dims, target.layout.shape).views
    out: list[Candidate] = []
    for cand in [c for c in todo if c.keep_fraction == top]:
        if placeholder is not None:
            out.append(Candidate(cand.codec, cand.options, placeholder))
            continue
        try:
            plan = auto_prune_plan(
                cand.codec,
                target.archive(),
                seed=config.seed,
                options=candidate_options(cand, target, config),
            )
        except (UnreachableTargetError, ConfigError):
            continue
        if plan is None:
            continue
        tried = {
            keep_per_group(c.keep_fraction, views)
            for c in todo
            if c.codec == cand.codec and c.options == cand.options
        }
        if plan.keep_per_group not in tried:
            out.append(Candidate(cand.codec, cand.options, plan.keep_fraction))
    return out


def _extra_budgets(
    todo: Sequence[Candidate], target: Target, has_views: bool
) -> list[list[Candidate]]:
    """Ever smaller view budgets below the smallest one, down to one view per
    sample, each :data:`BUDGET_STEP` times smaller than the last.

    Each level repeats the codecs of the largest budget; auto tries a level
    only while nothing reaches the target or the smallest budget wins.
    """
    if not has_views or not todo:
        return []
    views = GroupShape.of(target.layout.dims, target.layout.shape).views
    keep = min(c.keep_fraction for c in todo)
    top = max(c.keep_fraction for c in todo)
    codecs = [c for c in todo if c.keep_fraction == top]
    levels: list[list[Candidate]] = []
    last, step = keep_per_group(keep, views), 0
    while last > 1:
        step += 1
        # BUDGET_STEP ** step, written so that whole halvings stay exact
        smaller = keep / 2.0 ** (step / BUDGET_STEPS_PER_HALVING)
        if keep_per_group(smaller, views) == last:
            continue
        last = keep_per_group(smaller, views)  # a new view count: a new level
        levels.append([Candidate(c.codec, c.options, smaller) for c in codecs])
    return levels


def neighbour_budgets(
    pick: Candidate, results: Sequence[CandidateResult], target: Target
) -> list[Candidate]:
    """The picked codec at the view budgets :data:`BUDGET_STEP` times larger and
    smaller than its own, where it was not measured at that many views.

    The configured budgets halve (1, 1/2, 1/4, 1/8 of the views), so the best
    budget of a codec may lie between two of them, unmeasured (docs/auto.md,
    "How the choice is made"). Below the smallest configured budget the levels
    already step by :data:`BUDGET_STEP`, so these are usually measured.
    """
    views = GroupShape.of(target.layout.dims, target.layout.shape).views
    tried = {
        keep_per_group(r.candidate.keep_fraction, views)
        for r in results
        if r.candidate.codec == pick.codec and r.candidate.options == pick.options
    }
    out: list[Candidate] = []
    for keep in (pick.keep_fraction * BUDGET_STEP, pick.keep_fraction / BUDGET_STEP):
        keep = min(keep, 1.0)
        count = keep_per_group(keep, views)
        if count not in tried:
            tried.add(count)
            out.append(Candidate(pick.codec, pick.options, keep))
    return out


def pick_candidate(results: Sequence[CandidateResult], config: AutoConfig) -> Candidate:
    """The lowest score wins; scores within noise of it tie (module docstring).

    Candidates whose stored labels lose the teacher's top two classes
    (:func:`~labelzip.selection.score.keeps_top_two`) compete only when no
    measured candidate keeps them.
    """
    weight = config.reuse_weight
    measured = [r for r in _contenders(results) if r.group_kl is not None]
    if not measured:
        reasons = [r.detail or r.skipped for r in results if r.skipped]
        raise UnreachableTargetError(
            f"--codec auto: none of {len(results)} candidates reaches the target; "
            f"e.g. {reasons[0] if reasons else 'no candidates'}"
        )
    scored: list[tuple[CandidateResult, torch.Tensor]] = []
    for r in measured:
        groups = r.group_score(weight)
        assert groups is not None  # measured: group_kl is set
        scored.append((r, groups))
    best, best_groups = min(
        scored, key=lambda pair: (float(pair[1].mean()), _order(results, pair[0]))
    )
    ties = [best]
    for r, groups in scored:
        diff = (groups - best_groups).double()
        se = float(diff.std()) / math.sqrt(diff.numel()) if diff.numel() > 1 else 0.0
        # noise counts up to twice the tolerance (KL can round below 0: lossless)
        tolerance = config.tie_tolerance * max(float(best_groups.mean()), 0.0)
        if float(diff.mean()) <= max(tolerance, min(2.0 * se, 2.0 * tolerance)):
            ties.append(r)
    return min(ties, key=lambda r: _order(results, r)).candidate


def _contenders(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """The measured, eligible candidates the pick chooses among: those whose
    stored labels keep the teacher's top two
    (:func:`~labelzip.selection.score.keeps_top_two`) when any does, else all."""
    measured = [r for r in results if r.kl is not None and r.skipped is None]
    aside = set_aside([r.stored_top2 for r in measured])
    return [r for r, out in zip(measured, aside, strict=True) if not out]


def _order(
    results: Sequence[CandidateResult], r: CandidateResult
) -> tuple[int, float, int]:
    """Cost order: the codec's place in the candidate table, then more views
    kept, then its options' place. A codec's option sets (top-k's decoders and
    fixed k) rank as one codec, so a tie between top-k at k = 2 on 8 views and
    plain top-k landing on k = 2 on 7 goes to the 8 views."""
    codecs = [x.candidate.codec for x in results]
    names = [x.candidate.name for x in results]
    return (
        codecs.index(r.candidate.codec),
        -r.candidate.keep_fraction,
        names.index(r.candidate.name),
    )


def _measure(
    cand: Candidate,
    sample: LabelSample,
    target: Target,
    config: AutoConfig,
    *,
    steps: int | None = None,
) -> CandidateResult:
    """Fit ``cand`` on the fit part at the target, measure it on the held-out part.

    Learned codecs train ``config.steps`` steps (``steps`` for a finalist's
    second fit), at most their full schedule.
    """
    layout = target.layout
    plan = (
        PrunePlan(layout.dims, layout.shape, cand.keep_fraction, config.seed)
        if cand.keep_fraction < 1.0
        else None
    )
    num_classes = target.num_classes
    fit_rows = sample.fit_rows.reshape(-1, num_classes)
    fit_flat = sample.fit_flat.reshape(-1)
    used = _fit_mask(sample, plan)
    if used is not None:
        fit_rows, fit_flat = fit_rows[used], fit_flat[used]
    if fit_rows.shape[0] == 0:  # the view split at a budget of very few views
        return CandidateResult(
            cand,
            skipped="no view left to fit on",
            detail="every kept view of the sample is a held-out (scored) view, "
            "so none is left to fit on without scoring its own fit",
        )
    options = candidate_options(cand, target, config)
    needs_context = codec_class(cand.codec).needs_context
    if needs_context and target.context is None:
        return CandidateResult(cand, skipped="needs a view context")
    context = target.context if needs_context else None
    step_key = _STEP_OPTION.get(cand.codec)
    if step_key is not None:
        default = codec_class(cand.codec).config_class.model_fields[step_key].default
        options[step_key] = min(int(default), steps or config.steps)

    def source() -> Iterator[torch.Tensor]:
        for start in range(0, fit_rows.shape[0], _BLOCK):
            yield fit_rows[start : start + _BLOCK]

    started = time.perf_counter()
    try:
        codec = fit_codec(
            cand.codec,
            source,
            options,
            target=target.archive(plan),
            context=None if context is None else context(fit_flat),
        )
    except (UnreachableTargetError, ConfigError) as exc:
        return CandidateResult(
            cand, skipped=_short_reason(exc), detail=_full_reason(exc), steps=steps
        )
    seconds = time.perf_counter() - started
    held = _held_out(codec, sample, plan, config.student_temperature, context)
    num_stored = plan.num_kept if plan is not None else layout.num_labels
    header = target_header_bytes(codec, None, target.archive(plan))
    total = (
        header
        + codec.model_bytes()
        + target.side_bytes
        + math.ceil(held.payload_bytes / held.encoded * num_stored)
    )
    own = held.stored_top1
    return CandidateResult(
        cand,
        total_bytes=total,
        kl=float(held.group_kl.mean()),
        top1=held.top1,
        stored_top1=own,
        stored_top2=held.stored_top2,
        group_kl=held.group_kl,
        group_source_kl=held.group_source_kl,
        stored_views=None if plan is None else plan.keep_per_group,
        fit_seconds=seconds,
        skipped=None if own >= MIN_STORED_TOP1 else _FLAT_REASON.format(own),
        steps=steps,
        mean_label=held.mean_label,
        num_classes=num_classes,
    )


def _fit_mask(sample: LabelSample, plan: PrunePlan | None) -> torch.Tensor | None:
    """Which fit-part labels a candidate is fitted on (None: all of them).

    The stored ones (kept by ``plan``); with the view split, none of the scored
    views themselves. A kept view standing in for a scored (pruned) view is
    fitted on, as the archive fits its codec on every label it stores: a
    codec with one prototype per image would otherwise have few or none of an
    image's views left to fit at small view budgets, and score far below the
    archive it would write.
    """
    flat = sample.fit_flat.reshape(-1)
    used = None if plan is None else plan.is_kept(flat)
    if sample.held_views is None:
        return used
    free = ~torch.isin(flat, sample.held_flat[sample.held_views])
    return free if used is None else used & free


@dataclasses.dataclass(frozen=True)
class _HeldOut:
    """A fitted candidate on the held-out sample (:func:`_held_out`)."""

    group_kl: torch.Tensor  # per held-out sample: KL against each label's teacher
    group_source_kl: torch.Tensor  # the same against its stand-in's teacher
    top1: float  # every scored label against the decoded label it uses
    stored_top1: float  # the encoded labels against their own decoding
    stored_top2: float  # share of encoded labels keeping their top two classes
    payload_bytes: int
    encoded: int  # labels encoded (payload_bytes is theirs)
    mean_label: bool  # scored on the mean of a sampled codec's draws


def scored_on_mean(codec: Codec, temperature: float) -> bool:
    """Whether auto scores ``codec`` (fitted or not) on the mean of its draws: a
    sampled codec drawing at the student's temperature, whose mean label is
    what such a student learns (docs/auto.md, "Sampled labels")."""
    return isinstance(codec, SampledCodec) and codec.sampling_temperature == temperature


def _mean_scored(
    candidates: Sequence[Candidate], temperature: float
) -> list[Candidate]:
    """The candidates :func:`scored_on_mean` will hold (from their options)."""
    return [
        c
        for c in candidates
        if hasattr(codec_class(c.codec), "expected_logits")
        and scored_on_mean(create_codec(c.codec, **c.options), temperature)
    ]


def _held_out(
    codec: Codec,
    sample: LabelSample,
    plan: PrunePlan | None,
    temperature: float,
    context: ContextOf | None = None,
) -> _HeldOut:
    """Encode the held-out labels a candidate stores and score every held-out
    label against the decoded label it uses.

    With a plan only kept labels are encoded; every scored label is compared
    against the decoded label it uses (its own or its stand-in's). ``context``
    gives the view context of flat indices, for context codecs.
    """
    groups, views, num_classes = sample.held_rows.shape
    teacher = sample.held_rows.reshape(-1, num_classes)
    flat = sample.held_flat.reshape(-1)
    if plan is None:
        source_pos = torch.arange(flat.numel())
    else:
        source_flat = plan.kept_flat(plan.stored_index(flat)).numpy()
        order = np.argsort(flat.numpy(), kind="stable")
        sorted_flat = flat.numpy()[order]
        source_pos = torch.from_numpy(order[np.searchsorted(sorted_flat, source_flat)])
    if sample.held_views is not None:  # the view split: score the held-out views
        scored = sample.held_views.reshape(-1)
        teacher, source_pos = teacher[scored], source_pos[scored]
        views = int(sample.held_views[0].sum())
    full = sample.held_rows.reshape(-1, num_classes)
    stored = torch.unique(source_pos)  # increasing positions of the labels encoded
    # a student at T learns the mean of a sampled codec's draws (docs/auto.md):
    # its labels are encoded for their bytes only, and scored by that mean
    mean_label = scored_on_mean(codec, temperature)
    decoded_parts: list[torch.Tensor] = []
    payload = 0
    for start in range(0, stored.numel(), _BLOCK):
        pos = stored[start : start + _BLOCK]
        ctx = None if context is None else context(flat[pos])
        block = codec.encode_in_context(full[pos], ctx)
        payload += block.nbytes
        if mean_label:
            assert isinstance(codec, SampledCodec)
            decoded_parts.append(codec.expected_logits(full[pos]).float())
        else:
            decoded_parts.append(codec.decode_in_context(block, ctx, "cpu").float())
    decoded = torch.cat(decoded_parts)
    used = decoded[torch.searchsorted(stored, source_pos)]
    kl = kl_divergence(teacher, used, temperature=temperature)
    if mean_label:  # the mean of RS-KD's draws is the teacher: 0 up to rounding
        kl = kl.clamp_min(0.0)
    kl = kl.reshape(groups, views)
    source_kl = (  # a label's stand-in is itself unless pruned
        kl
        if plan is None
        else kl_divergence(full[source_pos], used, temperature=temperature)
    )
    return _HeldOut(
        group_kl=kl.mean(dim=1),
        group_source_kl=source_kl.reshape(groups, views).mean(dim=1),
        top1=top1_agreement(teacher, used),
        stored_top1=top1_agreement(full[stored], decoded),
        stored_top2=top2_agreement(full[stored], decoded),
        payload_bytes=payload,
        encoded=int(stored.numel()),
        mean_label=mean_label,
    )


def _full_reason(exc: Exception) -> str:
    """The first line of a skip reason, without its generic advice."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.removesuffix("; choose a lower ratio or another codec")


def _short_reason(exc: Exception) -> str:
    """A skip reason of at most :data:`_MAX_REASON` characters for the archive."""
    if isinstance(exc, UnreachableTargetError):
        best = _BEST_REACHABLE.search(str(exc))
        return f"unreachable (best {best.group(1)} all-in)" if best else "unreachable"
    text = _full_reason(exc)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
