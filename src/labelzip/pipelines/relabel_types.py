"""Configuration and result types of :mod:`labelzip.pipelines.relabel`.

Kept apart so replay and training can read the archive conventions (layout
dims, metadata key) without importing the relabel machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelzip.accounting import StorageAccount
from labelzip.archive.format import DEFAULT_CHUNK_SIZE
from labelzip.augment import ViewConfig
from labelzip.codecs.context.recipe import LAYOUT_DIMS, RELABEL_KEY, recipe_context
from labelzip.rate.target import TargetFields
from labelzip.selection.auto import AUTO
from labelzip.selection.config import AutoConfig
from labelzip.selection.record import AutoChoice

__all__ = [
    "AUGMENT_PREFIX",
    "LAYOUT_DIMS",
    "PROTOCOL",
    "RELABEL_KEY",
    "ProgressFn",
    "RelabelConfig",
    "RelabelOutput",
    "RelabelResult",
    "RelabelledArchive",
    "default_view_config",
    "recipe_context",
]

PROTOCOL = "sre2l-fkd"
AUGMENT_PREFIX = "aug_"  # side tensor names of explicit augmentation records

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` in views labelled by the teacher."""


def default_view_config(height: int, width: int) -> ViewConfig:
    """SRe2L's relabel recipe at the image size: crop scale 0.08-1, flip, CutMix."""
    return ViewConfig(output_size=(height, width), scale=(0.08, 1.0), mix="cutmix")


class RelabelConfig(BaseModel):
    """How views are drawn and labelled (shared by every output archive)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=30, ge=1, le=100_000, description="E: views per image")
    seed: int = Field(default=0, ge=0, lt=2**63, description="seed of every view")
    view: ViewConfig | None = Field(
        default=None,
        description="augmentation recipe; default SRe2L's at the image size",
    )
    batch_size: int = Field(
        default=256, ge=1, le=65536, description="views per teacher batch"
    )
    fit_views: int = Field(
        default=16384,
        ge=1,
        le=10_000_000,
        description="views whose labels codecs are fitted on (per output)",
    )
    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE, ge=1, le=1 << 24, description="labels per chunk"
    )
    store_augmentations: bool = Field(
        default=False,
        description="also store SRe2L-style explicit view parameters as side tensors",
    )


class RelabelOutput(TargetFields):
    """One archive to write: codec, options, rate target and pruning."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="archive file to write")
    codec: str = Field(default="dense", description="codec registry name")
    options: dict[str, Any] = Field(
        default_factory=dict, description="codec options the user fixed"
    )
    keep_fraction: float | None = Field(
        default=None, gt=0, le=1, description="LPLD: fraction of views labelled"
    )
    auto_prune: bool = Field(
        default=False,
        description="when the target is out of the codec's reach with every view, "
        "keep the most views per image that meet it (LPLD)",
    )
    prune_seed: int = Field(default=0, ge=0, description="seed of the kept views")
    name: str | None = Field(default=None, description="a label for reports")
    auto: AutoConfig | None = Field(
        default=None,
        description="codec 'auto': how it measures its candidates (defaults)",
    )

    @model_validator(mode="after")
    def _check(self) -> RelabelOutput:
        if self.codec == AUTO:
            if not self.has_target:
                raise ValueError("codec 'auto' chooses for a target: give a ratio")
            if self.options:
                raise ValueError("codec 'auto' chooses the options: give none")
            if self.auto_prune:
                raise ValueError(
                    "codec 'auto' measures the view budget itself; drop auto_prune"
                )
        if self.auto_prune and self.keep_fraction is not None:
            raise ValueError("auto_prune chooses keep_fraction; do not give both")
        if self.auto_prune and not self.has_target:
            raise ValueError("auto_prune needs a ratio or bits_per_label target")
        return self

    @property
    def label(self) -> str:
        return self.name or self.codec


@dataclass(frozen=True)
class RelabelledArchive:
    """One written archive and its all-in account."""

    name: str
    path: Path
    account: StorageAccount
    keep_per_image: int  # views per image whose label is stored (E when unpruned)
    codec_config: dict[str, Any]
    auto: AutoChoice | None = None  # what codec 'auto' measured, when it chose


@dataclass(frozen=True)
class RelabelResult:
    """What a relabel run wrote and what it cost."""

    archives: list[RelabelledArchive]
    num_views: int  # E * M
    num_classes: int
    teacher_views: int  # views run through the teacher, fitting pass included
    single_pass: bool  # labels kept in memory between fitting and writing
    side_bytes_replayed: int  # augmentation bytes per archive with seeded replay: 0
    side_bytes_explicit: int  # what SRe2L-style explicit records would take
    seconds: dict[str, float] = field(default_factory=dict)
