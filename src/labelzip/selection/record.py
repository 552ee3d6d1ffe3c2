"""What ``--codec auto`` measured: candidates, their results, and the archive record.

The record is JSON under the user-metadata key :data:`AUTO_KEY`; it holds no
timing, so the archive's bytes depend only on the inputs and the seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from labelzip.archive import ArchiveMetadata
from labelzip.errors import ConfigError
from labelzip.selection.config import AutoConfig
from labelzip.selection.score import (
    FREE_ERROR,
    MIN_STORED_TOP2,
    REUSE_VIEWS,
    free_error_credit,
    reuse_score,
    reuse_views,
    set_aside,
)

__all__ = [
    "AUTO_KEY",
    "RECORD_ROWS",
    "AutoChoice",
    "RecordRows",
    "Candidate",
    "CandidateResult",
    "format_table",
    "with_auto_record",
]

# The archive's user-metadata entry holding the choice and every candidate's numbers.
AUTO_KEY = "auto"
# How much of the candidate table the archive's record keeps, widest first: every
# row, the winner's row only, or none (the choice alone; small archives, where
# even one row would take a noticeable share of the bytes).
RecordRows = Literal["all", "winner", "none"]
RECORD_ROWS: tuple[RecordRows, ...] = get_args(RecordRows)


@dataclass(frozen=True)
class Candidate:
    """A codec, its fixed options, and the share of each sample's views stored."""

    codec: str
    options: Mapping[str, Any]
    keep_fraction: float = 1.0

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.codec}({opts})" if opts else self.codec


@dataclass(frozen=True)
class CandidateResult:
    """What one candidate measured, or why it was skipped.

    Attributes:
        total_bytes: estimated all-in bytes of the full archive.
        kl: mean held-out KL(teacher || decoded) at the auto temperature, a
            pruned view's against the decoded label of its stand-in.
        top1: held-out top-1 agreement.
        stored_top1: top-1 agreement of the encoded labels' decoding with their
            own teacher labels (the codec alone; below
            :data:`~labelzip.selection.auto.MIN_STORED_TOP1` not eligible).
        stored_top2: the share of the encoded labels whose decoding keeps their
            teacher's two leading classes (below
            :data:`~labelzip.selection.score.MIN_STORED_TOP2` set aside while
            another candidate keeps them).
        group_kl: (held-out samples,) mean KL per held-out sample.
        group_source_kl: (held-out samples,) the same with each label's
            teacher replaced by its stand-in's (its own for a stored view): the
            codec's error alone, without the reuse mismatch.
        stored_views: views stored per sample (m; None unpruned, where a
            label's stand-in is itself and the reuse mismatch is 0).
        fit_seconds: wall time of the candidate's fit (reported, not stored).
        steps: the training steps of a finalist's second, longer fit (None
            for the first round's fits at the auto steps).
        mean_label: measured on the mean of a sampled codec's draws (its
            expected label) instead of one draw per label.
        num_classes: classes per label (the reuse charge grows with them,
            :func:`~labelzip.selection.score.reuse_views`).
    """

    candidate: Candidate
    total_bytes: int | None = None
    kl: float | None = None
    top1: float | None = None
    stored_top1: float | None = None
    stored_top2: float | None = None
    group_kl: torch.Tensor | None = None
    group_source_kl: torch.Tensor | None = None
    stored_views: int | None = None
    fit_seconds: float = 0.0
    skipped: str | None = None
    detail: str | None = None
    steps: int | None = None
    mean_label: bool = False
    num_classes: int | None = None

    def group_score(self, weight: float | None) -> torch.Tensor | None:
        """Per held-out sample :func:`~labelzip.selection.score.reuse_score`
        (``group_kl`` itself at weight 1), less the candidate's
        :func:`~labelzip.selection.score.free_error_credit`."""
        if self.group_kl is None or self.group_source_kl is None:
            return self.group_kl
        charged = reuse_score(
            self.group_kl,
            self.group_source_kl,
            self.stored_views,
            weight,
            self.num_classes,
        )
        return charged - free_error_credit(self.group_source_kl)

    def score(self, weight: float | None) -> float | None:
        """The mean of :meth:`group_score`: what the pick ranks by (``kl``
        where no per-sample numbers were kept)."""
        groups = self.group_score(weight)
        return self.kl if groups is None else float(groups.mean())

    def to_dict(
        self,
        reference_total: int,
        *,
        report: bool,
        reuse_weight: float | None = None,
    ) -> dict[str, Any]:
        """The candidate's row: short skip reason in the archive; the command's
        report adds the fit seconds and the full reason."""
        out: dict[str, Any] = {
            "codec": self.candidate.codec,
            "options": dict(self.candidate.options),
            "keep_fraction": self.candidate.keep_fraction,
            "bytes": self.total_bytes,
            "ratio": round6(reference_total / self.total_bytes)
            if self.total_bytes
            else None,
            "kl": round6(self.kl),
            "score": round6(self.score(reuse_weight)),
            "top1": round6(self.top1),
            "top2": round6(self.stored_top2),
            "skipped": self.skipped,
        }
        if self.steps is not None:
            out["steps"] = self.steps
        if self.mean_label:
            out["mean"] = True
        if report:
            out["fit_seconds"] = round(self.fit_seconds, 2)
            if self.detail is not None:
                out["skipped"] = self.detail
        return out


