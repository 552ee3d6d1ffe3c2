"""``labelzip relabel``: teacher labels for E replayable views of a distilled set."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn

from labelzip.augment import ViewConfig
from labelzip.cli import print_error, run_command
from labelzip.cli._common import (
    add_auto_options,
    add_codec_option_flags,
    add_device_option,
    add_dist_timeout_option,
    add_json_option,
    add_rate_options,
    auto_config,
    codec_options,
    format_bytes,
    one_line,
    print_json,
    progress_bar,
    rate_goal,
    resolve_device,
    validated,
)
from labelzip.codecs.registry import codec_choices
from labelzip.distill import DistilledSet
from labelzip.distributed import Ranks, join, leave, run_on_main
from labelzip.errors import ConfigError
from labelzip.io import check_output_path
from labelzip.pipelines.chunked import sigterm_as_interrupt
from labelzip.pipelines.relabel import (
    RelabelConfig,
    RelabelOutput,
    RelabelResult,
)
from labelzip.pipelines.relabel_ranks import relabel_chunked
from labelzip.pipelines.sources import (
    DATA_SOURCES,
    TEACHERS,
    load_teacher,
    load_train_data,
)
from labelzip.selection.auto import AUTO, resolve_codec_name
from labelzip.teachers.files import TRUST_PICKLE_HELP

# one_line and progress_bar live in _common; still importable from here for the
# commands that import them from this module (quickstart).
__all__ = ["build_parser", "main", "one_line", "parse_pair", "progress_bar"]

EPILOG = """examples:
  labelzip relabel random10.safetensors --epochs 300 -o dense.lz
  labelzip relabel random10.safetensors --epochs 300 --ratio 40 -o auto.lz  # --codec auto
  labelzip relabel random10.safetensors --epochs 300 --codec vqae --ratio 40 -o vqae.lz
  labelzip relabel sre2l10.safetensors --codec topk --k 2 --decoder ms --ratio 40 \\
      --auto-prune -o topk.lz
  labelzip relabel random10.safetensors --prune-keep 0.025 -o lpld.lz
  labelzip relabel in1k.safetensors --teacher efficientnet-lite0 --epochs 300 \\
      --codec vqae --ratio 40 --device cuda -o in1k-vqae.lz
  labelzip relabel mine.safetensors --dataset folder --data-dir train/ --epochs 30 -o mine.lz
  labelzip relabel mine.safetensors --teacher-file teacher.ts --epochs 30 -o mine.lz
  labelzip relabel in1k.safetensors --epochs 300 --codec vqae --ratio 40 \\
      --device cuda -o in1k-vqae.lz   # after a kill: the same line with --resume
  torchrun --nproc_per_node 8 -m labelzip relabel in1k.safetensors --epochs 300 \\
      --codec vqae --ratio 40 --device cuda -o in1k-vqae.lz

Teacher: a small one (convnet, resnet) trains on --dataset/--data-dir (give the
data options you gave `labelzip distill`: the set's source fingerprint is
checked), once, cached by the data's fingerprint; --teacher-file loads your own
as TorchScript (a pickled nn.Module only with --trust-pickle: unpickling runs
code from the file).

Every view (epoch e, image i) is a RandomResizedCrop + flip (+ CutMix/Mixup)
drawn from (seed, e, i): the archive stores the recipe once and `labelzip train`
replays the views exactly, so augmentations cost ~0 bytes per view.
--store-augmentations also stores SRe2L-style explicit parameters (17-37 B per
view) for comparison. --ratio counts every byte against dense fp16 logits;
--auto-prune keeps labels for fewer views per image (LPLD) when the codec
cannot meet the ratio with all of them. With a target and no --codec, auto
measures every candidate (the view-context codecs view-mix and ctx-transform
included) at several view budgets on held-out views and picks the best
(docs/auto.md); without a target the codec is dense.

