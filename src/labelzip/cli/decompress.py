"""``labelzip decompress``: archive -> dense float32 logits (.safetensors)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from labelzip.archive import ArchiveReader
from labelzip.archive.format import encode_container_header
from labelzip.cli import run_command
from labelzip.cli._common import (
    add_device_option,
    add_json_option,
    format_bytes,
    print_json,
    progress,
    resolve_device,
)
from labelzip.errors import InputError
from labelzip.io import atomic_path, check_output_path

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip decompress labels.lz -o logits.safetensors
  labelzip decompress labels.lz -o logits.safetensors --device cuda

The output holds one float32 tensor "logits" of shape (*layout, C), e.g. (N, E, C);
labels a pruned archive does not store are filled with the kept label they reuse.
Decoders that put no mass on some classes (topk mr) write -inf there.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip decompress",
        description="Decode an archive back to dense float32 logits.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("archive", help="labelzip archive")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(p)
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("decompress", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith(".safetensors"):
        raise InputError(f"output {args.output!r} must end in .safetensors")
    out = check_output_path(args.output, [args.archive])
    device = resolve_device(args.device)
    with ArchiveReader(args.archive) as reader:
        shape = [*reader.layout.shape, reader.num_classes]
        nbytes = reader.num_labels * reader.num_classes * 4
        metadata = {
            "labelzip_codec": reader.codec_name,
            "labelzip_dims": json.dumps(list(reader.layout.dims)),
        }
        prefix, _ = encode_container_header(
            metadata, [("logits", "F32", shape, nbytes)]
        )
        with (
            atomic_path(out) as tmp,
            open(tmp, "wb") as handle,
            progress("decoding", reader.num_labels, enabled=not args.quiet) as advance,
        ):
            handle.write(prefix)
            for batch in reader.decode_all(device=device):
                data = batch.to("cpu").contiguous().view(-1).numpy()
                handle.write(data.tobytes())
                advance(batch.shape[0])
            handle.flush()
            os.fsync(handle.fileno())
        _report(out, shape, args.json)
    return 0


def _report(out: Path, shape: list[int], as_json: bool) -> None:
    size = out.stat().st_size
    if as_json:
        print_json(
            {"output": str(out), "shape": shape, "dtype": "float32", "bytes": size}
        )
    else:
        print(f"wrote {out}: float32 logits {tuple(shape)}, {format_bytes(size)}")
