"""``labelzip distill``: build a distilled image set (random, SRe2L, CDA, LPLD, RDED, import)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from labelzip.cli import run_command
from labelzip.cli._common import (
    add_device_option,
    add_json_option,
    format_bytes,
    parse_key_values,
    print_json,
    progress_bar,
    resolve_device,
)
from labelzip.data.base import ImageDataset
from labelzip.distill import (
    METHOD_CONFIGS,
    METHODS,
    DistilledSet,
    RDEDConfig,
    check_ipc,
    distill,
    method_config,
)
from labelzip.distill._common import build_config
from labelzip.distill.rded import resolve_factor
from labelzip.errors import ConfigError, InputError
from labelzip.io import check_output_path
from labelzip.teachers.files import TRUST_PICKLE_HELP

__all__ = ["build_parser", "main"]

DATASETS = ("fashion-mnist", "imagenet", "folder")
TEACHERS = ("convnet", "resnet", "efficientnet-lite0", "none")

EPILOG = """examples:
  labelzip distill --dataset fashion-mnist --method random --ipc 10 -o random10.safetensors
  labelzip distill --dataset fashion-mnist --method sre2l --ipc 10 --teacher convnet -o sre2l10.safetensors
  labelzip distill --dataset fashion-mnist --method lpld --ipc 10 --steps 300 -o lpld10.safetensors
  labelzip distill --dataset fashion-mnist --method rded --ipc 10 -o rded10.safetensors
  labelzip distill --dataset imagenet --method sre2l --ipc 1 --classes 0-9 --image-size 64 \\
      --steps 100 -o in1k-sre2l.safetensors
  labelzip distill --dataset imagenet --method import --from-folder syn_data/ --image-size 224 \\
      -o released.safetensors
  labelzip distill --dataset folder --data-dir train/ --method sre2l --ipc 10 -o mine.safetensors
  labelzip distill --dataset folder --data-dir train/ --method rded --ipc 10 \\
      --teacher-file teacher.ts -o mine-rded.safetensors

