"""The 1000-class track of the vision benchmark (EfficientNet-Lite0 over SRe2L images).

Recovers SRe2L images for a subset of ImageNet-1K classes, relabels them with
seeded views, compresses the 1000-class labels with every codec at every all-in
ratio through real archives, and reports label fidelity and the ImageNet-1K
storage table (labelzip.bench.imagenet; docs/imagenet-track.md).

The same run is ``labelzip bench imagenet`` (its flags and config come from
labelzip.cli.bench); this script adds ``--stem``, ``--machine-note`` and
``--report-from`` (re-render a saved JSON) and runs on one thread by default.

Usage (the committed result was made with the command in its header):
    nice -n 5 python benchmarks/imagenet_track.py --threads 1 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from labelzip.bench.imagenet import ImagenetTrackResult, write_imagenet_report
from labelzip.cli import run_command
from labelzip.cli.bench import (
    add_imagenet_flags,
    add_machine_flags,
    run_imagenet_report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_imagenet_flags(parser)
    add_machine_flags(parser)
    parser.set_defaults(threads=1)
    parser.add_argument(
        "--out", "--out-dir", dest="out_dir", default="benchmarks/results"
    )
    parser.add_argument("--stem", default="imagenet_track")
    parser.add_argument("--machine-note", default=None, help="free text for the report")
    parser.add_argument(
        "--report-from",
        default=None,
        help="re-render the .md/.png (and JSON) from a saved JSON instead of running",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.report_from:
        saved = json.loads(Path(args.report_from).read_text())
        result = ImagenetTrackResult.from_dict(saved)
        paths = write_imagenet_report(
            result, args.out_dir, meta=saved.get("meta"), stem=args.stem
        )
        print("wrote", *paths.values())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = "python benchmarks/imagenet_track.py " + shlex.join(sys.argv[1:])
    result, paths = run_imagenet_report(
        args, command=command, stem=args.stem, machine_note=args.machine_note
    )
    for row in result.rows:
        print(
            f"  {row.label:10s} {row.target_ratio or 1:5g}x -> {row.ratio:7.1f}x "
            f"KL4 {row.kl.get('T4', float('nan')):.4g} top1 {row.top1:.4f}",
            flush=True,
        )
    print("wrote", *paths.values())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("bench imagenet", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