The encoded chunks go to a partial file beside the output, which becomes the
archive when the run ends. Under torchrun, rank 0 labels the fit sample, chooses
the codec (auto) and fits it, every rank runs the teacher on its share of the
views and encodes them into its partial file, and rank 0 joins them into one
archive, byte-identical to a single-process run (--device cuda means
cuda:LOCAL_RANK). A killed run keeps its partial files: rerun it with --resume
(same set, teacher, options and number of processes) to continue from its last
complete chunk; the fit sample is labelled again, the views of the kept chunks
are not. See docs/scaling.md.
"""


def parse_pair(text: str, flag: str) -> tuple[float, float]:
    """``"0.08,1"`` -> ``(0.08, 1.0)``."""
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{flag} expects two numbers LOW,HIGH, got {text!r}"
        ) from None
    return low, high


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip relabel",
        description="Label E replayable views per distilled image and compress them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("set", help="distilled set (.safetensors from `labelzip distill`)")
    p.add_argument("-o", "--output", required=True, help="archive to write")
    t = p.add_argument_group("teacher")
    which = t.add_mutually_exclusive_group()
    which.add_argument(
        "--teacher",
        choices=TEACHERS,
        help="default: efficientnet-lite0 for 1000-class RGB sets without "
        "--dataset folder, else convnet",
    )
    which.add_argument(
        "--teacher-file",
        help="your own teacher: a TorchScript file (torch.jit.save) taking "
        "(B, C, H, W) views in 0..255 and returning logits",
    )
    t.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    t.add_argument("--teacher-epochs", type=int, default=3, help="small teacher epochs")
    t.add_argument(
        "--dataset",
        choices=DATA_SOURCES,
        default="fashion-mnist",
        help="what a small teacher trains on: fashion-mnist, or folder (--data-dir "
        "root/<class>/*.png, the data the set was distilled from)",
    )
    t.add_argument("--data-dir", help="Fashion-MNIST IDX folder, or the folder root")
    t.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="folder: convert images to 1 or 3 channels (default: the files' own)",
    )
    t.add_argument(
        "--image-size",
        type=int,
        help="folder: resize images to this side (default: the files' own size)",
    )
    c = p.add_argument_group("codec and rate")
    c.add_argument(
        "--codec",
        choices=[AUTO, *codec_choices()],
        help="codec (default: dense; auto with --ratio / --bits-per-label, which "
        "measures the candidates and view budgets on held-out views)",
    )
    add_codec_option_flags(c, opt_help="codec option")
    add_rate_options(c)
    prune = c.add_mutually_exclusive_group()
    prune.add_argument(
        "--prune-keep", type=float, metavar="F", help="LPLD keep fraction"
    )
    prune.add_argument(
        "--auto-prune", action="store_true", help="prune as needed to meet the target"
    )
    c.add_argument("--prune-seed", type=int, default=0)
    v = p.add_argument_group("views")
    v.add_argument("--epochs", type=int, default=30, help="views per image (E)")
    v.add_argument("--seed", type=int, default=0, help="seed of every view")
    v.add_argument("--scale", default="0.08,1", help="crop area range (default 0.08,1)")
    v.add_argument("--crop-ratio", default="0.75,1.3333", help="crop aspect range")
    v.add_argument("--flip-prob", type=float, default=0.5)
    v.add_argument("--mix", choices=("cutmix", "mixup", "none"), default="cutmix")
    v.add_argument("--mix-prob", type=float, default=1.0)
    v.add_argument("--mix-alpha", type=float, default=1.0)
    v.add_argument("--view-size", type=int, help="view side in px (default image size)")
    v.add_argument("--store-augmentations", action="store_true")
    p.add_argument(
        "--batch-size", type=int, default=256, help="views per teacher batch"
    )
    p.add_argument("--fit-views", type=int, default=16384, help="labels codecs fit on")
    p.add_argument("--chunk-size", type=int, default=4096, help="labels per chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep partial files beside the output as chunks are encoded, and "
        "continue a killed run from its last complete chunk (same set, teacher, "
        "options and number of processes)",
    )
    add_auto_options(p)
    add_device_option(
        p,
        "render views and run the teacher (under torchrun: cuda means cuda:LOCAL_RANK)",
    )
    add_dist_timeout_option(p)
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("relabel", lambda: _run(args))


def _view(args: argparse.Namespace, image_size: tuple[int, int]) -> ViewConfig:
    size = (args.view_size, args.view_size) if args.view_size else image_size
    return validated(
        ViewConfig,
        "view",
        output_size=size,
        scale=parse_pair(args.scale, "--scale"),
        ratio=parse_pair(args.crop_ratio, "--crop-ratio"),
        flip_prob=args.flip_prob,
        mix=args.mix,
        mix_prob=args.mix_prob,
        mix_alpha=args.mix_alpha,
    )


def _output(args: argparse.Namespace, device: torch.device) -> RelabelOutput:
    options = codec_options(args)
    has_target = rate_goal(args) is not None
    codec = resolve_codec_name(
        args.codec,
        options,
        has_target=has_target,
        default="dense",
        auto_prune=args.auto_prune,
    )
    auto = None
    if codec == AUTO:  # measured prune plans are the final ones: the prune seed
        auto = auto_config(args, seed=args.prune_seed, device=device)
    return validated(
        RelabelOutput,
        "codec",
        path=check_output_path(args.output, [args.set, args.teacher_file]),
        codec=codec,
        auto=auto,
        options=options,
        ratio=args.ratio,
        bits_per_label=args.bits_per_label,
        keep_fraction=args.prune_keep,
        auto_prune=args.auto_prune,
        prune_seed=args.prune_seed,
    )


def _run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    output = _output(args, device)
    distilled = DistilledSet.load(args.set)
    config = validated(
        RelabelConfig,
        "relabel",
        epochs=args.epochs,
        seed=args.seed,
        view=_view(args, distilled.image_size),
        batch_size=args.batch_size,
        fit_views=args.fit_views,
        chunk_size=args.chunk_size,
        store_augmentations=args.store_augmentations,
    )
    ranks, device = join(device, args.dist_timeout)
    try:
        teacher, teacher_id = _shared_teacher(args, distilled, device, ranks)
        show = not args.quiet and ranks.is_main
        with progress_bar("relabelling views", enabled=show) as update:
            # one process too: the chunks land in a partial file first, so a
            # killed run can be resumed (the bytes equal relabel()'s)
            with sigterm_as_interrupt():
                result: RelabelResult | None = relabel_chunked(
                    distilled,
                    teacher,
                    output,
                    config,
                    teacher_id=teacher_id,
                    device=device,
                    ranks=ranks,
                    resume=args.resume,
                    progress=update,
                    report=lambda exc: print_error("relabel", exc),
                )
    finally:
        leave(ranks)
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    _report(result, config, teacher_id, args)
    return 0


def _shared_teacher(
    args: argparse.Namespace,
    distilled: DistilledSet,
    device: torch.device,
    ranks: Ranks,
) -> tuple[nn.Module, str]:
    """The teacher, loaded by rank 0 first: a small teacher trains once, on rank 0,
    and the other ranks load it from the cache it leaves."""

    if not ranks.is_distributed or args.teacher_file is not None:
        return _teacher(args, distilled, device)
    loaded: list[tuple[nn.Module, str]] = []

    def first() -> bool:
        loaded.append(_teacher(args, distilled, device))
        return True

    run_on_main(ranks, first, "loading the teacher")
    return loaded[0] if loaded else _teacher(args, distilled, device)


def _teacher(
    args: argparse.Namespace, distilled: DistilledSet, device: torch.device
) -> tuple[nn.Module, str]:
    """The teacher the flags name; a small one trains on the set's source data."""
    if args.teacher_file is not None:
        return load_teacher(
            None, file=args.teacher_file, trust_pickle=args.trust_pickle, device=device
        )
    imagenet = distilled.channels == 3 and distilled.num_classes == 1000
    default = (
        "efficientnet-lite0" if imagenet and args.dataset != "folder" else "convnet"
    )
    name = args.teacher or default
    if name not in ("convnet", "resnet"):
        return load_teacher(name, device=device)
    data = load_train_data(
        args.dataset, args.data_dir, channels=args.channels, image_size=args.image_size
    )
    source = distilled.source_fingerprint
    if distilled.method != "import" and source not in (None, data.fingerprint):
        raise ConfigError(
            f"{args.set} was distilled from other data (source fingerprint "
            f"{source[:12]}) than the {name} teacher would train on ({data.name}, "
            f"{data.fingerprint[:12]}); pass the --dataset, --data-dir, --channels "
            "and --image-size you gave `labelzip distill`, or a --teacher-file"
        )
    return load_teacher(name, epochs=args.teacher_epochs, device=device, data=data)


