"""``labelzip export``: an imported archive -> the framework's own label files."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from labelzip.cli import run_command
from labelzip.cli._common import add_json_option, parse_key_values, print_json
from labelzip.interop.base import ExportOptions
from labelzip.interop.convert import export_archive
from labelzip.interop.formats import available_formats

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip export labels.lz --format sre2l -o FKD_soft_label/
  labelzip export labels.lz -o soft_labels/        # the format the archive was imported from

The folder is written under a temporary name beside -o and renamed into place
when complete. An existing non-empty -o is refused unless --force (which
replaces it only once the new folder is complete).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip export",
        description="Write an imported archive back as the framework's own files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("archive", help="archive made by `labelzip import`")
    p.add_argument(
        "--format",
        choices=available_formats(),
        help="format to write (default and only choice: the one imported from)",
    )
    p.add_argument("-o", "--output", required=True, help="folder to create")
    p.add_argument(
        "--force", action="store_true", help="replace an existing output folder"
    )
    p.add_argument(
        "--store-opt",
        action="append",
        metavar="KEY=VALUE",
        help="format-specific option (repeatable)",
    )
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("export", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    options = ExportOptions(extra=parse_key_values(args.store_opt, "--store-opt"))
    out = export_archive(
        args.archive, args.format, args.output, options=options, force=args.force
    )
    if args.json:
        print_json({"output": str(out), "archive": args.archive})
    else:
        print(f"wrote {out}")
    return 0
