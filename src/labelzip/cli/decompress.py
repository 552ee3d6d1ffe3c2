"""``labelzip decompress``: archive -> dense float32 logits (.safetensors or .npy).

The output is streamed: its header is written first (the shape and dtype are
known from the archive), then each decoded batch goes straight to its place in
a temporary file beside the destination, renamed over it once complete. Memory
stays at one decoded batch (plus, for pruned archives, what
:meth:`ArchiveReader.decode_all` holds), whatever the number of labels.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from labelzip.archive import ArchiveReader
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
from labelzip.io import check_output_path
from labelzip.logit_writer import NpyStreamWriter, SafetensorsStreamWriter

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip decompress labels.lz -o logits.safetensors
  labelzip decompress labels.lz -o logits.safetensors --device cuda
  labelzip decompress labels.lz -o logits.npy

The output holds one float32 tensor "logits" of shape (*layout, C), e.g. (N, E, C)
(a .npy output holds that array, without the codec/dims metadata); it is written
batch by batch, so memory stays flat whatever the archive's size;
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
    p.add_argument(
        "-o", "--output", required=True, help="output .safetensors or .npy file"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(p)
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("decompress", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".safetensors", ".npy"):
        raise InputError(f"output {args.output!r} must end in .safetensors or .npy")
    out = check_output_path(args.output, [args.archive])
    device = resolve_device(args.device)
    with ArchiveReader(args.archive) as reader:
        shape = [*reader.layout.shape, reader.num_classes]
        writer = _open_writer(out, shape, reader, args.archive)
        with (
            writer,
            progress("decoding", reader.num_labels, enabled=not args.quiet) as advance,
        ):
            for batch in reader.decode_all(device=device):
                if isinstance(writer, NpyStreamWriter):
                    writer.write(batch)
                else:
                    writer.write("logits", batch)
                advance(batch.shape[0])
        _report(out, shape, args.json)
    return 0


def _open_writer(
    out: Path, shape: list[int], reader: ArchiveReader, archive: str
) -> SafetensorsStreamWriter | NpyStreamWriter:
    """The streamed output file: its header is written now, the rows as decoded."""
    if out.suffix.lower() == ".npy":
        return NpyStreamWriter(out, shape, torch.float32, inputs=[archive])
    metadata = {
        "labelzip_codec": reader.codec_name,
        "labelzip_dims": json.dumps(list(reader.layout.dims)),
    }
    return SafetensorsStreamWriter(
        out, {"logits": (shape, torch.float32)}, metadata, inputs=[archive]
    )


def _report(out: Path, shape: list[int], as_json: bool) -> None:
    size = out.stat().st_size
    if as_json:
        print_json(
            {"output": str(out), "shape": shape, "dtype": "float32", "bytes": size}
        )
    else:
        print(f"wrote {out}: float32 logits {tuple(shape)}, {format_bytes(size)}")
