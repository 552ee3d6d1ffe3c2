"""Decode throughput of archives through the reader: labels per second, median of runs.

Usage (the committed result was made with the command in its header):
    python benchmarks/decode_throughput.py LABELS.safetensors --ratios 40 160 \
        --codecs vqae topk --threads 2 --out benchmarks/results/decode_throughput.md

Decoding speed depends on the codec's configuration, not on how well it was
trained, so VQAE is fitted with a short schedule (--fit-steps) here; rate control
chooses the same configuration as in the rate-distortion benchmark.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from labelzip.archive import ArchiveReader, Layout, save_archive
from labelzip.io import atomic_path
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels")
    parser.add_argument("--ratios", type=float, nargs="+", default=[40, 160])
    parser.add_argument("--codecs", nargs="+", default=["vqae", "topk"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fit-steps", type=int, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    logits = load_file(args.labels)["logits"].float()
    layout = Layout.for_shape(logits.shape[:-1])
    lines = [
        "# Decode throughput",
        "",
        f"Command: `python benchmarks/decode_throughput.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads, load average {os.getloadavg()[0]:.1f} at start  ",
        f"Labels: {logits.shape[0]} x C={logits.shape[1]}",
        "",
        "| codec | all-in ratio | decode labels/s (median) | runs |",
        "|---|---|---|---|",
    ]
    for name in args.codecs:
        for ratio in args.ratios:
            options = {"steps": args.fit_steps} if name == "vqae" else {}
            codec = fit_codec(
                name,
                lambda: logits.split(4096),
                options,
                target=ArchiveTarget(RateGoal(ratio=ratio), layout, logits.shape[1]),
            )
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "labels.lz")
                account = save_archive(path, codec, logits, layout=layout)
                rates = []
                for _ in range(args.repeats):
                    with ArchiveReader(path) as reader:
                        start = time.perf_counter()
                        count = sum(b.shape[0] for b in reader.decode_all())
                        rates.append(count / (time.perf_counter() - start))
            line = (
                f"| {name} | {account.ratio:.1f}x | {statistics.median(rates):,.0f} "
                f"| {', '.join(f'{r:,.0f}' for r in rates)} |"
            )
            print(line, flush=True)
            lines.append(line)
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
