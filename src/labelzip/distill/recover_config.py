"""Settings of the data-free recovery methods (SRe2L, CDA, LPLD) and their defaults.

Defaults are SRe2L's ImageNet-1K recipe for GPU users; on a CPU, the step count
and the data-free image size fall back to :data:`CPU_STEPS` and
:data:`CPU_IMAGE_SIZE` (see docs/distill.md for the measurements).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CPU_IMAGE_SIZE",
    "CPU_STEPS",
    "PAPER_IMAGE_SIZE",
    "PAPER_STEPS",
    "CDAConfig",
    "LPLDConfig",
    "RecoverConfig",
]

PAPER_STEPS = 1000  # SRe2L's ImageNet-1K recovery budget (CDA and LPLD also report 4K)
CPU_STEPS = 200  # default on CPU: measured in docs/distill.md
PAPER_IMAGE_SIZE = 224  # data-free default on GPU
CPU_IMAGE_SIZE = 64  # data-free default on CPU (EfficientNet-Lite0 runs ~10x faster)


class RecoverConfig(BaseModel):
    """SRe2L recovery settings (defaults: SRe2L's ImageNet-1K recipe)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=f"optimisation steps per batch; default {PAPER_STEPS} on GPU, "
        f"{CPU_STEPS} on CPU",
    )
    batch_size: int = Field(
        default=100, ge=1, le=10_000, description="images optimised together"
    )
    lr: float = Field(default=0.25, gt=0, le=10.0, description="Adam peak lr (cosine)")
    beta1: float = Field(default=0.5, ge=0, lt=1, description="Adam beta1")
    beta2: float = Field(default=0.9, ge=0, lt=1, description="Adam beta2")
    bn_weight: float = Field(
        default=0.01,
        ge=0,
        le=1e4,
        description="weight of the BN-statistics loss (r_bn)",
    )
    first_bn_multiplier: float = Field(
        default=10.0, ge=0, le=1e4, description="extra weight of the first BN layer"
    )
    jitter: int | None = Field(
        default=None,
        ge=0,
        description="max random shift in pixels; default image size // 7 (32 at 224)",
    )
    flip: bool = Field(default=True, description="random horizontal flips per step")
    crop_scale: tuple[float, float] = Field(
        default=(0.08, 1.0),
        description="RandomResizedCrop area range per step; (1, 1) disables cropping",
    )
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="side of the recovered images; default the dataset's, else "
        f"{PAPER_IMAGE_SIZE} on GPU / {CPU_IMAGE_SIZE} on CPU",
    )
    channels: int | None = Field(
        default=None, description="1 or 3; default the dataset's, else 3"
    )
    classes: list[int] | None = Field(
        default=None, description="class ids to recover (default: all classes)"
    )

    @model_validator(mode="after")
    def _check(self) -> RecoverConfig:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}"
            )
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        return self


class CDAConfig(RecoverConfig):
    """CDA: the crop scale's lower bound follows a curriculum (global -> local)."""

    curriculum_start: float = Field(
        default=1.0, gt=0, le=1.0, description="crop scale lower bound at step 0"
    )
    curriculum_milestone: float = Field(
        default=1.0,
        gt=0,
        le=1.0,
        description="fraction of the steps after which the bound reaches crop_scale[0]",
    )
    curriculum: Literal["cosine", "linear"] = Field(
        default="cosine", description="shape of the annealing"
    )


class LPLDConfig(RecoverConfig):
    """LPLD: one class per batch, BN targets measured on that class's real images."""

    class_stats_images: int = Field(
        default=256,
        ge=2,
        le=100_000,
        description="real images per class used to measure class-wise BN statistics",
    )
    global_bn_weight: float = Field(
        default=0.0,
        ge=0,
        le=1e4,
        description="extra weight on matching the global running statistics too",
    )
