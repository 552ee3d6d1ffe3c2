"""Helpers shared by the subcommands: options, validation, progress bars, JSON output."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from labelzip.codecs.base import Codec
from labelzip.codecs.registry import codec_choices, codec_class
from labelzip.distributed import DEFAULT_TIMEOUT_S
from labelzip.errors import ConfigError, InputError
from labelzip.pipelines.compress import AUTO
from labelzip.rate import RateGoal
from labelzip.selection.auto import AutoConfig

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "add_dist_timeout_option",
    "add_auto_options",
    "add_codec_option_flags",
    "add_codec_target_options",
    "auto_config",
    "add_device_option",
    "add_json_option",
    "add_rate_options",
    "codec_options",
    "format_bytes",
    "load_codec_class",
    "one_line",
    "parse_key_values",
    "print_json",
    "progress",
    "progress_bar",
    "stderr_progress",
    "resolve_device",
    "validated",
    "with_run_defaults",
]

ConfigT = TypeVar("ConfigT")

# argparse's add_argument_group / add_mutually_exclusive_group return this type.
_Options = argparse.ArgumentParser | argparse._ArgumentGroup


def add_device_option(parser: argparse.ArgumentParser, what: str = "decode") -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help=f"torch device to {what} on, e.g. cpu, cuda, cuda:1, mps (default: cpu)",
    )


def add_dist_timeout_option(parser: argparse.ArgumentParser) -> None:
    """``--dist-timeout``: under torchrun, how long a rank waits for the others."""
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others, e.g. for rank "
        f"0's codec fit (default {DEFAULT_TIMEOUT_S:g})",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text"
    )


def add_rate_options(
    parser: _Options, *, unit: str = "label", suffix: str = ""
) -> None:
    """The mutually exclusive all-in targets ``--ratio`` / ``--bits-per-label``.

    ``unit`` names what one label is in the help ("token" for LM labels); ``suffix``
    ends both help texts (e.g. " to meet").
    """
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--ratio", type=float, help=f"all-in ratio vs dense fp16{suffix}"
    )
    target.add_argument(
        "--bits-per-label", type=float, help=f"all-in bits per {unit}{suffix}"
    )


def rate_goal(args: argparse.Namespace) -> RateGoal | None:
    """The target of ``--ratio`` / ``--bits-per-label`` (against ``--reference``
    where the command has it), or None for a fixed configuration.

    Raises:
        ConfigError: a value that is not a finite number > 0.
    """
    return RateGoal.of(
        args.ratio, args.bits_per_label, getattr(args, "reference", "fp16")
    )


def add_codec_option_flags(
    parser: _Options,
    *,
    opt_help: str = "codec option (repeatable)",
    decoder_help: str = "shortcut for --opt decoder=NAME (topk)",
) -> None:
    """``--opt KEY=VALUE`` (repeatable) and its shortcuts ``--k`` / ``--decoder``."""
    parser.add_argument("--opt", action="append", metavar="KEY=VALUE", help=opt_help)
    parser.add_argument("--k", type=int, help="shortcut for --opt k=K")
    parser.add_argument("--decoder", help=decoder_help)


def add_codec_target_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool,
    codec_help: str | None = None,
    target_suffix: str = " to meet",
    opt_help: str = "codec option (repeatable)",
    decoder_help: str = "shortcut for --opt decoder=NAME (topk)",
    auto: bool = False,
) -> None:
    """The codec choice of a command that encodes: ``--codec`` (a registered
    codec), the all-in target ``--ratio`` / ``--bits-per-label`` and the codec
    options ``--opt`` / ``--k`` / ``--decoder``. Read them back with
    ``args.codec``, ``args.ratio``, ``args.bits_per_label`` and
    :func:`codec_options`. With ``auto``, ``--codec auto`` is a choice too
    (the command resolves it, see :func:`add_auto_options`)."""
    choices = [AUTO, *codec_choices()] if auto else codec_choices()
    parser.add_argument("--codec", required=required, choices=choices, help=codec_help)
    add_rate_options(parser, suffix=target_suffix)
    add_codec_option_flags(parser, opt_help=opt_help, decoder_help=decoder_help)


def add_auto_options(parser: _Options) -> None:
    """The knobs of ``--codec auto`` (labelzip.selection.auto.AutoConfig)."""
    group = parser.add_argument_group("--codec auto (the default with a target)")
    group.add_argument(
        "--auto-temperature",
        type=float,
        metavar="T",
        help="student's KD temperature the held-out KL is measured at (default: "
        "1 for LM vocabularies, as train-lm; 4 for class labels, as train)",
    )
    group.add_argument(
        "--auto-reuse-weight",
        type=float,
        metavar="W",
        help="share (0-1) of a pruned view's reuse mismatch charged to its "
        "held-out score; 1 charges the full KL against the reused label "
        "(default: 2/m at m views stored per sample, at most 1, times C/10 above "
        "C = 10 classes; docs/auto.md)",
    )
    group.add_argument(
        "--auto-sample",
        type=int,
        metavar="N",
        help="labels sampled to fit and score candidates (default 8192, more "
        "for few classes: about 8M logit values)",
    )
    group.add_argument(
        "--auto-steps",
        type=int,
        default=300,
        metavar="N",
        help="training steps of learned candidates (default 300)",
    )
    group.add_argument(
        "--auto-confirm-steps",
        type=int,
        default=1000,
        metavar="N",
        help="training steps of the finalists' second fit (the winner and the best "
        "other learned candidate; default 1000, at most a codec's full schedule; "
        "<= --auto-steps: none)",
    )


def auto_config(
    args: argparse.Namespace, *, seed: int, device: torch.device
) -> AutoConfig:
    """The validated AutoConfig of :func:`add_auto_options` (one-line ConfigError)."""
    return validated(
        AutoConfig,
        "--auto",
        temperature=args.auto_temperature,
        sample_labels=args.auto_sample,
        steps=args.auto_steps,
        confirm_steps=args.auto_confirm_steps,
        **(
            {}
            if args.auto_reuse_weight is None
            else {"reuse_weight": args.auto_reuse_weight}
        ),
        seed=seed,
        device=str(device),
    )


def codec_options(args: argparse.Namespace) -> dict[str, Any]:
    """The codec options of :func:`add_codec_option_flags`: ``--opt`` pairs, with
    ``--k`` / ``--decoder`` (when given) overriding the same keys."""
    options = parse_key_values(args.opt, "--opt")
    for flag in ("k", "decoder"):
        value = getattr(args, flag)
        if value is not None:
            options[flag] = value
    return options


def with_run_defaults(
    codec: str, options: dict[str, Any], *, seed: int, device: torch.device
) -> dict[str, Any]:
    """``options`` plus the run's ``seed`` and ``device`` for a codec whose config
    has those fields, unless the user set them (a learned codec then fits with the
    command's seed on the command's device). Updates and returns ``options``."""
    fields = load_codec_class(codec).config_class.model_fields
    if "seed" in fields:
        options.setdefault("seed", seed)
    if "device" in fields:
        options.setdefault("device", str(device))
    return options


def resolve_device(name: str) -> torch.device:
    """A usable torch device, or an InputError that says why not."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {name!r} requested but no CUDA GPU is available")
        if device.index is not None and device.index >= count:
            raise InputError(f"device {name!r} requested but only {count} GPU(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {name!r} requested but MPS is not available")
    return device


