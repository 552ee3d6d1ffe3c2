"""Whole-archive shuffles larger than the reader's cache: plain vs window shuffle.

Usage (the committed result was made with the command in its header):
    python benchmarks/window_shuffle.py /work/benchdata/effnet_views.safetensors \
        --labels 1000000 --cache-mib 16 --out benchmarks/results/window_shuffle.md

A top-k archive at 40x of N real EfficientNet-Lite0 logits (tiled past the
stored rows) is read in batches of 256 through ``ArchiveLabels.__getitems__``
with a parsed-chunk cache of --cache-mib, smaller than the parsed archive, as a
15M-label archive is against the default 256 MiB (`labelzip bench scale`).
Three orders, interleaved in every repeat, each from a fresh reader for about
--seconds: in order, a plain random permutation of all N (``shuffle=True``),
and ``WindowShuffleSampler`` (windows of --window consecutive labels). Medians
of the repeats; one torch thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from labelzip.archive import ArchiveLabels, WindowShuffleSampler, save_archive
from labelzip.codecs.registry import create_codec

BATCH = 256


def _tiled(path: str, key: str, n: int) -> Iterator[torch.Tensor]:
    with safe_open(path, "pt") as f:
        rows = f.get_tensor(key).float()
    for start in range(0, n, 4096):
        idx = torch.arange(start, min(start + 4096, n)) % rows.shape[0]
        yield rows[idx]


def _rate(archive: Path, order: list[int], cache: int, seconds: float) -> float:
    labels = ArchiveLabels(archive, cache_bytes=cache)
    count, started = 0, time.perf_counter()
    for start in range(0, len(order), BATCH):
        labels.__getitems__(order[start : start + BATCH])
        count += min(BATCH, len(order) - start)
        if time.perf_counter() - started >= seconds:
            break
    return count / (time.perf_counter() - started)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logits")
    p.add_argument("--key", default="logits")
    p.add_argument("--labels", type=int, default=1_000_000)
    p.add_argument("--cache-mib", type=int, default=16)
    p.add_argument("--window", type=int, default=1 << 16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    n = args.labels
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "topk.lz"
        first = next(_tiled(args.logits, args.key, min(n, 4096)))
        codec = create_codec("topk", k=16, decoder="ms").fit([first])
        flat = torch.cat(list(_tiled(args.logits, args.key, n)))
        account = save_archive(archive, codec, flat.half().float())
        del flat
        gen = torch.Generator().manual_seed(0)
        orders = {
            "in order": list(range(n)),
            "shuffle=True (whole archive)": torch.randperm(n, generator=gen).tolist(),
            f"WindowShuffleSampler (window {args.window:,})": list(
                WindowShuffleSampler(n, window=args.window, seed=0)
            ),
        }
        cache = args.cache_mib << 20
        rates: dict[str, list[float]] = {name: [] for name in orders}
        for _ in range(args.repeats):
            for name, order in orders.items():
                rates[name].append(_rate(archive, order, cache, args.seconds))
    command = "python benchmarks/window_shuffle.py " + " ".join(sys.argv[1:])
    lines = [
        "# Whole-archive shuffles larger than the cache: plain vs window shuffle",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} shared CPUs, "
        f"{platform.platform()}, torch {torch.__version__}; one thread. "
        f"Archive: top-k (K = 16, MS) of {n:,} x 1000 labels, {account.ratio:.1f}x "
        f"all-in, {account.total_bytes / 1e6:.1f} MB; cache {args.cache_mib} MiB. "
        f"Batches of {BATCH}, about {args.seconds:g} s per order, "
        f"{args.repeats} interleaved repeats, medians.",
        "",
        "| order | labels/s (median) | repeats |",
        "|---|---|---|",
    ]
    for name, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {name} | {statistics.median(values):,.0f} | {runs} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
