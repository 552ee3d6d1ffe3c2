"""``labelzip storage``: bytes of images, labels, side info, model and header.

A thin layer over :mod:`labelzip.storage`: parse, call ``storage_table`` or
``lm_storage_table``, print a rich table or JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from labelzip.cli import run_command
from labelzip.errors import ConfigError
from labelzip.storage import (
    DATASETS,
    UNITS,
    StorageRow,
    custom_dataset,
    format_bytes,
    frameworks_for_mode,
    get_dataset,
    lm_storage_table,
    make_options,
    storage_table,
)

__all__ = ["build_parser", "main"]

EXAMPLES = """\
examples:
  # the published SRe2L/CDA ImageNet-1K label sizes (GiB)
  labelzip storage --dataset imagenet-1k --framework sre2l --ipc 10 20 50 100 200 --units GiB
  # compare baselines with a labelzip codec (ratio columns vs dense fp16 and vs the first)
  labelzip storage --dataset imagenet-1k --ipc 50 --framework sre2l lpld lpqld labelzip \\
      --codec-bits-per-label 64 --codec-model-bytes 600000
  # a labelzip archive's real numbers, extrapolated to the table's label count
  labelzip storage --dataset cifar-100 --ipc 10 50 --framework sre2l labelzip --archive labels.lz
  # a dataset that is not a preset
  labelzip storage --num-classes 10 --resolution 28 --channels 1 --ipc 10 --framework rded \\
      --teacher-bytes 1200000
  # LM distillation: GPT-2 vocabulary, ~112 GB of dense fp16 next-token distributions
  labelzip storage --tokens 1114112 --vocab 50257 --framework dense topk labelzip \\
      --topk 50 --codec-bits-per-label 1400 --codec-model-bytes 4000000 --units GB
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see labelzip storage --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="labelzip storage",
        description="Bytes a distilled dataset (or an LM label set) costs to ship: "
        "images, label payload, augmentation side info, model and header, per "
        "framework. Formulas and constants: docs/storage.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_flags(parser)
    _add_lm_flags(parser)
    _add_framework_flags(parser)
    _add_codec_flags(parser)
    _add_output_flags(parser)
    return parser


def _add_dataset_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("image datasets")
    data.add_argument(
        "--dataset",
        metavar="NAME",
        help=f"preset: {', '.join(DATASETS)} (or use --num-classes)",
    )
    data.add_argument(
        "--num-classes", type=int, metavar="C", help="custom dataset: classes C"
    )
    data.add_argument(
        "--resolution", type=int, metavar="R", help="custom dataset: image side (px)"
    )
    data.add_argument(
        "--channels",
        type=int,
        metavar="{1,3}",
        help="custom dataset: 1 or 3 (default 3)",
    )
    data.add_argument(
        "--ipc",
        type=int,
        nargs="+",
        metavar="IPC",
        help="images per class (several ok)",
    )
    data.add_argument(
        "--epochs", type=int, default=300, metavar="E", help="labelled views per image"
    )
    data.add_argument(
        "--image-format",
        default="jpeg",
        metavar="FMT",
        help="jpeg (calibrated), raw (uint8) or png-estimate",
    )
    data.add_argument(
        "--image-bytes", type=int, metavar="N", help="bytes per image (override)"
    )


def _add_lm_flags(parser: argparse.ArgumentParser) -> None:
    lm_group = parser.add_argument_group("LM distillation")
    lm_group.add_argument(
        "--tokens", type=int, nargs="+", metavar="N", help="corpus size(s) in tokens"
    )
    lm_group.add_argument(
        "--vocab", type=int, metavar="V", help="vocabulary size V (GPT-2: 50257)"
    )


def _add_framework_flags(parser: argparse.ArgumentParser) -> None:
    vision = ", ".join(frameworks_for_mode("vision"))
    lm = ", ".join(frameworks_for_mode("lm"))
    fw = parser.add_argument_group("frameworks")
    fw.add_argument(
        "--framework",
        nargs="+",
        metavar="NAME",
        help=f"image: {vision}; LM: {lm} (default sre2l / dense)",
    )
    fw.add_argument(
        "--augment",
        metavar="{stored,seed}",
        help="stored or seed (default: each framework's own)",
    )
    fw.add_argument(
        "--batch-size", type=int, metavar="B", help="relabel batch size (files)"
    )
    fw.add_argument(
        "--prune-ratio", type=float, metavar="R", help="lpld/lpqld: keep 1/R (40 / 10)"
    )
    fw.add_argument("--topk", type=int, metavar="K", help="lpqld 50, fkd 5, LM topk 50")
    fw.add_argument(
        "--logit-dtype",
        default="fp16",
        metavar="DTYPE",
        help="dense logits: fp16 fp32 bf16",
    )
    fw.add_argument(
        "--teacher-bytes", type=int, metavar="N", help="rded: teacher size to ship"
    )


def _add_codec_flags(parser: argparse.ArgumentParser) -> None:
    codec = parser.add_argument_group("labelzip codec")
    codec.add_argument(
        "--codec-bits-per-label", type=float, metavar="B", help="payload bits/label"
    )
    codec.add_argument(
        "--codec-model-bytes", type=int, metavar="M", help="decoder + codebook bytes"
    )
    codec.add_argument(
        "--codec-header-bytes", type=int, metavar="H", help="archive header bytes"
    )
    codec.add_argument(
        "--archive", metavar="PATH", help="read the codec numbers from an archive"
    )
    codec.add_argument(
        "--labelzip-prune-ratio",
        type=float,
        default=1.0,
        metavar="R",
        help="labelzip: store 1/R of the views (default 1)",
    )


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument(
        "--units",
        default="auto",
        metavar="UNIT",
        help=f"auto, {', '.join(UNITS)} (default auto)",
    )
    out.add_argument("--json", action="store_true", help="print JSON instead")