@dataclass(frozen=True)
class AutoChoice:
    """The chosen candidate and every candidate's measurements."""

    winner: Candidate
    results: tuple[CandidateResult, ...]
    config: AutoConfig
    fit_labels: int
    held_labels: int
    reference_total: int
    seconds: float
    rows: RecordRows = "all"  # the rows the archive's record keeps
    winner_steps: int | None = None  # set when the winner is a refitted finalist
    num_classes: int | None = None  # of the labels (the default reuse charge)

    def to_dict(self, *, report: bool = False) -> dict[str, Any]:
        """The JSON record: for the archive (deterministic: no seconds, short
        skip reasons; the rows :attr:`rows` names, with the number of the
        others as ``omitted``) or, with ``report``, for the command's output
        (every row)."""
        if self.rows not in RECORD_ROWS:
            raise ValueError(f"rows must be one of {RECORD_ROWS}, not {self.rows!r}")
        chosen = {
            "codec": self.winner.codec,
            "options": dict(self.winner.options),
            "keep_fraction": self.winner.keep_fraction,
            **({} if self.winner_steps is None else {"steps": self.winner_steps}),
        }
        if self.rows == "none" and not report:
            return {"chosen": chosen, "omitted": len(self.results)}
        out: dict[str, Any] = {
            "chosen": chosen,
            "temperature": self.config.student_temperature,
            "reuse_weight": self.config.reuse_weight,
            "reuse_views": reuse_views(self.num_classes),
            "free_error": FREE_ERROR,
            "fit_labels": self.fit_labels,
            "held_labels": self.held_labels,
            "steps": self.config.steps,
            "seed": self.config.seed,
            "candidates": [
                r.to_dict(
                    self.reference_total,
                    report=report,
                    reuse_weight=self.config.reuse_weight,
                )
                for r in self.results
                if report
                or self.rows == "all"
                or (r.candidate == self.winner and r.steps == self.winner_steps)
            ],
        }
        if self.rows == "winner" and not report:
            out["omitted"] = len(self.results) - 1
        if report:
            out["seconds"] = round(self.seconds, 2)
        return out

    def table(self) -> list[str]:
        """The candidates as text lines (``compress`` prints them)."""
        return format_table(self.to_dict(report=True))