def load_codec_class(name: str) -> type[Codec]:
    """The codec class, with an import failure turned into a one-line error."""
    try:
        return codec_class(name)
    except ImportError as exc:
        raise ConfigError(
            f"codec {name!r} is not available in this installation ({exc})"
        ) from exc


def _coerce(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_key_values(pairs: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["k=10", "decoder=ms"]`` -> ``{"k": 10, "decoder": "ms"}`` (JSON values typed)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key] = _coerce(value.strip())
    return out


def one_line(exc: Exception) -> str:
    """A pydantic validation error as ``field: message; ...`` on one line."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    parts = []
    for error in errors():
        loc = ".".join(str(p) for p in error.get("loc", ()))
        msg = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validated(
    config_class: Callable[..., ConfigT], what: str, /, **values: Any
) -> ConfigT:
    """``config_class(**values)``, with a validation error (any ValueError) turned
    into the one-line ConfigError ``invalid {what} options: field: message; ...``."""
    try:
        return config_class(**values)
    except ValueError as exc:
        raise ConfigError(f"invalid {what} options: {one_line(exc)}") from exc


def print_json(obj: Any) -> None:
    """One JSON object on stdout (NaN/inf written as null)."""
    print(json.dumps(_finite(obj), indent=2, sort_keys=True))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def format_bytes(num: int | float) -> str:
    """``1536`` -> ``"1.50 KiB"``."""
    value = float(num)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@contextmanager
def stderr_progress(
    enabled: bool,
    *,
    description: str = "{task.description}",
    spinner: bool = False,
    remaining: bool = True,
    transient: bool = True,
) -> Iterator[Progress | None]:
    """A rich :class:`~rich.progress.Progress` on stderr, or ``None`` off a terminal.

    The one look of every labelzip bar: (spinner,) description, bar, done of
    total, elapsed (and remaining) time. ``None`` when ``enabled`` is false or
    stderr is not a terminal, so logs and pipes stay free of bar frames.
    """
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn] = [SpinnerColumn()] if spinner else []
    columns += [
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if remaining:
        columns.append(TimeRemainingColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=transient) as bar:
        yield bar


@contextmanager
def progress(
    description: str, total: int | None = None, *, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. Silent off a terminal."""
    with stderr_progress(enabled, spinner=True, remaining=False) as bar:
        if bar is None:
            yield lambda n: None
            return
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def progress_bar(
    description: str, *, enabled: bool
) -> Iterator[Callable[[int, int], None]]:
    """A rich bar on stderr driven by ``update(done, total)``; silent off a terminal.

    For work that reports absolute progress (``done`` of ``total``, total known
    late); :func:`progress` is the increment-driven variant.
    """
    with stderr_progress(enabled) as bar:
        if bar is None:
            yield lambda done, total: None
            return
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