def _option_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "image_format",
        "image_bytes",
        "augment",
        "batch_size",
        "prune_ratio",
        "topk",
        "logit_dtype",
        "teacher_bytes",
        "codec_bits_per_label",
        "codec_model_bytes",
        "codec_header_bytes",
        "archive",
        "labelzip_prune_ratio",
    )
    return {key: getattr(args, key) for key in keys}


def _rows(args: argparse.Namespace) -> tuple[str, str, list[StorageRow]]:
    """(mode, description, rows) for the parsed arguments."""
    options = make_options(**_option_kwargs(args))
    if args.tokens is not None:
        if args.dataset or args.num_classes or args.ipc:
            raise ConfigError(
                "--tokens (LM mode) cannot be combined with --dataset, "
                "--num-classes or --ipc"
            )
        if args.vocab is None:
            raise ConfigError("LM mode needs --vocab V (e.g. 50257 for GPT-2)")
        rows = lm_storage_table(
            tokens=args.tokens,
            vocab=args.vocab,
            framework=args.framework or ["dense"],
            options=options,
        )
        return "lm", f"LM distillation, vocabulary {args.vocab}", rows
    custom_args = (args.num_classes, args.resolution, args.channels)
    if args.dataset and any(value is not None for value in custom_args):
        raise ConfigError(
            "give either --dataset or --num-classes/--resolution/--channels, not both"
        )
    if args.dataset:
        spec = get_dataset(args.dataset)
    elif args.num_classes is not None and args.resolution is not None:
        spec = custom_dataset(args.num_classes, args.resolution, args.channels or 3)
    else:
        raise ConfigError(
            "say which data: --dataset NAME, --num-classes C --resolution R, "
            "or --tokens N --vocab V"
        )
    if not args.ipc:
        raise ConfigError("give --ipc (images per class), e.g. --ipc 10 50")
    rows = storage_table(
        dataset=spec,
        framework=args.framework or ["sre2l"],
        ipc=args.ipc,
        epochs=args.epochs,
        options=options,
    )
    desc = (
        f"{spec.name}: {spec.num_classes} classes, {spec.resolution} px x "
        f"{spec.channels} ch, {args.epochs} epochs, images as {args.image_format}"
    )
    return "vision", desc, rows


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}x"


def _print_table(mode: str, desc: str, rows: list[StorageRow], units: str) -> None:
    from rich.console import Console
    from rich.table import Table

    compare = any(row.ratio_vs_first is not None for row in rows)
    unit_note = "" if units == "auto" else f" [{units}]"
    table = Table(title=f"labelzip storage: {desc}{unit_note}", title_justify="left")
    table.add_column("framework")
    table.add_column("tokens" if mode == "lm" else "IPC", justify="right")
    table.add_column("stored labels", justify="right")
    cols = ["labels", "aug side", "model", "header", "labels all-in"]
    if mode == "vision":
        cols = ["images", *cols, "total"]
    for col in cols:
        table.add_column(col, justify="right")
    table.add_column("x dense fp16", justify="right")
    if compare:
        table.add_column("x first", justify="right")
    for row in rows:
        size = str(row.num_labels) if mode == "lm" else str(row.ipc)
        values = [
            row.label_bytes,
            row.side_bytes,
            row.model_bytes,
            row.header_bytes,
            row.label_total_bytes,
        ]
        if mode == "vision":
            values = [row.image_bytes, *values, row.total_bytes]
        cells = [row.framework, size, f"{row.stored_labels:,}"]
        cells += [format_bytes(v, units) for v in values]
        cells.append(_ratio(row.ratio_vs_dense))
        if compare:
            cells.append(_ratio(row.ratio_vs_first))
        table.add_row(*cells)
    width = None if sys.stdout.isatty() else 200
    console = Console(file=sys.stdout, width=width)
    console.print(table)
    notes: dict[str, None] = {}
    for row in rows:
        for note in row.notes:
            if "batch files" in note or "keeps" in note:
                continue  # per-cell detail: in --json
            notes[f"{row.framework}: {note}"] = None
    for note in notes:
        console.print(f"  {note}", highlight=False)


def _json(mode: str, desc: str, rows: list[StorageRow], units: str) -> str:
    out_rows = []
    scale = UNITS.get(units) if units not in ("auto", "bytes") else None
    for row in rows:
        item = row.to_dict()
        if scale is not None:
            fields = (
                "image_bytes",
                "label_bytes",
                "side_bytes",
                "model_bytes",
                "header_bytes",
                "label_total_bytes",
                "total_bytes",
            )
            item["in_units"] = {f: item[f] / scale for f in fields}
        out_rows.append(item)
    doc = {"mode": mode, "description": desc, "units": units, "rows": out_rows}
    return json.dumps(doc, indent=2)


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.units != "auto" and args.units not in UNITS:
        raise ConfigError(
            f"unknown units {args.units!r}; choose one of auto, {', '.join(UNITS)}"
        )
    mode, desc, rows = _rows(args)
    if args.json:
        print(_json(mode, desc, rows, args.units))
    else:
        _print_table(mode, desc, rows, args.units)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``labelzip storage``; returns the exit code."""
    try:
        return run_command("storage", lambda: _run(argv))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