def _report(
    result: RelabelResult,
    config: RelabelConfig,
    teacher_id: str,
    args: argparse.Namespace,
) -> None:
    archive = result.archives[0]
    account = archive.account
    if args.json:
        print_json(
            {
                "output": str(archive.path),
                "teacher": teacher_id,
                "epochs": config.epochs,
                "num_views": result.num_views,
                "teacher_views": result.teacher_views,
                "views_kept_per_image": archive.keep_per_image,
                "augmentation_bytes_replayed": result.side_bytes_replayed,
                "augmentation_bytes_explicit": result.side_bytes_explicit,
                "seconds": result.seconds,
                **account.to_dict(),
                **(
                    {"auto": archive.auto.to_dict(report=True)}
                    if archive.auto is not None
                    else {}
                ),
            }
        )
        return
    for line in archive.auto.table() if archive.auto is not None else ():
        print(line)
    m = result.num_views // config.epochs
    print(
        f"wrote {archive.path}: {config.epochs} epochs x {m} images = "
        f"{result.num_views} views, {result.num_classes} classes, codec {account.codec}"
    )
    if archive.keep_per_image < config.epochs:
        print(
            f"  LPLD pruning: labels of {archive.keep_per_image} of {config.epochs} "
            "views per image stored, the others reuse them"
        )
    print(
        f"  {format_bytes(account.total_bytes)} all-in = payload "
        f"{format_bytes(account.payload_bytes)} + model {format_bytes(account.model_bytes)}"
        f" + side {format_bytes(account.side_bytes)} + header "
        f"{format_bytes(account.header_bytes)}; ratio {account.ratio:.2f}x vs dense "
        f"fp16, {account.bits_per_label:.2f} bits per label"
    )
    if account.rate_note is not None:
        print(f"  note: {account.rate_note}")
    explicit = format_bytes(result.side_bytes_explicit)
    stored = (
        "stored explicitly" if config.store_augmentations else "replayed from the seed"
    )
    print(
        f"  augmentations {stored}: 0 B per view with replay, {explicit} as "
        "SRe2L-style explicit records"
    )
    print(
        f"  teacher {teacher_id}: {result.teacher_views} views in "
        f"{result.seconds.get('total', 0.0):.1f} s"
    )
