"""``labelzip bench scale``: the parser and runner of the scale suite.

Kept apart from :mod:`labelzip.cli.bench` (the student benchmarks): this suite
only runs ``labelzip compress`` subprocesses and archive reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from labelzip.cli._common import add_json_option, print_json
from labelzip.io import atomic_path, check_output_path

__all__ = ["SCALE_EPILOG", "add_scale_parser", "run_scale"]

SCALE_EPILOG = """examples:
  labelzip bench scale --labels effnet_views.safetensors          # 1M, 3M, 15M labels
  labelzip bench scale --labels views.safetensors --sizes 200k --codecs topk --procs 1

For each size, writes an (N, C) fp16 input by tiling the real teacher logits of
--labels, then runs `labelzip compress` per codec (dense at fp16, the others at
--ratio) with 1 and 2 processes (torchrun), one torch thread each, and reports
peak RSS, fit seconds, encode labels/s, decode labels/s (contiguous and shuffled
batches of 256, one thread), archive bytes and the all-in ratio. Needs free disk
for the input (N x C x 2 bytes) and the archives in --work-dir. Measured cost: see
the header of benchmarks/results/scale.md.
"""


def add_scale_parser(sub: Any) -> None:
    p = sub.add_parser(
        "scale",
        help="millions of labels: memory, encode and decode rates, 1 and 2 processes",
        description="Compress and read generated label sets of millions of labels.",
        epilog=SCALE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--labels", required=True, help="real teacher logits (N0, C)")
    p.add_argument("--key", help="tensor name inside --labels")
    p.add_argument(
        "--sizes", nargs="+", default=["1M", "3M", "15M"], help="label counts N"
    )
    p.add_argument("--codecs", nargs="+", default=["dense", "topk", "vqae"])
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--ratio", type=float, default=40.0, help="all-in target")
    p.add_argument(
        "--codec-opt",
        action="append",
        metavar="CODEC:KEY=VALUE",
        help="extra codec option, e.g. vqae:steps=1000 (repeatable)",
    )
    p.add_argument(
        "--decode-seconds", type=float, default=20.0, help="per decode measurement"
    )
    p.add_argument("--work-dir", default="scale_work", help="inputs and archives")
    p.add_argument(
        "--out", default="benchmarks/results/scale.md", help="markdown report"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_json_option(p)


def run_scale(args: argparse.Namespace, command: str) -> int:
    from labelzip.bench.scale import (
        ScaleConfig,
        markdown_report,
        parse_codec_options,
        parse_count,
        run_scale_bench,
    )

    out = check_output_path(args.out, [args.labels])
    config = ScaleConfig(
        labels=Path(args.labels),
        sizes=tuple(parse_count(s) for s in args.sizes),
        codecs=tuple(args.codecs),
        procs=tuple(args.procs),
        ratio=args.ratio,
        decode_seconds=args.decode_seconds,
        codec_options=parse_codec_options(args.codec_opt),
        key=args.key,
    )

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    report = run_scale_bench(config, Path(args.work_dir), log=log)
    text = markdown_report(report, command)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if args.json:
        print_json({**report, "files": [str(out)]})
    else:
        print(text, end="")
        print(f"wrote {out}")
    return 0
