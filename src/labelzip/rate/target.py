"""The one rate-target model: an all-in ratio or bits per label, and its budget.

Every place that takes a rate target (commands, pipeline configs, ``--codec
auto``, interop) holds a :class:`RateGoal`, or the two fields of
:class:`TargetFields` that build one, so the rules (exactly one of the two, a
finite number > 0, a known reference) are written once.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labelzip.accounting import REFERENCE_BYTES_PER_VALUE, reference_bytes
from labelzip.errors import ConfigError

__all__ = ["RateGoal", "RateValue", "TargetFields", "check_rate_value"]

# A rate value (all-in ratio, bits per label) in a pydantic config: a finite
# number > 0. NaN and inf are refused: they pass "> 0" checks or compare false
# everywhere and then fail deep inside rate control.
RateValue = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def check_rate_value(value: float, name: str) -> float:
    """``value`` if it is a finite number > 0, else a ConfigError naming ``name``."""
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


class RateGoal(BaseModel):
    """An all-in rate target: ``ratio`` against dense ``reference`` logits, or
    ``bits_per_label`` (exactly one). Both count every byte of the archive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ratio: RateValue | None = Field(
        default=None, description="all-in ratio vs the dense reference"
    )
    bits_per_label: RateValue | None = Field(
        default=None, description="all-in bits per represented label"
    )
    reference: str = Field(
        default="fp16", description="dense format the ratio is stated against"
    )

    @model_validator(mode="after")
    def _check(self) -> RateGoal:
        if (self.ratio is None) == (self.bits_per_label is None):
            raise ValueError("give exactly one of ratio or bits_per_label")
        if self.reference not in REFERENCE_BYTES_PER_VALUE:
            choices = ", ".join(sorted(REFERENCE_BYTES_PER_VALUE))
            raise ValueError(
                f"unknown reference {self.reference!r}; choose one of {choices}"
            )
        return self

    @classmethod
    def of(
        cls,
        ratio: float | None = None,
        bits_per_label: float | None = None,
        reference: str = "fp16",
    ) -> RateGoal | None:
        """The goal of a ratio or bits per label, ``None`` when neither is given.

        Raises:
            ConfigError: both given, or a value that is not a finite number > 0
                (one line, naming the field).
        """
        if ratio is None and bits_per_label is None:
            return None
        if ratio is not None:
            check_rate_value(ratio, "ratio")
        if bits_per_label is not None:
            check_rate_value(bits_per_label, "bits_per_label")
        return cls.parse(
            {"ratio": ratio, "bits_per_label": bits_per_label, "reference": reference}
        )

    @classmethod
    def parse(cls, values: dict[str, Any]) -> RateGoal:
        """A goal from plain values; a ConfigError of one line when invalid."""
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            msg = str(first.get("msg", exc)).removeprefix("Value error, ")
            raise ConfigError(f"{loc}: {msg}" if loc else msg) from None

    def reference_bytes(self, num_labels: int, num_classes: int) -> int:
        """Bytes of ``num_labels`` dense labels of ``num_classes`` in the reference."""
        return reference_bytes(num_labels, num_classes, self.reference)

    def total_bytes(self, num_labels: int, num_classes: int) -> int:
        """The all-in byte budget of ``num_labels`` labels of ``num_classes``."""
        if self.ratio is not None:
            return int(self.reference_bytes(num_labels, num_classes) / self.ratio)
        assert self.bits_per_label is not None
        return int(self.bits_per_label * num_labels / 8)

    def describe(self) -> str:
        """``"40x"`` or ``"64 bits per label"``, as reports name the target."""
        if self.ratio is not None:
            return f"{self.ratio:g}x"
        return f"{self.bits_per_label:g} bits per label"


class TargetFields(BaseModel):
    """The optional target fields of a command's config (a base to inherit).

    ``ratio`` (vs dense fp16) or ``bits_per_label``, at most one; neither means
    a fixed codec configuration. :attr:`goal` is the :class:`RateGoal` they make.
    """

    ratio: RateValue | None = Field(
        default=None, description="all-in ratio vs dense fp16 to meet"
    )
    bits_per_label: RateValue | None = Field(
        default=None, description="all-in bits per label to meet"
    )

    @model_validator(mode="after")
    def _at_most_one_target(self) -> TargetFields:
        if self.ratio is not None and self.bits_per_label is not None:
            raise ValueError("give at most one of ratio and bits_per_label")
        return self

    @property
    def has_target(self) -> bool:
        return self.ratio is not None or self.bits_per_label is not None

    @property
    def goal(self) -> RateGoal | None:
        """The target as a :class:`RateGoal`, or ``None`` for a fixed configuration."""
        return RateGoal.of(self.ratio, self.bits_per_label)
