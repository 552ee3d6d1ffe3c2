"""The option helpers the subcommands share (labelzip.cli._common)."""

from __future__ import annotations

import argparse
import io
import sys

import pytest
import torch

from labelzip.cli._common import (
    add_codec_option_flags,
    add_rate_options,
    codec_options,
    one_line,
    progress,
    progress_bar,
    stderr_progress,
    with_run_defaults,
)
from labelzip.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_rate_options(p, unit="token", suffix=" to meet")
    add_codec_option_flags(p)
    return p


def test_rate_options_are_mutually_exclusive_and_help_names_the_unit() -> None:
    p = _parser()
    args = p.parse_args(["--bits-per-label", "64"])
    assert (args.ratio, args.bits_per_label) == (None, 64.0)
    with pytest.raises(argparse.ArgumentError, match="not allowed with"):
        p.parse_args(["--ratio", "40", "--bits-per-label", "64"])
    assert "all-in bits per token to meet" in " ".join(p.format_help().split())


def test_shortcuts_override_opt_pairs() -> None:
    args = _parser().parse_args(
        ["--opt", "k=10", "--opt", "decoder=mr", "--opt", "bins=4", "--k", "3"]
    )
    assert codec_options(args) == {"k": 3, "decoder": "mr", "bins": 4}


def test_bad_opt_pair_is_a_config_error() -> None:
    args = _parser().parse_args(["--opt", "k"])
    with pytest.raises(ConfigError, match=r"--opt expects KEY=VALUE, got 'k'"):
        codec_options(args)


def test_run_defaults_only_fill_fields_the_codec_has() -> None:
    cpu = torch.device("cpu")
    # vqae's config has a seed: the run's seed fills it unless the user set one.
    assert with_run_defaults("vqae", {}, seed=7, device=cpu) == {"seed": 7}
    assert with_run_defaults("vqae", {"seed": 1}, seed=7, device=cpu) == {"seed": 1}
    # topk has neither field: nothing is added (the codec would reject it).
    assert with_run_defaults("topk", {"k": 2}, seed=7, device=cpu) == {"k": 2}


def test_one_line_joins_pydantic_errors() -> None:
    from pydantic import BaseModel, Field, ValidationError

    class Config(BaseModel):
        a: int = Field(ge=1)
        b: int = Field(ge=1)

    with pytest.raises(ValidationError) as info:
        Config(a=0, b=0)
    text = one_line(info.value)
    assert "\n" not in text
    assert text.startswith("a: Input should be greater than or equal to 1; b: ")
    assert one_line(ValueError("first\nsecond")) == "first"


@pytest.mark.parametrize("name", ["vqae-sampled", "vqae-rs", "view-mix", "vqae-ctx"])
def test_codec_option_takes_new_names_and_old_keys(name: str) -> None:
    from labelzip.cli._common import add_codec_target_options

    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_codec_target_options(p, required=True)
    assert p.parse_args(["--codec", name]).codec == name


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_bars_draw_only_on_an_enabled_terminal(
    tty: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar("relabelling", enabled=True) as update:
        update(3, 7)
    with progress("fitting", 4, enabled=True) as advance:
        advance(2)
    with progress_bar("quiet", enabled=False) as update:
        update(1, 2)
    with stderr_progress(True, transient=False) as bar:
        assert (bar is not None) == tty
        if bar is not None:
            task = bar.add_task("kept", total=5)
            bar.update(task, completed=5)
    out = err.getvalue()
    assert ("kept" in out and "5/5" in out) == tty
    assert "quiet" not in out
    if not tty:
        assert out == ""