def format_table(record: Mapping[str, Any]) -> list[str]:
    """Text lines of an auto record (from :meth:`AutoChoice.to_dict` or an archive)."""
    chosen = record["chosen"]
    win = Candidate(chosen["codec"], chosen["options"], chosen["keep_fraction"])
    if "candidates" not in record:  # the choice alone (a small archive)
        return [
            f"auto chose {win.name}, keep {win.keep_fraction:g} of each sample's "
            f"views ({record['omitted']} candidates measured; their numbers are not "
            "stored, as they would take a noticeable share of this small archive)"
        ]
    won = (win.name, win.keep_fraction, chosen.get("steps"))
    refit = {row["steps"] for row in record["candidates"] if "steps" in row}
    finalists = f"; finalists refit at {max(refit)} steps" if refit else ""
    weight = record.get("reuse_weight", 1.0)
    # rows whose stored labels lost the teacher's top two, while another kept them
    rows = record["candidates"]
    eligible = [
        i for i, r in enumerate(rows) if r["kl"] is not None and not r["skipped"]
    ]
    aside = set_aside([rows[i].get("top2") for i in eligible])
    aside_at = {i for i, out in zip(eligible, aside, strict=True) if out}
    # rows left out of a small archive's record may have pruned: charge as usual
    pruned = bool(record.get("omitted")) or any(r["keep_fraction"] < 1 for r in rows)
    if weight == 1.0:
        scored = "KL"
    elif not pruned:  # LM tokens: no views, so the score is the KL
        scored = "score = KL, no view pruned,"
    else:
        views = record.get("reuse_views", REUSE_VIEWS)  # older records: always 2
        share = f"{views:g}/views stored" if weight is None else f"{weight:g}"
        scored = f"score: reuse mismatch x {share}"
    if record.get("free_error"):  # older records: every error charged
        scored = (
            f"{scored.rstrip(',')}, codec error up to {record['free_error']:g} free,"
        )
    shown = weight != 1.0 or record.get("free_error")  # else the score is the KL
    lines = [
        f"auto chose {win.name}, keep {win.keep_fraction:g} of each sample's views "
        f"(held-out {scored} at T={record['temperature']:g}; "
        f"{record['fit_labels']} fit / "
        f"{record['held_labels']} held-out labels, {record['steps']} steps{finalists})"
    ]
    for at, row in enumerate(rows):
        name = Candidate(row["codec"], row["options"], row["keep_fraction"]).name
        mark = "*" if (name, row["keep_fraction"], row.get("steps")) == won else " "
        if "steps" in row:
            name = f"{name} [{row['steps']} steps]"
        head = f" {mark} {name:<34} keep {row['keep_fraction']:<6g}"
        secs = f" {row['fit_seconds']:7.1f}s" if "fit_seconds" in row else ""
        if row["skipped"] is not None and row["kl"] is None:
            lines.append(f"{head} skipped: {row['skipped']}")
            continue
        flag = f"  not eligible ({row['skipped']})" if row["skipped"] else ""
        if at in aside_at:
            flag = f"  set aside (stored top-2 {row['top2']:.3f} < {MIN_STORED_TOP2:g})"
        score = f"  score {row['score']:.5f}" if shown else ""
        top2 = "" if row.get("top2") is None else f"  stored top-2 {row['top2']:.2f}"
        mean = "  (mean of draws)" if row.get("mean") else ""
        lines.append(
            f"{head} {row['ratio']:7.2f}x{score}  KL {row['kl']:.5f}  top-1 "
            f"{row['top1']:.4f}{top2}{secs}{mean}{flag}"
        )
    if record.get("omitted"):
        lines.append(
            f"   ({record['omitted']} other candidates measured; their rows are not "
            "stored, as they would take a noticeable share of this small archive)"
        )
    return lines


def with_auto_record(metadata: ArchiveMetadata, choice: AutoChoice) -> ArchiveMetadata:
    """``metadata`` plus the choice under :data:`AUTO_KEY` of its user entries.

    Raises:
        ConfigError: the user metadata already has that key (it is reserved).
    """
    if AUTO_KEY in metadata.user:
        raise ConfigError(
            f"user metadata key {AUTO_KEY!r} is reserved for the --codec auto record"
        )
    return ArchiveMetadata(
        class_names=metadata.class_names,
        dataset_fingerprint=metadata.dataset_fingerprint,
        teacher=metadata.teacher,
        user={**dict(metadata.user), AUTO_KEY: choice.to_dict()},
    )


def round6(value: float | None) -> float | None:
    """Six significant digits: a stable, compact number for the record."""
    return None if value is None else float(f"{value:.6g}")