--dataset folder reads root/<class>/*.png|jpg, grayscale or RGB (from the files,
which must agree, or --channels 1|3), at the files' own size (which must agree)
or resized to --image-size. A small teacher (convnet, resnet) trains on that
data, once, cached by its fingerprint; --teacher-file loads your own teacher as
TorchScript (a pickled nn.Module only with --trust-pickle: unpickling runs code).

--dataset imagenet has no real images here: recovery is data-free from the
EfficientNet-Lite0 teacher (class ids 0..999), and --method import reads a
released ImageNet set. Small teachers (convnet, resnet) are trained on the data
once and cached. Recovery defaults: SRe2L's recipe (1000 steps, 224 px for
data-free runs) on a GPU, 200 steps (64 px) on a CPU; --steps overrides. Images
under 64 px (Fashion-MNIST, MNIST, digits) use crops of 50-100% and BN weight 0.3
instead of SRe2L's 8-100% and 0.01, which collapse a class to one pattern there
(set --opt crop_scale=... / --opt bn_weight=... to override).
Method settings not covered by a flag: --opt KEY=VALUE (see docs/distill.md).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip distill",
        description="Build a distilled image set and save it as .safetensors.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument(
        "--data-dir",
        help="folder of the data: IDX files (fashion-mnist) or root/<class>/",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="folder: convert every image to 1 (grayscale) or 3 (RGB) channels "
        "(default: the files' own; all must agree)",
    )
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--ipc", type=int, help="images per class (import: optional cap)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--teacher",
        choices=TEACHERS,
        help="default: convnet for fashion-mnist/folder, efficientnet-lite0 for imagenet",
    )
    source.add_argument(
        "--teacher-file",
        help="your own teacher: a TorchScript file (torch.jit.save) taking "
        "(B, C, H, W) images in 0..255 and returning logits",
    )
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    p.add_argument(
        "--teacher-epochs",
        type=int,
        default=3,
        help="epochs of a small teacher (cached)",
    )
    p.add_argument(
        "--classes", help="class ids to distil, e.g. 0-9 or 1,5,7 (default all)"
    )
    p.add_argument("--steps", type=int, help="recovery steps per batch")
    p.add_argument("--batch-size", type=int, help="recovery: images optimised together")
    p.add_argument("--lr", type=float, help="recovery: Adam learning rate")
    p.add_argument(
        "--image-size",
        type=int,
        help="side of the output images; folder: every image is resized to it "
        "(default: the files' own size)",
    )
    p.add_argument(
        "--factor",
        type=int,
        help="rded: patches per side (default 1 below 64 px, else 2)",
    )
    p.add_argument(
        "--from-folder", help="import: root of the released set (root/<class>/)"
    )
    p.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="any method option, repeatable",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("-o", "--output", required=True, help=".safetensors file to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(p, "run the teacher")
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("distill", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    out = check_output_path(args.output, [args.from_folder, args.data_dir])
    device = resolve_device(args.device)
    options = _options(args)
    if args.method != "import" and args.ipc is None:
        raise ConfigError(f"--method {args.method} needs --ipc")
    if args.ipc is not None and args.ipc < 1:
        raise InputError(f"--ipc must be >= 1, got {args.ipc}")
    config = method_config(args.method, **options)  # bad options fail before any work
    start = time.perf_counter()
    dataset = _dataset(args)
    if dataset is not None and args.ipc is not None:
        _check_data_allows(args.method, args.ipc, dataset, config)
    teacher, teacher_id = _teacher(args, dataset, device)
    with progress_bar(
        f"{args.method} ipc {args.ipc}", enabled=not args.quiet
    ) as update:
        result = distill(
            args.method, dataset, teacher, args.ipc, args.seed, device,
            progress=update, teacher_id=teacher_id, **options,
        )  # fmt: skip
    result.save(out)
    _report(
        result, out.stat().st_size, str(out), time.perf_counter() - start, args.json
    )
    return 0


def parse_classes(text: str) -> list[int]:
    """``"0-4,9"`` -> ``[0, 1, 2, 3, 4, 9]``."""
    ids: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            ids += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise ConfigError(
                f"--classes expects ids and ranges like 0-9,12, got {text!r}"
            ) from None
    return ids


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = parse_key_values(args.opt, "--opt")
    image_size = args.image_size
    if (
        args.dataset == "folder"
        and "image_size" not in METHOD_CONFIGS[args.method].model_fields
    ):
        image_size = None  # it resizes the folder; this method keeps the data's size
    flags = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "image_size": image_size,
        "factor": args.factor,
        "folder": args.from_folder,
    }
    for key, value in flags.items():
        if value is not None:
            options[key] = value
    if args.classes:
        options["classes"] = parse_classes(args.classes)
    if args.method == "import" and "folder" not in options:
        raise ConfigError("--method import needs --from-folder DIR")
    return options


def _dataset(args: argparse.Namespace) -> ImageDataset | None:
    if args.channels is not None and args.dataset != "folder":
        raise ConfigError(
            "--channels applies to --dataset folder (a method's own: --opt channels=N)"
        )
    if args.dataset in ("fashion-mnist", "folder"):
        from labelzip.pipelines.sources import load_train_data

        folder = args.dataset == "folder"
        return load_train_data(
            args.dataset,
            args.data_dir,
            channels=args.channels,
            image_size=args.image_size if folder else None,
        )
    if args.method in ("random", "rded"):
        raise InputError(
            f"--method {args.method} draws real images, and no ImageNet training "
            "images are available: use --dataset folder --data-dir IMAGENET/train"
        )
    return None


def _check_data_allows(
    method: str, ipc: int, dataset: ImageDataset, config: BaseModel
) -> None:
    """Refuse an IPC the real data cannot give before a teacher is trained."""
    if method not in ("random", "rded"):
        return
    classes = getattr(config, "classes", None) or range(dataset.num_classes)
    counts = torch.bincount(dataset.labels, minlength=dataset.num_classes)
    chosen = [c for c in classes if 0 <= c < dataset.num_classes]
    names = tuple(dataset.class_names[c] for c in chosen)
    per = 1
    if isinstance(config, RDEDConfig) and isinstance(dataset.images, torch.Tensor):
        size = config.image_size or int(dataset.images.shape[-1])
        per = resolve_factor(config, (size, size)) ** 2
    if per == 1:
        check_ipc(ipc, counts[chosen], names)
    elif ipc * per > int(counts[chosen].min()):
        have = int(counts[chosen].min())
        raise InputError(
            f"ipc={ipc} needs {ipc * per} real images per class ({per} patches per "
            f"image), but a class has only {have}; use --ipc {have // per} or less, "
            "or a smaller --factor"
        )


def _teacher(
    args: argparse.Namespace, dataset: ImageDataset | None, device: Any
) -> tuple[nn.Module | None, str | None]:
    if args.teacher_file is not None:
        from labelzip.pipelines.sources import load_teacher

        return load_teacher(
            None, file=args.teacher_file, trust_pickle=args.trust_pickle, device=device
        )
    name = args.teacher
    if name is None:
        if args.method in ("random", "import"):
            return None, None
        name = "efficientnet-lite0" if args.dataset == "imagenet" else "convnet"
    if name == "none":
        return None, None
    if name == "efficientnet-lite0":
        from labelzip.teachers import load_efficientnet_lite0

        return load_efficientnet_lite0(device), None
    if dataset is None:
        raise ConfigError(
            f"teacher {name!r} is trained on the dataset, but --dataset {args.dataset} "
            "has no training images here; use --teacher efficientnet-lite0"
        )
    from labelzip.teachers import TeacherTrainConfig, teacher_cache_path, train_teacher

    config = build_config(
        TeacherTrainConfig, {"arch": name, "epochs": args.teacher_epochs, "seed": 0}
    )
    cached = teacher_cache_path(config, dataset.fingerprint)
    if not args.quiet and not cached.is_file():
        print(
            f"labelzip distill: training the {name} teacher on {dataset.name} "
            f"({args.teacher_epochs} epochs, cached for later runs)",
            file=sys.stderr,
        )
    trained = train_teacher(dataset, config=config, device=device)
    return trained.model, f"{name}:{trained.key}"


def _report(
    result: DistilledSet, size: int, path: str, seconds: float, as_json: bool
) -> None:
    c, h, w = result.images.shape[1:]
    diagnostics = dict(result.config.get("diagnostics", {}))
    summary = {
        "output": path,
        "method": result.method,
        "ipc": result.ipc,
        "num_images": len(result),
        "image_shape": [int(c), int(h), int(w)],
        "num_classes": result.num_classes,
        "classes_present": int((result.class_counts() > 0).sum()),
        "fingerprint": result.fingerprint,
        "teacher": result.teacher_id,
        "file_bytes": size,
        "seconds": round(seconds, 2),
        "diagnostics": diagnostics,
    }
    if as_json:
        print_json(summary)
        return
    print(
        f"{result.method}: {len(result)} images {c}x{h}x{w} "
        f"({summary['classes_present']} of {result.num_classes} classes, ipc {result.ipc})"
        f" -> {path} ({format_bytes(size)}) in {seconds:.1f} s"
    )
    print(f"fingerprint {result.fingerprint}")
    if diagnostics:
        print("  ".join(f"{k} {v}" for k, v in diagnostics.items()))
