"""``labelzip compress``: teacher logits file -> labelzip archive."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from labelzip.accounting import REFERENCE_BYTES_PER_VALUE, StorageAccount
from labelzip.archive import (
    DEFAULT_CHUNK_SIZE,
    ArchiveMetadata,
    ArchiveWriter,
    Layout,
    fit_for_target,
    rate_note,
)
from labelzip.cli import run_command
from labelzip.cli._common import (
    add_codec_option_flags,
    add_device_option,
    add_json_option,
    add_rate_options,
    codec_options,
    format_bytes,
    load_codec_class,
    parse_key_values,
    print_json,
    progress,
    resolve_device,
    with_run_defaults,
)
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import available_codecs, create_codec
from labelzip.errors import ConfigError, InputError
from labelzip.io import check_output_path, load_logits

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip compress logits.safetensors --codec topk --k 10 -o labels.lz
  labelzip compress logits.npy --codec dense --prune-keep 0.25 -o labels.lz
  labelzip compress logits.pt --codec topk --ratio 50 -o labels.lz
  labelzip compress views.safetensors --codec vqae --bits-per-label 64 --device cuda -o labels.lz

LOGITS holds (N, C) labels or (N, E, C) labels of E views per sample (--dims names
them; the relabel pipeline writes epoch,sample). --ratio counts every byte of the
archive against dense fp16 logits.
"""

