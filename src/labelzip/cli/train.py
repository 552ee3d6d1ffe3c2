"""``labelzip train``: a student from a distilled set and its (compressed) labels."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from labelzip.cli import run_command
from labelzip.cli._common import (
    add_device_option,
    add_json_option,
    print_json,
    progress_bar,
    resolve_device,
    validated,
)
from labelzip.errors import ConfigError
from labelzip.io import atomic_path, check_output_path
from labelzip.pipelines.students import STUDENT_ARCHS
from labelzip.pipelines.train_student import EpochLog, StudentConfig, StudentResult

if TYPE_CHECKING:
    from labelzip.distill import DistilledSet
    from labelzip.pipelines.replay import ReplayDataset

__all__ = ["PRESETS", "build_parser", "main"]

# Named settings; explicit flags override them.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "sre2l-imagenet": {
        "arch": "resnet18",
        "batch_size": 1024,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.01,
        "temperature": 20.0,
        "schedule": "cosine",
        "input_mean": (123.675, 116.28, 103.53),  # ImageNet, in 0..255
        "input_std": (58.395, 57.12, 57.375),
    },
}

EPILOG = """examples:
  labelzip train random10.safetensors vqae.lz
  labelzip train random10.safetensors dense.lz --arch resnet --epochs 300 --json
  labelzip train in1k.safetensors in1k-vqae.lz --preset sre2l-imagenet \\
      --test-set /data/imagenet/val --device cuda --save student.safetensors
  labelzip train mine.safetensors mine.lz --test-set test/
  torchrun --nproc_per_node 8 -m labelzip train in1k.safetensors in1k-vqae.lz \\
      --preset sre2l-imagenet --device cuda

Each student epoch replays one archive epoch (epoch e mod E): the same views
the teacher labelled, re-rendered from the seed, with exactly their decoded
labels. Loss: T^2 * KL at temperature T (+ --ce-weight x CE on the images'
classes). Under torchrun, images are sharded across ranks and gradients
all-reduced (gloo on CPU, NCCL on CUDA). The GPU preset sre2l-imagenet is
SRe2L's validation recipe: ResNet-18, AdamW lr 1e-3, wd 0.01, cosine, batch 1024,
T = 20 (use --epochs to set the budget; the archive's epochs by default).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip train",
        description="Train a student on replayed views and decoded labels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("set", help="distilled set (.safetensors) the archive labels")
    p.add_argument("archive", help="archive from `labelzip relabel`")
    p.add_argument(
        "--test-set",
        default="fashion-mnist",
        help="fashion-mnist, none, or a folder root/<class>/*.png, converted to the "
        "set's channels and resized to the view size (default fashion-mnist)",
    )
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="named defaults: cpu (StudentConfig's) or sre2l-imagenet (GPU recipe)",
    )
    s = p.add_argument_group("student (defaults: StudentConfig, or the preset)")
    s.add_argument("--arch", choices=STUDENT_ARCHS)
    s.add_argument("--width", type=int, help="convnet channels (32)")
    s.add_argument("--depth", type=int, help="convnet blocks (3)")
    s.add_argument("--epochs", type=int, help="default: the archive's epochs")
    s.add_argument("--batch-size", type=int, help="views per step (64)")
    s.add_argument("--optimizer", choices=("adamw", "sgd"))
    s.add_argument("--lr", type=float, help="peak learning rate (0.002)")
    s.add_argument("--weight-decay", type=float, help="(0.01)")
    s.add_argument("--momentum", type=float, help="SGD momentum (0.9)")
    s.add_argument("--schedule", choices=("cosine", "constant"))
    s.add_argument("--warmup-epochs", type=int)
    s.add_argument("--temperature", type=float, help="KD temperature T (4)")
    s.add_argument("--ce-weight", type=float, help="CE share of the loss (0)")
    s.add_argument(
        "--input-mean",
        help="per-channel input mean in 0..255, comma-separated (default: the "
        "distilled images'; Fashion-MNIST 72.94)",
    )
    s.add_argument("--input-std", help="per-channel input std (Fashion-MNIST 90.02)")
    s.add_argument("--seed", type=int, help="init and order seed (0)")
    s.add_argument("--eval-every", type=int, help="test every N epochs (0: at the end)")
    p.add_argument("--save", help="write the student's weights (.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(p, "train")
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("train", lambda: _run(args))


def _config(args: argparse.Namespace) -> StudentConfig:
    values = dict(PRESETS[args.preset])
    for name in StudentConfig.model_fields:
        value = getattr(args, name, None)
        if value is not None and name in ("input_mean", "input_std"):
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} expects numbers, got {value!r}") from None
        if value is not None:
            values[name] = value
    return validated(StudentConfig, "student", **values)


