"""Settings of the data-free recovery methods (SRe2L, CDA, LPLD) and their defaults.

Defaults are SRe2L's ImageNet-1K recipe for GPU users; on a CPU, the step count
and the data-free image size fall back to :data:`CPU_STEPS` and
:data:`CPU_IMAGE_SIZE`. Images smaller than :data:`SMALL_IMAGE_SIDE` (Fashion-MNIST's
28 px, CIFAR's 32 px) get the small-image recipe for the two settings left unset:
crops of :data:`SMALL_IMAGE_CROP_SCALE` and BN weight :data:`SMALL_IMAGE_BN_WEIGHT`
(see docs/distill.md for the measurements).
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
    "SMALL_IMAGE_BN_WEIGHT",
    "SMALL_IMAGE_CROP_SCALE",
    "SMALL_IMAGE_SIDE",
    "SRE2L_BN_WEIGHT",
    "SRE2L_CROP_SCALE",
    "resolve_image_defaults",
]

PAPER_STEPS = 1000  # SRe2L's ImageNet-1K recovery budget (CDA and LPLD also report 4K)
CPU_STEPS = 200  # default on CPU: measured in docs/distill.md
PAPER_IMAGE_SIZE = 224  # data-free default on GPU
CPU_IMAGE_SIZE = 64  # data-free default on CPU (much faster; docs/distill.md)
SRE2L_BN_WEIGHT = 0.01  # SRe2L's r_bn (ImageNet-1K, ResNet-18's 20 BN layers)
SRE2L_CROP_SCALE = (0.08, 1.0)  # SRe2L's RandomResizedCrop area range (224 px)
# Small images (side < SMALL_IMAGE_SIDE): with SRe2L's settings a 28 px crop of 8% of
# the area is a few strokes, and a 3-BN teacher's statistics barely constrain the
# image, so the images of a class collapse to one pattern (docs/distill.md, "Small
# images: why 28 px gets its own recipe").
SMALL_IMAGE_SIDE = 64
SMALL_IMAGE_CROP_SCALE = (0.5, 1.0)
SMALL_IMAGE_BN_WEIGHT = 0.3


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
    bn_weight: float | None = Field(
        default=None,
        ge=0,
        le=1e4,
        description=f"weight of the BN-statistics loss (r_bn); default "
        f"{SRE2L_BN_WEIGHT} (SRe2L), {SMALL_IMAGE_BN_WEIGHT} below "
        f"{SMALL_IMAGE_SIDE} px",
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
    crop_scale: tuple[float, float] | None = Field(
        default=None,
        description=f"RandomResizedCrop area range per step; (1, 1) disables "
        f"cropping; default {SRE2L_CROP_SCALE} (SRe2L), {SMALL_IMAGE_CROP_SCALE} "
        f"below {SMALL_IMAGE_SIDE} px",
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
        if self.crop_scale is not None and not (
            0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0
        ):
            raise ValueError(
                f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}"
            )
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        return self


def resolve_image_defaults(config: RecoverConfig, side: int) -> RecoverConfig:
    """``config`` with ``crop_scale`` and ``bn_weight`` set for images of ``side`` px.

    Values the user set are kept; unset ones get SRe2L's (side >= 64) or the
    small-image recipe (side < 64). The result is what the distilled set records.
    """
    small = side < SMALL_IMAGE_SIDE
    update: dict[str, object] = {}
    if config.crop_scale is None:
        update["crop_scale"] = SMALL_IMAGE_CROP_SCALE if small else SRE2L_CROP_SCALE
    if config.bn_weight is None:
        update["bn_weight"] = SMALL_IMAGE_BN_WEIGHT if small else SRE2L_BN_WEIGHT
    return config.model_copy(update=update) if update else config


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
