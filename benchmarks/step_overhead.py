"""What label loading costs a training step: time the loop waits for the next batch.

Usage (the committed result was made with the command in its header):
    python benchmarks/step_overhead.py vqae-15M.lz topk-15M.lz \
        --out benchmarks/results/step_overhead.md

Issue 12 asks that label decoding take at most 2% of a GPU-speed training step
(30 ms for 256 images). A training loop pays for its labels only where it
waits for them: with DataLoader workers the decode runs beside the step, and
the loop's cost is the time ``next(loader)`` blocks. This script runs that
loop over a whole-archive shuffle (batches of 256 from a random permutation of
every label) with the step replaced by ``time.sleep(--step-ms)``: a GPU step
leaves the host CPU idle in the same way, so the workers get the cores they
would get next to a GPU. Per archive and loader it reports the median and the
mean time blocked per step, as a share of the step.

Loaders (each over ``ArchiveLabels`` after ``labels.prefetch()``, which parses
the archive once, spilling to memory-mapped files when it exceeds the cache):

- ``0 workers``: the decode runs inline, so it is all on the step's path;
- ``N workers`` (``--workers``, forked, prefetch_factor 4): the decode runs
  in the workers; warm-up steps (the workers' first batches) are excluded.

Each archive also gets a floor row, ``no decode``: the same loaders over
float32 rows already in memory, i.e. what the DataLoader itself costs
(indexing, collate, and with workers the hand-over of a (256, C) batch).

One torch thread per process. The machine is shared: medians over --steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from labelzip.archive import ArchiveLabels, ArchiveReader

BATCH = 256
WARMUP_STEPS = 20


class DecodedRows(Dataset[torch.Tensor]):
    """The floor: rows of a float32 tensor already in memory, nothing to decode."""

    def __init__(self, rows: torch.Tensor, num_labels: int) -> None:
        self.rows, self.num_labels = rows, num_labels

    def __len__(self) -> int:
        return self.num_labels

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        picked = torch.as_tensor(indices) % self.rows.shape[0]
        return list(self.rows[picked].unbind(0))


def _waits(
    labels: Dataset[torch.Tensor],
    num_classes: int,
    order: list[int],
    workers: int,
    step: float,
    steps: int,
) -> list[float]:
    """Seconds each step waited for its batch (after the warm-up)."""
    kwargs: dict[str, object] = {}
    if workers:
        kwargs = {"multiprocessing_context": "fork", "prefetch_factor": 4}
    loader = DataLoader(
        labels,
        batch_size=BATCH,
        sampler=order[: (steps + WARMUP_STEPS) * BATCH],
        num_workers=workers,
        **kwargs,  # type: ignore[arg-type]
    )
    waits: list[float] = []
    iterator = iter(loader)
    for index in range(steps + WARMUP_STEPS):
        started = time.perf_counter()
        batch = next(iterator)
        waited = time.perf_counter() - started
        assert batch.shape == (BATCH, num_classes)
        if index >= WARMUP_STEPS:
            waits.append(waited)
        time.sleep(step)  # the GPU step: the host CPU is free meanwhile
    del iterator
    return waits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archives", nargs="+", type=Path)
    p.add_argument("--step-ms", type=float, default=30.0, help="simulated step")
    p.add_argument("--steps", type=int, default=400, help="measured steps per loader")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--spill-dir", default=tempfile.gettempdir())
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    step = args.step_ms / 1000
    lines = [
        "# Label loading on the training step's path",
        "",
        f"Command: `python benchmarks/step_overhead.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} shared CPUs, "
        f"{platform.platform()}, torch {torch.__version__}; one thread per process. "
        f"Batches of {BATCH} from a random permutation of every label, the step "
        f"simulated by a {args.step_ms:g} ms sleep, {args.steps} measured steps per "
        f"loader after {WARMUP_STEPS} warm-up steps; the dataset prefetched "
        f"(spilled to {args.spill_dir} when larger than the cache).",
        "",
        "| archive | codec | labels | loader | median wait per step | mean wait per step "
        "| mean as share of the step |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in args.archives:
        with ArchiveReader(path) as reader:
            n, codec = reader.num_labels, reader.codec_name
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        labels = ArchiveLabels(path, spill_dir=args.spill_dir)
        labels.prefetch()
        floor = DecodedRows(labels.reader.decode(torch.arange(BATCH * 16)), n)
        for data, name in ((labels, codec), (floor, "no decode (floor)")):
            for workers in (0, args.workers):
                waits = _waits(
                    data, labels.reader.num_classes, order, workers, step, args.steps
                )
                mean = statistics.fmean(waits)
                lines.append(
                    f"| {path.name} | {name} | {n:,} | {workers} workers "
                    f"| {statistics.median(waits) * 1e3:.2f} ms | {mean * 1e3:.2f} ms "
                    f"| {100 * mean / step:.1f}% |"
                )
                print(lines[-1], flush=True)
        labels.reader.close()
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