def _init_distributed(device: torch.device) -> torch.device:
    """Join the torchrun group when launched by it; the rank's device."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _run(args: argparse.Namespace) -> int:
    from labelzip.distill import DistilledSet
    from labelzip.pipelines.replay import ReplayDataset

    config = _config(args)
    save = check_output_path(args.save, [args.set, args.archive]) if args.save else None
    device = _init_distributed(resolve_device(args.device))
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    distilled = DistilledSet.load(args.set)
    replay = ReplayDataset(distilled, args.archive, device=device)
    try:
        result = _train(args, config, distilled, replay, rank)
    finally:
        replay.close()
    if rank == 0:
        if save is not None:
            _save(result, config, args, save)
        _report(result, config, args)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _train(
    args: argparse.Namespace,
    config: StudentConfig,
    distilled: DistilledSet,
    replay: ReplayDataset,
    rank: int,
) -> StudentResult:
    """Load the test set (at the views' size) and train, one line per epoch."""
    from labelzip.pipelines.sources import load_test_set
    from labelzip.pipelines.train_student import train_student

    test_set = load_test_set(
        args.test_set,
        channels=distilled.channels,
        data_root=args.data_dir,
        image_size=replay.view.output_size,
        class_names=distilled.class_names,
    )
    epochs = config.epochs or replay.num_epochs
    logs: list[EpochLog] = []
    live = not args.json and rank == 0  # text mode: one line per epoch as it ends
    bar = not args.quiet and args.json and rank == 0
    with progress_bar("training", enabled=bar) as update:

        def on_epoch(log: EpochLog) -> None:
            logs.append(log)
            update(len(logs), epochs)
            if live:
                print(_epoch_line(log), flush=True)

        return train_student(replay, config, test_set=test_set, on_epoch=on_epoch)


def _save(
    result: StudentResult, config: StudentConfig, args: argparse.Namespace, path: Path
) -> None:
    from safetensors.torch import save_file

    state = {
        k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()
    }
    meta = {
        "labelzip_student": json.dumps(
            {
                "config": config.model_dump(mode="json"),
                "archive": str(args.archive),
                "set": str(args.set),
                "accuracy": result.accuracy,
            },
            sort_keys=True,
        )
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def _epoch_line(log: EpochLog) -> str:
    acc = f", test {100 * log.test_accuracy:.2f}%" if log.test_accuracy else ""
    return (
        f"epoch {log.epoch + 1:4d}: loss {log.loss:.4f}, lr {log.lr:.2e}, "
        f"{log.seconds:.2f} s (decode {100 * log.decode_share:.2f}%){acc}"
    )


def _report(
    result: StudentResult, config: StudentConfig, args: argparse.Namespace
) -> None:
    history = result.history
    if args.json:
        print_json(
            {
                "archive": str(args.archive),
                "config": config.model_dump(mode="json"),
                "accuracy": result.accuracy,
                "final_loss": history[-1].loss if history else None,
                "train_seconds": result.train_seconds,
                "decode_share": result.decode_share,
                "epochs": [
                    {**log.__dict__, "decode_share": log.decode_share}
                    for log in history
                ],
            }
        )
        return
    acc = "n/a" if result.accuracy is None else f"{100 * result.accuracy:.2f}%"
    print(
        f"student {config.arch}: test accuracy {acc}; {result.train_seconds:.1f} s "
        f"training, label decoding {100 * result.decode_share:.2f}% of it",
        file=sys.stdout,
    )
