"""``labelzip import``: another framework's label store -> labelzip archive."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from labelzip.accounting import REFERENCE_BYTES_PER_VALUE, StorageAccount
from labelzip.archive import DEFAULT_CHUNK_SIZE, ArchiveMetadata, ArchiveReader
from labelzip.cli import print_error, run_command
from labelzip.cli._common import (
    add_auto_options,
    add_codec_target_options,
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
)
from labelzip.distributed import join, leave
from labelzip.errors import ConfigError
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import (
    DEFAULT_FIT_SAMPLE,
    CodecChoice,
    import_store,
    open_import,
)
from labelzip.interop.formats import available_formats, resolve_format_name
from labelzip.io import check_output_path
from labelzip.pipelines.chunked import discard_partials, sigterm_as_interrupt
from labelzip.pipelines.import_run import import_chunked
from labelzip.selection.auto import AUTO_KEY, format_table

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip import --format sre2l FKD_soft_label/ --sampler-seed 42 --batch-size 1024 -o labels.lz
  labelzip import --format lpqld soft_labels/ -o labels.lz            # lossless: top-k stays top-k
  labelzip import --format lpld soft_labels/ --codec vqae --ratio 40 -o labels.lz
  labelzip import --format lpld soft_labels/ --ratio 40 -o labels.lz   # --codec auto
  labelzip import --format fkd FKD_soft_label/ --num-classes 1000 -o labels.lz
  labelzip import --format lpld soft_labels/ --codec vqae --ratio 40 --resume -o labels.lz
  torchrun --nproc_per_node 8 -m labelzip import --format lpld soft_labels/ --codec vqae --ratio 40 -o labels.lz

With a target and no --codec, auto measures the codecs on held-out labels and
picks one (docs/auto.md). Without --codec or a target the import is lossless (fp16 logits stay fp16, top-k stays top-k):
`labelzip export` gives every file back element for element. --ratio counts every
byte of the archive (augmentation side information included) against dense fp16.
See docs/interop.md for each format.

Under torchrun, rank 0 fits (or auto chooses) the codec, every rank encodes a
share of the chunks into a partial file beside the output, and rank 0 joins
them into one archive, byte-identical to a single-process import. A killed
run keeps its partial files: rerun it with --resume (same store, options and
number of processes) to continue from its last complete chunk. In one process
only a run started with --resume keeps them (without it the archive is written
directly): start a long import with --resume. See docs/scaling.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip import",
        description="Import another framework's soft-label store into an archive.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="the store's folder (e.g. FKD_soft_label/)")
    p.add_argument(
        "--format",
        required=True,
        metavar="FORMAT",
        help=f"the store's framework: {', '.join(available_formats())}",
    )
    p.add_argument("-o", "--output", required=True, help="archive to write")
    add_codec_target_options(
        p,
        required=False,
        auto=True,
        codec_help="re-encode with this codec (default: auto with a target, else "
        "lossless for what the files hold)",
        target_suffix=" to meet (re-encodes; --codec auto by default)",
    )
    add_auto_options(p)
    store = p.add_argument_group("what the files do not say")
    store.add_argument(
        "--sampler-seed",
        type=int,
        help="seed of the RandomSampler that ordered the images (sre2l / cda)",
    )
    store.add_argument(
        "--batch-size", type=int, help="images per batch of that sampler (sre2l / cda)"
    )
    store.add_argument("--num-classes", type=int, help="C (fkd: files hold top-k only)")
    store.add_argument(
        "--temperature", type=float, help="temperature of stored probabilities (fkd)"
    )
    store.add_argument(
        "--store-opt",
        action="append",
        metavar="KEY=VALUE",
        help="format-specific option (repeatable)",
    )
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--seed", type=int, default=0, help="seed of the fit sample and fit")
    p.add_argument(
        "--fit-sample",
        type=int,
        default=DEFAULT_FIT_SAMPLE,
        help="labels a re-encoding codec is fitted on at most (a seeded sample)",
    )
    p.add_argument(
        "--reference", default="fp16", choices=sorted(REFERENCE_BYTES_PER_VALUE)
    )
    p.add_argument("--teacher", help="teacher model identifier to record")
    p.add_argument("--dataset-fingerprint", help="dataset identifier to record")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="user metadata")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep partial files beside the output as chunks are encoded, and "
        "continue a killed run from its last complete chunk (same store, options "
        "and number of processes)",
    )
    add_dist_timeout_option(p)
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("import", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    args.format = resolve_format_name(args.format)
    out = check_output_path(args.output, [args.path])
    store = Path(args.path).resolve()
    if store.is_dir() and store in Path(args.output).resolve().parents:
        raise ConfigError(
            f"output {args.output!r} is inside the store {args.path!r}; labelzip never "
            "writes into an input: choose a path outside it"
        )
    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.fit_sample < 1:
        raise ConfigError(f"--fit-sample must be >= 1, got {args.fit_sample}")
    if args.codec not in (None, "auto"):
        load_codec_class(args.codec)
    options = ImportOptions(
        sampler_seed=args.sampler_seed,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        temperature=args.temperature,
        extra=parse_key_values(args.store_opt, "--store-opt"),
    )
    choice = CodecChoice(
        name=args.codec,
        options=codec_options(args),
        goal=rate_goal(args),
        seed=args.seed,
        fit_sample=args.fit_sample,
        auto=auto_config(args, seed=args.seed, device=resolve_device("cpu")),
    )
    if args.codec is None and choice.options:
        raise ConfigError("codec options (--opt, --k, --decoder) need --codec")
    metadata = ArchiveMetadata(
        dataset_fingerprint=args.dataset_fingerprint,
        teacher=args.teacher,
        user=parse_key_values(args.meta, "--meta"),
    )
    ranks, _ = join(resolve_device("cpu"), args.dist_timeout)
    try:
        if not ranks.is_distributed and not args.resume:
            discard_partials(out)  # of a killed --resume run: this one starts over
            with progress("importing", None, enabled=not args.quiet) as advance:
                account = import_store(
                    args.path,
                    args.format,
                    out,
                    options=options,
                    codec=choice,
                    chunk_size=args.chunk_size,
                    metadata=metadata,
                    reference=args.reference,
                    on_progress=advance,
                )
        else:
            show = not args.quiet and ranks.is_main
            with (
                sigterm_as_interrupt(),
                progress("importing", None, enabled=show) as advance,
            ):
                plan = open_import(
                    args.path,
                    args.format,
                    options=options,
                    codec=choice,
                    metadata=metadata,
                )
                shared = import_chunked(
                    out,
                    args.path,
                    plan,
                    chunk_size=args.chunk_size,
                    reference=args.reference,
                    ranks=ranks,
                    resume=args.resume,
                    on_chunk=advance,
                    report=lambda exc: print_error("import", exc),
                )
            if shared is None:  # a rank other than 0: rank 0 reports
                return 0
            account = shared
    finally:
        leave(ranks)
    _report(out, account, args)
    return 0


def _report(out: Path, account: StorageAccount, args: argparse.Namespace) -> None:
    with ArchiveReader(out) as reader:  # the auto record, when auto chose
        record = reader.info()["user"].get(AUTO_KEY)
    if args.json:
        extra = {"auto": record} if record is not None else {}
        print_json(
            {"output": str(out), "format": args.format, **account.to_dict(), **extra}
        )
        return
    for line in format_table(record) if record is not None else []:
        print(line)
    print(
        f"wrote {out}: {account.num_labels} labels x {account.num_classes} classes "
        f"from {args.format}, codec {account.codec}"
    )
    print(
        f"  {format_bytes(account.total_bytes)} all-in = payload "
        f"{format_bytes(account.payload_bytes)} + side {format_bytes(account.side_bytes)}"
        f" + model {format_bytes(account.model_bytes)} + header "
        f"{format_bytes(account.header_bytes)}"
    )
    print(
        f"  ratio {account.ratio:.2f}x vs dense {account.reference}, "
        f"{account.bits_per_label:.1f} bits per label"
    )