# Batch size for streaming labels into fit() and the writer.
_BATCH = 4096


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip compress",
        description="Compress a teacher-logits file into a labelzip archive.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logits", help="(N, C) or (N, E, C) logits: .safetensors, .npy, .pt")
    p.add_argument("-o", "--output", required=True, help="archive to write")
    p.add_argument("--codec", required=True, choices=available_codecs())
    add_rate_options(p, suffix=" to meet")
    add_codec_option_flags(
        p,
        opt_help="codec option (repeatable), typed by the codec's config, e.g. --opt k=10",
        decoder_help="shortcut for --opt decoder=NAME (topk: mr, ms, mrs)",
    )
    p.add_argument(
        "--prune-keep",
        type=float,
        metavar="F",
        help="LPLD pruning: keep labels for this fraction of each sample's views",
    )
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--seed", type=int, default=0, help="seed of pruning and fitting")
    p.add_argument("--key", help="tensor name inside a multi-tensor LOGITS file")
    p.add_argument("--dims", help="names of the label dims, e.g. sample,view")
    p.add_argument(
        "--reference", default="fp16", choices=sorted(REFERENCE_BYTES_PER_VALUE)
    )
    p.add_argument("--teacher", help="teacher model identifier to record")
    p.add_argument("--dataset-fingerprint", help="dataset identifier to record")
    p.add_argument("--class-names", help="JSON list or text file, one name per line")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="user metadata")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_option(p, "fit the codec")
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("compress", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    out = check_output_path(args.output, [args.logits, args.class_names])
    device = resolve_device(args.device)
    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    logits = load_logits(args.logits, key=args.key)
    layout = _layout(logits, args.dims)
    rows = logits.reshape(layout.num_labels, logits.shape[-1])
    num_classes = int(rows.shape[1])
    plan = _prune_plan(layout, args)
    metadata = _metadata(args)
    options = with_run_defaults(
        args.codec, codec_options(args), seed=args.seed, device=device
    )
    codec = _fitted_codec(args, rows, layout, num_classes, plan, metadata, options)
    account = _write(out, codec, rows, layout, plan, metadata, args)
    if args.ratio is not None or args.bits_per_label is not None:
        note = rate_note(
            account, codec, ratio=args.ratio, bits_per_label=args.bits_per_label
        )
        account = dataclasses.replace(account, rate_note=note)
    _report(out, account, args)
    return 0


def _layout(logits: torch.Tensor, dims: str | None) -> Layout:
    names = [d.strip() for d in dims.split(",")] if dims else None
    if names is not None and len(names) != logits.dim() - 1:
        raise InputError(
            f"--dims names {len(names)} dims but the logits have shape "
            f"{tuple(logits.shape)} ({logits.dim() - 1} label dims + classes)"
        )
    return Layout.for_shape(logits.shape[:-1], names)


def _prune_plan(layout: Layout, args: argparse.Namespace) -> PrunePlan | None:
    if args.prune_keep is None:
        return None
    return PrunePlan(layout.dims, layout.shape, args.prune_keep, args.seed)


def _metadata(args: argparse.Namespace) -> ArchiveMetadata:
    names: tuple[str, ...] | None = None
    if args.class_names:
        path = Path(args.class_names)
        if not path.is_file():
            raise InputError(f"class names file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = [line.strip() for line in text.splitlines() if line.strip()]
        if not isinstance(loaded, list):
            raise InputError(f"{path.name} must hold a JSON list or one name per line")
        names = tuple(str(n) for n in loaded)
    return ArchiveMetadata(
        class_names=names,
        dataset_fingerprint=args.dataset_fingerprint,
        teacher=args.teacher,
        user=parse_key_values(args.meta, "--meta"),
    )


def _fitted_codec(
    args: argparse.Namespace,
    rows: torch.Tensor,
    layout: Layout,
    num_classes: int,
    plan: PrunePlan | None,
    metadata: ArchiveMetadata,
    options: dict[str, Any],
) -> Codec:
    load_codec_class(args.codec)
    kept = plan.kept_indices() if plan is not None else None
    num_stored = plan.num_kept if plan is not None else layout.num_labels
    with progress(f"fitting {args.codec}", None, enabled=not args.quiet) as advance:

        def source() -> Iterator[torch.Tensor]:
            for batch in _batches(rows, kept):
                advance(batch.shape[0])
                yield batch

        if args.ratio is None and args.bits_per_label is None:
            codec = create_codec(args.codec, **options)
            return codec.fit(source, num_labels=num_stored)
        return fit_for_target(
            args.codec,
            source,
            layout=layout,
            num_classes=num_classes,
            ratio=args.ratio,
            bits_per_label=args.bits_per_label,
            chunk_size=args.chunk_size,
            prune=plan,
            metadata=metadata,
            reference=args.reference,
            **options,
        )


def _batches(
    rows: torch.Tensor, index: torch.Tensor | None, size: int = _BATCH
) -> Iterator[torch.Tensor]:
    count = rows.shape[0] if index is None else index.numel()
    for start in range(0, count, size):
        if index is None:
            yield rows[start : start + size]
        else:
            yield rows[index[start : start + size]]


def _write(
    out: Path,
    codec: Codec,
    rows: torch.Tensor,
    layout: Layout,
    plan: PrunePlan | None,
    metadata: ArchiveMetadata,
    args: argparse.Namespace,
) -> StorageAccount:
    with (
        progress("encoding", rows.shape[0], enabled=not args.quiet) as advance,
        ArchiveWriter(
            out,
            codec,
            layout=layout,
            chunk_size=args.chunk_size,
            prune=plan,
            metadata=metadata,
            reference=args.reference,
        ) as writer,
    ):
        for batch in _batches(rows, None):
            writer.write(batch)
            advance(batch.shape[0])
    assert writer.account is not None
    return writer.account


def _report(out: Path, account: StorageAccount, args: argparse.Namespace) -> None:
    if args.json:
        print_json({"output": str(out), **account.to_dict()})
        return
    print(
        f"wrote {out}: {account.num_labels} labels x {account.num_classes} classes, "
        f"codec {account.codec}"
        + (f" (pruned, keep {args.prune_keep})" if args.prune_keep is not None else "")
    )
    print(
        f"  {format_bytes(account.total_bytes)} all-in = payload "
        f"{format_bytes(account.payload_bytes)} + model {format_bytes(account.model_bytes)}"
        f" + header {format_bytes(account.header_bytes)}"
    )
    print(
        f"  ratio {account.ratio:.2f}x vs dense {account.reference} "
        f"({format_bytes(account.reference_bytes)}), "
        f"{account.bits_per_label:.1f} bits per label"
    )
    if account.rate_note is not None:
        print(f"  note: {account.rate_note}")
