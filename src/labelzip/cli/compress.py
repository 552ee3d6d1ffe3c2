"""``labelzip compress``: teacher logits file -> labelzip archive."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from labelzip.accounting import REFERENCE_BYTES_PER_VALUE, StorageAccount
from labelzip.archive import DEFAULT_CHUNK_SIZE, ArchiveMetadata, rate_note
from labelzip.cli import run_command
from labelzip.cli._common import (
    add_auto_options,
    add_codec_option_flags,
    add_device_option,
    add_json_option,
    add_rate_options,
    auto_config,
    codec_options,
    format_bytes,
    load_codec_class,
    parse_key_values,
    print_json,
    progress,
    resolve_device,
    with_run_defaults,
)
from labelzip.codecs.registry import available_codecs
from labelzip.errors import ConfigError, InputError
from labelzip.io import check_output_path
from labelzip.logit_store import open_logits
from labelzip.pipelines.compress import (
    AUTO,
    CompressSettings,
    choose_auto,
    fit_codec,
    label_layout,
    prune_plan,
    write_archive,
)
from labelzip.selection.auto import AutoChoice, with_auto_record

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip compress logits.safetensors --ratio 40 -o labels.lz   # --codec auto
  labelzip compress logits.safetensors --codec topk --k 10 -o labels.lz
  labelzip compress logits.npy --codec dense --prune-keep 0.25 -o labels.lz
  labelzip compress logits.pt --codec topk --ratio 50 -o labels.lz
  labelzip compress views.safetensors --codec vqae --bits-per-label 64 --device cuda -o labels.lz
  labelzip compress shards/ --codec vqae --ratio 40 -o labels.lz   # a folder of shards

LOGITS holds (N, C) labels or (N, E, C) labels of E views per sample (--dims names
them; the relabel pipeline writes epoch,sample). --ratio counts every byte of the
archive against dense fp16 logits. With a target and no --codec, auto chooses the
codec and the share of each sample's views to store from held-out measurements
(docs/auto.md).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip compress",
        description="Compress a teacher-logits file into a labelzip archive.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "logits",
        help="(N, C) or (N, E, C) logits: .safetensors, .npy, .pt, or a folder of "
        "such shards (read in name order, streamed: never loaded whole)",
    )
    p.add_argument("-o", "--output", required=True, help="archive to write")
    p.add_argument(
        "--codec",
        choices=[AUTO, *available_codecs()],
        help="codec; auto (the default with --ratio / --bits-per-label) measures "
        "the candidates on held-out labels and picks the best",
    )
    add_rate_options(p, suffix=" to meet")
    add_auto_options(p)
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
    has_target = args.ratio is not None or args.bits_per_label is not None
    codec = args.codec or (AUTO if has_target else None)
    if codec is None:
        raise ConfigError(
            "name a codec with --codec, or give a target (--ratio / --bits-per-label) "
            "and let --codec auto choose"
        )
    options = codec_options(args)
    if codec == AUTO and options:
        raise ConfigError("codec options (--opt, --k, --decoder) need a named --codec")
    if codec != AUTO:
        load_codec_class(codec)
        options = with_run_defaults(codec, options, seed=args.seed, device=device)
    settings = CompressSettings(
        codec=codec,
        options=options,
        ratio=args.ratio,
        bits_per_label=args.bits_per_label,
        chunk_size=args.chunk_size,
        prune_keep=args.prune_keep,
        seed=args.seed,
        dims=tuple(d.strip() for d in args.dims.split(",")) if args.dims else None,
        reference=args.reference,
    )
    choice: AutoChoice | None = None
    with open_logits(args.logits, key=args.key) as store:
        layout = label_layout(store, settings.dims)
        plan = prune_plan(layout, settings)
        metadata = _metadata(args)
        started = time.perf_counter()
        if codec == AUTO:
            config = auto_config(args, seed=args.seed, device=device)
            with progress("choosing a codec", None, enabled=not args.quiet):
                choice = choose_auto(store, settings, layout, metadata, config)
            settings, metadata = _resolved(settings, choice, metadata, device)
            plan = prune_plan(layout, settings)
        chosen = time.perf_counter()
        with progress(
            f"fitting {settings.codec}", None, enabled=not args.quiet
        ) as advance:
            codec_obj = fit_codec(store, settings, layout, plan, metadata, advance)
        fitted = time.perf_counter()
        with progress("encoding", store.num_labels, enabled=not args.quiet) as advance:
            account = write_archive(
                out, store, codec_obj, settings, layout, plan, metadata, advance
            )
        seconds = {"fit": fitted - chosen, "encode": time.perf_counter() - fitted}
        if choice is not None:
            seconds["auto"] = chosen - started
    if settings.has_target:
        note = rate_note(
            account, codec_obj, ratio=args.ratio, bits_per_label=args.bits_per_label
        )
        account = dataclasses.replace(account, rate_note=note)
    _report(out, account, seconds, args, settings, choice)
    return 0


def _resolved(
    settings: CompressSettings,
    choice: AutoChoice,
    metadata: ArchiveMetadata,
    device: torch.device,
) -> tuple[CompressSettings, ArchiveMetadata]:
    """The settings and metadata of the auto winner (full schedule, its view budget)."""
    win = choice.winner
    keep = settings.prune_keep
    if keep is None and win.keep_fraction < 1.0:
        keep = win.keep_fraction
    options = with_run_defaults(
        win.codec, dict(win.options), seed=settings.seed, device=device
    )
    resolved = dataclasses.replace(
        settings, codec=win.codec, options=options, prune_keep=keep
    )
    return resolved, with_auto_record(metadata, choice)


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


def _report(
    out: Path,
    account: StorageAccount,
    seconds: dict[str, float],
    args: argparse.Namespace,
    settings: CompressSettings,
    choice: AutoChoice | None,
) -> None:
    """Print the archive's all-in account (and the auto table); ``--json`` adds
    the pass times."""
    if args.json:
        extra = {"auto": choice.to_dict(report=True)} if choice is not None else {}
        print_json(
            {"output": str(out), **account.to_dict(), "seconds": seconds, **extra}
        )
        return
    if choice is not None:
        for line in choice.table():
            print(line)
    keep = settings.prune_keep
    print(
        f"wrote {out}: {account.num_labels} labels x {account.num_classes} classes, "
        f"codec {account.codec}"
        + (f" (pruned, keep {keep:g})" if keep is not None else "")
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
