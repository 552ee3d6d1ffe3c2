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
from labelzip.archive import DEFAULT_CHUNK_SIZE, ArchiveMetadata
from labelzip.cli import print_error, run_command
from labelzip.cli._common import (
    add_auto_options,
    add_codec_target_options,
    add_device_option,
    add_dist_timeout_option,
    add_json_option,
    auto_config,
    codec_options,
    format_bytes,
    load_codec_class,
    parse_key_values,
    print_json,
    progress,
    rate_goal,
    resolve_device,
    with_run_defaults,
)
from labelzip.codecs.base import Codec
from labelzip.distributed import join, leave, run_on_main
from labelzip.errors import ConfigError, InputError
from labelzip.io import check_output_path
from labelzip.logit_store import open_logits
from labelzip.pipelines.compress import (
    AUTO,
    CompressSettings,
    auto_prune_keep,
    choose_auto,
    fit_codec,
    label_layout,
    prune_plan,
)
from labelzip.pipelines.compress_run import compress_chunked, sigterm_as_interrupt
from labelzip.rate import rate_note
from labelzip.selection.auto import AutoChoice, resolve_codec_name, with_auto_record

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip compress logits.safetensors --ratio 40 -o labels.lz   # --codec auto
  labelzip compress logits.safetensors --codec topk --k 10 -o labels.lz
  labelzip compress logits.npy --codec dense --prune-keep 0.25 -o labels.lz
  labelzip compress views.safetensors --dims epoch,sample --codec topk --decoder ms \
      --k 2 --ratio 100 --auto-prune -o labels.lz   # the most views k = 2 affords
  labelzip compress logits.pt --codec topk --ratio 50 -o labels.lz
  labelzip compress views.safetensors --codec vqae --bits-per-label 64 --device cuda -o labels.lz
  labelzip compress shards/ --codec vqae --ratio 40 -o labels.lz   # a folder of shards
  labelzip compress big.npy --codec vqae --ratio 40 --resume -o labels.lz  # after a kill
  torchrun --nproc_per_node 8 -m labelzip compress big.npy --codec vqae --ratio 40 -o labels.lz

LOGITS holds (N, C) labels or (N, E, C) labels of E views per sample (--dims names
them; the relabel pipeline writes epoch,sample). --ratio counts every byte of the
archive against dense fp16 logits. With a target and no --codec, auto chooses the
codec and the share of each sample's views to store from held-out measurements
(docs/auto.md).

Under torchrun, rank 0 fits the codec, every rank encodes a share of the chunks
into a partial file beside the output, and rank 0 joins them into one archive,
byte-identical to a single-process run. A killed run keeps its partial files:
rerun it with --resume. Under torchrun, auto is chosen on rank 0 and sent to the
other ranks. See docs/scaling.md.
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
    add_codec_target_options(
        p,
        required=False,
        auto=True,
        codec_help="codec; auto (the default with --ratio / --bits-per-label) "
        "measures the candidates on held-out labels and picks the best",
        opt_help="codec option (repeatable), typed by the codec's config, e.g. --opt k=10",
        decoder_help="shortcut for --opt decoder=NAME (topk: mr, ms, mrs)",
    )
    prune = p.add_mutually_exclusive_group()
    prune.add_argument(
        "--prune-keep",
        type=float,
        metavar="F",
        help="LPLD pruning: keep labels for this fraction of each sample's views",
    )
    prune.add_argument(
        "--auto-prune",
        action="store_true",
        help="keep labels for the most views per sample at which the named codec "
        "meets the target (LPLD pruning; needs an epoch or view dim)",
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
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from its last complete chunk (same input, "
        "options and number of processes)",
    )
    add_dist_timeout_option(p)
    add_auto_options(p)
    add_device_option(p, "fit the codec (under torchrun: cuda means cuda:LOCAL_RANK)")
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("compress", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    out = check_output_path(args.output, [args.logits, args.class_names])
    device = resolve_device(args.device)
    goal = rate_goal(args)
    options = codec_options(args)
    codec = resolve_codec_name(
        args.codec,
        options,
        has_target=goal is not None,
        default=None,
        auto_prune=args.auto_prune,
    )
    if codec is None:
        raise ConfigError(
            "name a codec with --codec, or give a target (--ratio / --bits-per-label) "
            "and let --codec auto choose"
        )
    if codec != AUTO:
        load_codec_class(codec)
        options = with_run_defaults(codec, options, seed=args.seed, device=device)
    settings = CompressSettings(
        codec=codec,
        options=options,
        goal=goal,
        chunk_size=args.chunk_size,
        prune_keep=args.prune_keep,
        seed=args.seed,
        dims=tuple(d.strip() for d in args.dims.split(",")) if args.dims else None,
        reference=args.reference,
    )
    ranks, device = join(device, args.dist_timeout)
    started = time.perf_counter()
    seconds = {"fit": 0.0, "encode": 0.0}
    show = not args.quiet and ranks.is_main
    choice: AutoChoice | None = None
    try:
        with sigterm_as_interrupt(), open_logits(args.logits, key=args.key) as store:
            layout = label_layout(store, settings.dims)
            metadata = _metadata(args)
            if codec == AUTO:
                config = auto_config(args, seed=args.seed, device=device)

                def choose() -> AutoChoice:
                    with progress("choosing a codec", None, enabled=show):
                        return choose_auto(store, settings, layout, metadata, config)

                choice = run_on_main(ranks, choose, "choosing the codec")
                settings, metadata = _resolved(settings, choice, metadata, device)
                seconds["auto"] = time.perf_counter() - started
            elif args.auto_prune:
                keep = auto_prune_keep(settings, layout, store.num_classes, metadata)
                settings = dataclasses.replace(settings, prune_keep=keep)
            plan = prune_plan(layout, settings)

            def fit() -> Codec:
                fit_started = time.perf_counter()
                with progress(f"fitting {settings.codec}", None, enabled=show) as step:
                    fitted = fit_codec(store, settings, layout, plan, metadata, step)
                seconds["fit"] = time.perf_counter() - fit_started
                return fitted

            with progress("encoding", None, enabled=show) as advance:
                codec_obj, account = compress_chunked(
                    out,
                    store,
                    settings,
                    layout,
                    plan,
                    metadata,
                    fit=fit,
                    ranks=ranks,
                    resume=args.resume,
                    on_chunk=advance,
                    report=lambda exc: print_error("compress", exc),
                )
        seconds["encode"] = (
            time.perf_counter() - started - seconds["fit"] - seconds.get("auto", 0.0)
        )
    finally:
        leave(ranks)
    if account is None:  # a rank other than 0: rank 0 reports
        return 0
    if settings.goal is not None:
        note = rate_note(account, codec_obj, settings.goal)
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
