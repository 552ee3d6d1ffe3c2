"""The settings of ``--codec auto`` and the archive it chooses for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from labelzip.archive import DEFAULT_CHUNK_SIZE, ArchiveMetadata, Layout
from labelzip.codecs.base import LabelContext
from labelzip.codecs.prune import PrunePlan
from labelzip.rate import ArchiveTarget, RateGoal

__all__ = [
    "DEFAULT_SAMPLE_LABELS",
    "LM_MIN_CLASSES",
    "LM_STUDENT_TEMPERATURE",
    "SAMPLE_VALUES",
    "VISION_STUDENT_TEMPERATURE",
    "AutoConfig",
    "ContextOf",
    "Target",
]

ContextOf = Callable[[torch.Tensor], LabelContext]
"""The view context of (N,) flat label indices."""

# Default selection sample: 8192 labels, or this many logit values when more.
DEFAULT_SAMPLE_LABELS = 8192
SAMPLE_VALUES = 8 << 20
# More classes than this are an LM vocabulary (the LM candidates and temperature).
LM_MIN_CLASSES = 8192
# The KD temperature of labelzip's students, which auto measures at by default:
# the vision student's (pipelines.train_student.StudentConfig) and the LM
# student's (lm.train.TrainLMConfig); a test keeps them equal.
VISION_STUDENT_TEMPERATURE = 4.0
LM_STUDENT_TEMPERATURE = 1.0


class AutoConfig(BaseModel):
    """How ``--codec auto`` measures its candidates.

    The sample bounds memory (``sample_labels`` labels, at most
    ``sample_bytes`` of float32) and, with ``steps``, the fit time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    temperature: float | None = Field(
        default=None,
        gt=0.0,
        le=1000.0,
        description="student's KD temperature; default: the LM student's (1) for "
        "LM vocabularies, the vision student's (4) for class labels",
    )
    sample_labels: int | None = Field(
        default=None,
        ge=4,
        le=1 << 22,
        description="labels in the selection sample; default 8192, more for few "
        "classes (about 8M values)",
    )
    sample_bytes: int = Field(
        default=512 << 20, ge=1 << 20, description="float32 bytes of the sample at most"
    )
    held_fraction: float = Field(
        default=0.25, gt=0.0, lt=1.0, description="share of the samples held out"
    )
    steps: int = Field(
        default=300,
        ge=1,
        le=1 << 20,
        description="training steps of learned candidates",
    )
    confirm_steps: int = Field(
        default=1000,
        ge=0,
        le=1 << 20,
        description="training steps of the second fit of the finalists (the "
        "winner and the best other learned candidate); at most each codec's full "
        "schedule; <= steps: no second fit",
    )
    keep_fractions: tuple[float, ...] = Field(
        default=(1.0, 0.5, 0.25, 0.125),
        min_length=1,
        description="view budgets tried where the layout has views",
    )
    search_views: bool = Field(
        default=True,
        description="also measure view budgets beyond keep_fractions (each "
        "codec's own largest fitting budget, smaller budgets while the fewest "
        "views win, the pick's neighbouring budgets); False when the user fixed "
        "the budget (--prune-keep)",
    )
    record_share: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="most of the target bytes the stored auto record may take: "
        "every candidate's row, else the winner's row only, else the choice alone",
    )
    reuse_weight: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="share of a pruned view's reuse mismatch charged to its score "
        "(a pruned view scores its stand-in's codec error plus this share of the "
        "extra KL of reusing that label); default min(1, 2/m) for a candidate "
        "storing m views per sample, times C/10 above C = 10 classes "
        "(labelzip.selection.score.reuse_share)",
    )
    tie_tolerance: float = Field(
        default=0.01, ge=0.0, le=1.0, description="relative KL gap counted as a tie"
    )
    codecs: tuple[str, ...] | None = Field(
        default=None, description="restrict candidates to these codec names"
    )
    seed: int = Field(
        default=0, ge=0, lt=1 << 62, description="seed of sample and fits"
    )
    device: str = Field(default="cpu", description="torch device of learned fits")

    @field_validator("keep_fractions")
    @classmethod
    def _keeps_in_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 < k <= 1.0 for k in value):
            raise ValueError(f"keep fractions must be in (0, 1], got {list(value)}")
        return value

    def for_labels(self, lm: bool) -> AutoConfig:
        """This config with the temperature set: the one given, else the
        student's of the label family (``lm``: an LM vocabulary)."""
        if self.temperature is not None:
            return self
        default = LM_STUDENT_TEMPERATURE if lm else VISION_STUDENT_TEMPERATURE
        return self.model_copy(update={"temperature": default})

    @property
    def student_temperature(self) -> float:
        """The temperature candidates are scored at (:meth:`for_labels` sets it).

        Raises:
            ValueError: it was not set yet.
        """
        if self.temperature is None:
            raise ValueError("AutoConfig.temperature is unset: call for_labels()")
        return self.temperature

    def max_sample_labels(self, num_classes: int) -> int:
        """Labels the sample may hold for ``num_classes`` float32 values each.

        By default 8192 labels, or ``SAMPLE_VALUES / num_classes`` when more (a
        10-class set is sampled whole up to 800k labels: more held-out samples,
        less noise, at no cost in fit time), within ``sample_bytes``.
        """
        labels = self.sample_labels
        if labels is None:
            labels = max(DEFAULT_SAMPLE_LABELS, SAMPLE_VALUES // num_classes)
        return max(4, min(labels, self.sample_bytes // (4 * num_classes)))


@dataclass(frozen=True)
class Target:
    """The archive an auto choice is made for: rate goal, layout and extras."""

    goal: RateGoal
    layout: Layout
    num_classes: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    metadata: ArchiveMetadata = field(default_factory=ArchiveMetadata)
    side_bytes: int = 0
    # Which candidate table: by class count ("auto"), or the command's own kind.
    family: Literal["auto", "vision", "lm"] = "auto"
    # The view context of flat label indices, where the labels have one (relabel):
    # the view-context codecs are then candidates; they store num_images prototypes.
    context: ContextOf | None = None
    num_images: int | None = None

    @property
    def is_lm(self) -> bool:
        """Whether the labels are an LM vocabulary: the command's kind, or by
        class count (more than :data:`LM_MIN_CLASSES`)."""
        if self.family == "auto":
            return self.num_classes > LM_MIN_CLASSES
        return self.family == "lm"

    def archive(self, prune: PrunePlan | None = None) -> ArchiveTarget:
        """The rate-control target of the archive, with ``prune`` if given."""
        return ArchiveTarget(
            self.goal,
            self.layout,
            self.num_classes,
            self.chunk_size,
            prune=prune,
            metadata=self.metadata,
            side_bytes=self.side_bytes,
        )

    @property
    def total_bytes(self) -> int:
        return self.goal.total_bytes(self.layout.num_labels, self.num_classes)
