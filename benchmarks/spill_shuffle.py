"""Whole-archive shuffles of archives larger than the reader's cache: spilled vs not.

Usage (the committed result was made with the command in its header):
    python benchmarks/spill_shuffle.py vqae-15M.lz topk-15M.lz \
        --out benchmarks/results/spill_shuffle.md

Each archive (made beforehand with ``labelzip compress``) is read in batches of
256 through ``ArchiveLabels`` with the default cache (256 MiB), one torch
thread, in these orders, each from a fresh dataset for about --seconds:

- ``in order``: consecutive batches;
- ``shuffle, not spilled``: a random permutation of every label, the cache
  thrashing (``auto_spill=False``, what a plain ``shuffle=True`` did before);
- ``shuffle, spilled``: the same permutation after ``labels.prefetch()``,
  which parsed the archive once into memory-mapped files (its seconds and
  bytes are reported);
- ``shuffle, auto``: a fresh default ``ArchiveLabels`` read in the same
  permutation; reported are the seconds until it spilled by itself and its
  rate after that;
- ``shuffle, spilled, 2 workers``: a DataLoader with two (forked) workers
  over the prefetched dataset, wall-clock labels/s of the main process.

The spilled and unspilled orders alternate over --repeats; medians are
reported. The page cache is not dropped between runs (no root needed), so the
spill files are read warm after their first pass, as in a training run.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from labelzip.archive import ArchiveLabels, ArchiveReader, WindowShuffleSampler

BATCH = 256


def _read(labels: ArchiveLabels, order: list[int], seconds: float) -> float:
    """Labels/s of ``order`` in batches of 256 for about ``seconds``."""
    count, started = 0, time.perf_counter()
    for start in range(0, len(order), BATCH):
        labels.__getitems__(order[start : start + BATCH])
        count += min(BATCH, len(order) - start)
        if time.perf_counter() - started >= seconds:
            break
    return count / (time.perf_counter() - started)


def _auto(path: Path, order: list[int], seconds: float, spill: str) -> str:
    """Seconds until a default dataset spills by itself, and its rate afterwards.

    Gives up after three minutes: an archive whose parsed chunks
    fit the cache never thrashes, so it never spills ("no spill").
    """
    labels = ArchiveLabels(path, spill_dir=spill)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        start = 0
        while labels.reader.spilled_bytes == 0 and start < len(order):
            labels.__getitems__(order[start : start + BATCH])
            start += BATCH
            if time.perf_counter() - started > 180.0:
                break
    until = time.perf_counter() - started
    if labels.reader.spilled_bytes == 0 or start >= len(order):
        spilled = labels.reader.spilled_bytes > 0
        labels.reader.close()
        return (
            f"{'spilled after every label' if spilled else 'no spill'} in {until:.0f} s"
        )
    rate = _read(labels, order[start:], seconds)
    labels.reader.close()
    return f"{rate:,.0f} ({until:.0f} s)"


def _workers(labels: ArchiveLabels, order: list[int], batches: int) -> float:
    """Wall labels/s of a 2-worker DataLoader over ``batches`` shuffled batches."""
    loader = DataLoader(
        labels,
        batch_size=BATCH,
        sampler=order[: batches * BATCH],
        num_workers=2,
        multiprocessing_context="fork",
        prefetch_factor=4,
    )
    iterator = iter(loader)
    next(iterator)  # workers started, first batch out
    count, started = 0, time.perf_counter()
    for batch in iterator:
        count += batch.shape[0]
    return count / (time.perf_counter() - started)


def _cell(values: list[float], spec: str = ",.0f") -> str:
    """The median, then every run in brackets."""
    inner = ", ".join(format(v, spec) for v in values)
    return f"{format(statistics.median(values), spec)} ({inner})"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archives", nargs="+", type=Path)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker-batches", type=int, default=400)
    p.add_argument("--spill-dir", default=tempfile.gettempdir())
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# Whole-archive shuffles larger than the cache: spilled vs not",
        "",
        f"Command: `python benchmarks/spill_shuffle.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} shared CPUs, "
        f"{platform.platform()}, torch {torch.__version__}; one thread per process. "
        f"Batches of {BATCH}, the default 256 MiB cache, about {args.seconds:g} s "
        f"per order, {args.repeats} alternating repeats, medians (runs in brackets). "
        f"Spill files in {args.spill_dir}.",
        "",
        "| archive | codec | labels | ratio | MB | in order | shuffle, not spilled "
        "| prefetch s | spill MB | shuffle, spilled | shuffle, auto (s to spill) "
        "| spilled, 2 workers | window sampler |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in args.archives:
        with ArchiveReader(path) as reader:
            n, codec = reader.num_labels, reader.codec_name
            ratio = reader.account().ratio
        size = path.stat().st_size / 1e6
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        window = list(WindowShuffleSampler(n, seed=0))
        runs: dict[str, list[float]] = {
            k: [] for k in ("order", "cold", "prefetch", "spilled", "window")
        }
        spill_mb = 0.0
        for _ in range(args.repeats):
            runs["order"].append(
                _read(ArchiveLabels(path), list(range(n)), args.seconds)
            )
            cold = ArchiveLabels(path, auto_spill=False)
            runs["cold"].append(_read(cold, order, args.seconds))
            cold.reader.close()
            spilled = ArchiveLabels(path, spill_dir=args.spill_dir)
            started = time.perf_counter()
            spilled.prefetch()
            runs["prefetch"].append(time.perf_counter() - started)
            spill_mb = spilled.reader.spilled_bytes / 1e6
            runs["spilled"].append(_read(spilled, order, args.seconds))
            spilled.reader.close()
            windowed = ArchiveLabels(path, auto_spill=False)
            runs["window"].append(_read(windowed, window, args.seconds))
            windowed.reader.close()
        auto = _auto(path, order, args.seconds, args.spill_dir)
        shared = ArchiveLabels(path, spill_dir=args.spill_dir)
        shared.prefetch()
        workers = _workers(shared, order, args.worker_batches)
        shared.reader.close()

        lines.append(
            f"| {path.name} | {codec} | {n:,} | {ratio:.1f}x | {size:,.1f} "
            f"| {_cell(runs['order'])} | {_cell(runs['cold'])} "
            f"| {_cell(runs['prefetch'], '.1f')} "
            f"| {spill_mb:,.0f} | {_cell(runs['spilled'])} | {auto} "
            f"| {workers:,.0f} | {_cell(runs['window'])} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"Peak RSS of the measuring process: {_rss_mib():,.0f} MiB."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
