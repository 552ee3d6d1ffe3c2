"""Helpers shared by the subcommands: device option, progress bars, JSON output, parsing."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from labelzip.codecs.base import Codec
from labelzip.codecs.registry import codec_class
from labelzip.errors import ConfigError, InputError

__all__ = [
    "add_device_option",
    "add_json_option",
    "check_output_folder",
    "format_bytes",
    "load_codec_class",
    "parse_key_values",
    "print_json",
    "progress",
    "resolve_device",
]


def add_device_option(parser: argparse.ArgumentParser, what: str = "decode") -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help=f"torch device to {what} on, e.g. cpu, cuda, cuda:1, mps (default: cpu)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text"
    )


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


def check_output_folder(path: str | Path) -> Path:
    """Fail before any work when the output's folder does not exist."""
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(
            f"output folder {str(folder)!r} does not exist; create it first"
        )
    if out.is_dir():
        raise InputError(f"output {str(out)!r} is a folder; give a file name")
    return out


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
def progress(
    description: str, total: int | None = None, *, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. Silent off a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
