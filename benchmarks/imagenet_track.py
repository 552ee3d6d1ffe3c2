"""The 1000-class track of the vision benchmark (EfficientNet-Lite0 over SRe2L images).

Recovers SRe2L images for a subset of ImageNet-1K classes, relabels them with
seeded views, compresses the 1000-class labels with every codec at every all-in
ratio through real archives, and reports label fidelity and the ImageNet-1K
storage table (labelzip.bench.imagenet; docs/imagenet-track.md).

Usage (the committed result was made with the command in its header):
    nice -n 5 python benchmarks/imagenet_track.py --threads 1 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from labelzip.bench.imagenet import (
    DEFAULT_CLASSES,
    DEFAULT_CODECS,
    ImagenetTrackConfig,
    ImagenetTrackResult,
    run_imagenet_track,
    write_imagenet_report,
)


def build_config(args: argparse.Namespace) -> ImagenetTrackConfig:
    codecs = DEFAULT_CODECS
    if args.codecs:
        known = {c.label: c for c in DEFAULT_CODECS}
        unknown = [c for c in args.codecs if c not in known]
        if unknown:
            raise SystemExit(f"unknown codec {unknown}; choose from {sorted(known)}")
        codecs = tuple(known[c] for c in args.codecs)
    if args.vqae_steps is not None:
        codecs = tuple(
            c.model_copy(update={"options": {**c.options, "steps": args.vqae_steps}})
            if c.codec == "vqae"
            else c
            for c in codecs
        )
    return ImagenetTrackConfig(
        classes=tuple(args.classes),
        ipc=args.ipc,
        recover_steps=args.recover_steps,
        recover_bn_weight=args.recover_bn_weight,
        recover_crop_scale=tuple(args.recover_crop_scale),
        image_size=args.image_size,
        epochs=args.epochs,
        ratios=tuple(args.ratios),
        codecs=codecs,
        storage_ipc=tuple(args.storage_ipc),
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=list(DEFAULT_CLASSES))
    parser.add_argument("--ipc", type=int, default=4)
    parser.add_argument("--recover-steps", type=int, default=200)
    parser.add_argument("--recover-bn-weight", type=float, default=0.001)
    parser.add_argument("--recover-crop-scale", type=float, nargs=2, default=[0.5, 1.0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--epochs", type=int, default=300, help="relabel views per image"
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[40, 100, 300])
    parser.add_argument(
        "--codecs",
        nargs="+",
        default=None,
        help="labels of DEFAULT_CODECS (default all)",
    )
    parser.add_argument(
        "--vqae-steps",
        type=int,
        default=None,
        help="VQAE training steps (default 2000)",
    )
    parser.add_argument("--storage-ipc", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--stem", default="imagenet_track")
    parser.add_argument("--machine-note", default=None, help="free text for the report")
    parser.add_argument(
        "--report-from",
        default=None,
        help="re-render the .md/.png (and JSON) from a saved JSON instead of running",
    )
    args = parser.parse_args(argv)
    if args.report_from:
        saved = json.loads(Path(args.report_from).read_text())
        result = ImagenetTrackResult.from_dict(saved)
        paths = write_imagenet_report(
            result, args.out, meta=saved.get("meta"), stem=args.stem
        )
        print("wrote", *paths.values())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = build_config(args)
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 15:
            last[0] = now
            print(f"  {stage}: {done}/{total}", flush=True)

    load_before = os.getloadavg()[0]
    result = run_imagenet_track(config, progress=progress)
    load_after = os.getloadavg()[0]
    command = "python benchmarks/imagenet_track.py " + shlex.join(sys.argv[1:])
    note = (
        f"1-min load average {load_before:.1f} at start, {load_after:.1f} at end "
        f"(shared machine)"
    )
    if args.machine_note:
        note += f"; {args.machine_note}"
    meta = {"command": command, "machine_note": note}
    paths = write_imagenet_report(result, args.out, meta=meta, stem=args.stem)
    for row in result.rows:
        print(
            f"  {row.label:10s} {row.target_ratio or 1:5g}x -> {row.ratio:7.1f}x "
            f"KL4 {row.kl.get('T4', float('nan')):.4g} top1 {row.top1:.4f}",
            flush=True,
        )
    print("wrote", *paths.values())
    return 0


if __name__ == "__main__":
    sys.exit(main())
