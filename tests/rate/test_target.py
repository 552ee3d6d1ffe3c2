"""The one rate-target model: RateGoal, TargetFields and their one-line errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from labelzip.errors import ConfigError
from labelzip.rate import RateGoal, TargetFields, check_rate_value


def test_total_bytes_of_ratio_and_bits_per_label() -> None:
    assert RateGoal(ratio=40).total_bytes(100, 1000) == 5000
    assert RateGoal(ratio=40, reference="fp32").total_bytes(100, 1000) == 10000
    assert RateGoal(bits_per_label=400).total_bytes(100, 1000) == 5000
    assert RateGoal(bits_per_label=7).total_bytes(3, 10) == 2  # floor
    assert RateGoal(ratio=2, reference="bf16").reference_bytes(10, 10) == 200


def test_describe_names_the_target_as_reports_do() -> None:
    assert RateGoal(ratio=40).describe() == "40x"
    assert RateGoal(bits_per_label=64.5).describe() == "64.5 bits per label"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give exactly one of ratio or bits_per_label"),
        ({"ratio": 2, "bits_per_label": 3}, "give exactly one"),
        ({"ratio": 0}, "ratio: Input should be greater than 0"),
        ({"bits_per_label": float("nan")}, "bits_per_label: Input should be a finite"),
        ({"ratio": 2, "reference": "int8"}, "unknown reference 'int8'; choose one of"),
        ({"ratio": 2, "bogus": 1}, "bogus: Extra inputs are not permitted"),
    ],
)
def test_parse_refuses_bad_goals_in_one_line(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        RateGoal.parse(values)
    assert "\n" not in str(info.value)


def test_of_is_none_without_a_target_and_checks_each_value() -> None:
    assert RateGoal.of() is None
    assert RateGoal.of(None, 64.0) == RateGoal(bits_per_label=64.0)
    with pytest.raises(ConfigError, match="ratio must be > 0, got 0"):
        RateGoal.of(0)
    with pytest.raises(ConfigError, match="bits_per_label must be > 0, got -1"):
        RateGoal.of(None, -1)
    with pytest.raises(ConfigError, match="exactly one"):
        RateGoal.of(2, 3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_rate_values_refuse_nan_and_inf_everywhere(value: float) -> None:
    """``--ratio nan`` once reached ``int(nan)`` inside rate control (a traceback)."""
    from labelzip.bench.imagenet import ImagenetTrackConfig
    from labelzip.bench.lm import LMBenchConfig
    from labelzip.bench.vision import VisionBenchConfig
    from labelzip.codecs.baseline.rskd import RSKDConfig
    from labelzip.lm.relabel import LMOutput
    from labelzip.pipelines.quickstart import QuickstartConfig
    from labelzip.pipelines.relabel_types import RelabelOutput
    from labelzip.storage.options import StorageOptions

    with pytest.raises(ConfigError, match="ratio must be a finite number, got"):
        check_rate_value(value, "ratio")
    for key in ("ratio", "bits_per_label"):
        with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
            RateGoal.of(**{key: value})
        for output in (RelabelOutput, LMOutput):
            with pytest.raises(ValidationError, match="finite number"):
                output(path="a.lz", **{key: value})
    with pytest.raises(ValidationError, match="finite number"):
        RSKDConfig(sizing="measured", target_bits_per_label=value)
    with pytest.raises(ValidationError, match="finite number"):
        StorageOptions(codec_bits_per_label=value)
    with pytest.raises(ValidationError, match="finite number"):
        QuickstartConfig(ratio=value)
    for bench in (LMBenchConfig, VisionBenchConfig, ImagenetTrackConfig):
        with pytest.raises(ValidationError, match="finite number"):
            bench(ratios=(40.0, value))


def test_check_rate_value_passes_good_values() -> None:
    assert check_rate_value(40.0, "ratio") == 40.0
    with pytest.raises(ConfigError, match="bits_per_label must be > 0, got 0"):
        check_rate_value(0, "bits_per_label")


class _Config(TargetFields):
    name: str = "x"


def test_target_fields_give_at_most_one_target_and_its_goal() -> None:
    assert _Config().goal is None and not _Config().has_target
    assert _Config(ratio=40).goal == RateGoal(ratio=40)
    assert _Config(bits_per_label=8).goal == RateGoal(bits_per_label=8)
    with pytest.raises(
        ValidationError, match="at most one of ratio and bits_per_label"
    ):
        _Config(ratio=40, bits_per_label=8)


@pytest.mark.parametrize("model", ["relabel", "lm"])
def test_relabel_and_lm_outputs_share_the_one_rule(model: str) -> None:
    from labelzip.lm.relabel import LMOutput
    from labelzip.pipelines.relabel_types import RelabelOutput

    cls = RelabelOutput if model == "relabel" else LMOutput
    assert issubclass(cls, TargetFields)
    with pytest.raises(
        ValidationError, match="at most one of ratio and bits_per_label"
    ):
        cls(path="a.lz", ratio=40, bits_per_label=8)
    assert cls(path="a.lz", bits_per_label=8).goal == RateGoal(bits_per_label=8)
