"""``labelzip info``: an archive's codec, layout and all-in size."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from labelzip.archive import ArchiveReader
from labelzip.cli import run_command
from labelzip.cli._common import add_json_option, format_bytes, print_json
from labelzip.codecs.registry import codec_name
from labelzip.selection.auto import AUTO_KEY, format_table

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip info labels.lz
  labelzip info labels.lz --json --verify

--verify checks what the archive's format version binds ("integrity" in the
output; docs/format.md, "What --verify guarantees").
total_bytes is the file size; ratio = reference_bytes / total_bytes (all-in, against
dense fp16 logits of every represented label unless the archive says otherwise).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip info",
        description="Show an archive's codec, layout and all-in storage account.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("archive", help="labelzip archive")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check every tensor against its sha256 digest (format 3: its "
        "header entry too) and rebuild the codec from its stored tensors",
    )
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("info", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    with ArchiveReader(args.archive) as reader:
        if args.verify:
            reader.verify()
        info = reader.info()
    info["verified"] = bool(args.verify)
    if args.json:
        print_json(info)
    else:
        _print_text(args.archive, info)
    return 0


def _codec_label(info: dict[str, Any]) -> str:
    """``name (id N)``, or ``name (stored key K, id N)`` for a renamed codec."""
    key, name = info["codec"], codec_name(info["codec"])
    stored = f"stored key {key}, " if name != key else ""
    return f"{name} ({stored}id {info['codec_id']})"


def _print_text(path: str, info: dict[str, Any]) -> None:
    layout = info["layout"]
    dims = ", ".join(
        f"{d}={s}" for d, s in zip(layout["dims"], layout["shape"], strict=True)
    )
    prune = info["prune"]
    rows = [
        ("archive", f"{path} (labelzip format v{info['format_version']})"),
        ("codec", f"{_codec_label(info)} {info['codec_config']}"),
        ("labels", f"{info['num_labels']} x {info['num_classes']} classes ({dims})"),
        ("stored", f"{info['num_stored']} labels in {info['num_chunks']} chunks"),
        (
            "pruning",
            "none"
            if prune is None
            else f"keep {prune['keep_fraction']}, seed {prune['seed']}",
        ),
        ("payload", format_bytes(info["payload_bytes"])),
        ("model", format_bytes(info["model_bytes"])),
        ("side", format_bytes(info["side_bytes"])),
        ("header", format_bytes(info["header_bytes"])),
        ("total", f"{format_bytes(info['total_bytes'])} ({info['total_bytes']} bytes)"),
        (
            "ratio",
            f"{info['ratio']:.2f}x vs dense {info['reference']} ({format_bytes(info['reference_bytes'])})",
        ),
        ("bits/label", f"{info['bits_per_label']:.2f}"),
    ]
    if info["teacher"]:
        rows.append(("teacher", info["teacher"]))
    if info["dataset_fingerprint"]:
        rows.append(("dataset", info["dataset_fingerprint"]))
    if info["verified"]:
        rows.append(("checksums", f"all ok ({info['integrity']})"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    record = (info.get("user") or {}).get(AUTO_KEY)
    if isinstance(record, dict):
        try:
            lines = format_table(record)
        except (KeyError, TypeError, ValueError):
            lines = ["auto record present but not in the form this labelzip reads"]
        for line in lines:
            print(line)
