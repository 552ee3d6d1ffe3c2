"""Per-batch label decoding cost of the archives a quickstart wrote (replay access pattern).

Training replays epoch e's views in shuffled batches and decodes exactly those labels
(``ArchiveReader.decode`` on flat indices ``e * M + i``). This times that call alone,
per archive, on one torch thread, as the median over repeats of the mean per batch,
next to the student's mean training step measured the same way, so the decode share
is a ratio of two numbers from one run.

Usage:
    labelzip quickstart --workdir W            # writes W/*.lz
    python benchmarks/replay_decode_cost.py W --out benchmarks/results/replay_decode_cost.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from labelzip.archive import ArchiveReader


def per_batch_us(reader: ArchiveReader, batch_size: int, repeats: int) -> float:
    """Median over repeats of the mean decode time per batch, in microseconds."""
    epochs, images = reader.layout.shape
    g = torch.Generator().manual_seed(0)
    means = []
    for _ in range(repeats):
        batches = 0
        start = time.perf_counter()
        for epoch in range(epochs):
            perm = torch.randperm(images, generator=g)
            for lo in range(0, images, batch_size):
                reader.decode(reader.layout.ravel(epoch, perm[lo : lo + batch_size]))
                batches += 1
        means.append((time.perf_counter() - start) / batches * 1e6)
    return statistics.median(means)


def student_step_us(batch_size: int, repeats: int) -> float:
    """Mean time of one training step of the quickstart's student (ConvNet, 28 px)."""
    from labelzip.pipelines.students import build_student

    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    model = build_student("convnet", 10, images, (28, 28))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(batch_size, 1, 28, 28)
    target = torch.softmax(torch.randn(batch_size, 10), dim=1)
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(50):
            loss = torch.nn.functional.cross_entropy(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        means.append((time.perf_counter() - start) / 50 * 1e6)
    return statistics.median(means)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("workdir", type=Path, help="a quickstart --workdir with *.lz")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--cache-chunks",
        type=int,
        default=8,
        help="decoded chunks kept (ReplayDataset's default: 8)",
    )
    p.add_argument("--out", type=Path, default=None, help="write a Markdown report")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    archives = sorted(args.workdir.glob("*.lz"))
    if not archives:
        print(f"no *.lz archives in {args.workdir}", file=sys.stderr)
        return 2
    step = student_step_us(args.batch_size, args.repeats)
    lines = [
        "# Label decoding cost per training batch (replay access pattern)",
        "",
        "Command: `python benchmarks/replay_decode_cost.py "
        + " ".join(sys.argv[1:])
        + "`",
        "",
        f"Machine: {platform.machine()} {platform.system()}, torch {torch.__version__}, "
        "1 thread, shared 2-core VM. Median of "
        f"{args.repeats} repeats; batch {args.batch_size}; {args.cache_chunks} decoded "
        "chunks cached (as in training). Student step (quickstart ConvNet, "
        f"forward + backward + AdamW, 28 px): {step:.0f} us.",
        "",
        "| archive | codec | decode per batch (us) | share of a student step |",
        "|---|---|---|---|",
    ]
    for path in archives:
        with ArchiveReader(path, cache_chunks=args.cache_chunks) as reader:
            us = per_batch_us(reader, args.batch_size, args.repeats)
            lines.append(
                f"| {path.name} | {reader.codec_name} | {us:.0f} | "
                f"{100 * us / (us + step):.2f}% |"
            )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
