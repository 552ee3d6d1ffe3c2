"""Shuffled vs contiguous batch reads from archives, one thread, medians side by side.

Usage (the committed result was made with the command in its header):
    python benchmarks/shuffled_reads.py /work/benchdata/effnet_views.safetensors \
        --sizes 10000 100000 1000000 --codecs vqae topk dense --ratio 40 \
        --out benchmarks/results/shuffled_reads.md

For each codec and archive size N (real EfficientNet-Lite0 logits, tiled past
the 100k stored rows), batches of 256 labels are decoded through
``ArchiveReader.decode`` in four ways, interleaved in every repeat so that load
on a shared machine hits all of them alike:

- contiguous: consecutive batches from label 0 (a fresh reader);
- shuffled, cold: the first batches (up to --cold-batches) of a random
  permutation of all N labels, fresh reader: each chunk is read and parsed when
  first touched, so this includes parsing every chunk once;
- shuffled, warm: batches of the permutation after ``reader.prefetch()`` (an
  epoch in steady state);
- whole-chunk (before): what the reader did before parsed chunks: every touched
  chunk decoded whole, 2 decoded chunks kept (fewer batches; it is slow).

- decode_all: the streaming whole-chunk decode of the same archive, in order
  (the codec's own decode speed, measured in the same repeat for reference).

Dense is stored in fp16 (1x: dense has no 40x configuration). A second table varies the chunk size (256 / 1024 / 4096) at one N: archive
bytes (per-chunk framing and digests) against contiguous and shuffled speed.
VQAE is fitted with a short schedule (--fit-steps): decoding speed depends on
its configuration, which rate control chooses from the ratio, not on training.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable

import torch

from labelzip.archive import ArchiveReader, Layout, save_archive
from labelzip.codecs.base import Codec
from labelzip.codecs.registry import create_codec
from labelzip.io import atomic_path
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec

BATCH = 256
STEP_SECONDS = 0.030  # a GPU-speed training step of 256 images (the yardstick)


def _tiled(source: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of ``source`` repeated as often as needed (fp16)."""
    reps = -(-n // source.shape[0])
    return source.to(torch.float16).repeat(reps, 1)[:n]


def _rate(
    reader_factory: Callable[[], ArchiveReader],
    batches: list[torch.Tensor],
    warm: bool = False,
) -> float:
    with reader_factory() as reader:
        if warm:
            reader.prefetch()
        start = time.perf_counter()
        for index in batches:
            reader.decode(index)
        seconds = time.perf_counter() - start
    return sum(b.numel() for b in batches) / seconds


def _whole_chunk_rate(path: str, batches: list[torch.Tensor]) -> float:
    """The reader before parsed chunks: decode every touched chunk whole, LRU of 2."""
    with ArchiveReader(path) as reader:
        codec = reader.codec
        starts = torch.tensor([0, *torch.tensor(reader.header.chunk_labels).cumsum(0)])
        cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        start = time.perf_counter()
        for index in batches:
            out = torch.empty(index.numel(), reader.num_classes)
            chunk_ids = torch.searchsorted(starts, index, right=True) - 1
            for cid in torch.unique(chunk_ids).tolist():
                if cid in cache:
                    cache.move_to_end(cid)
                else:
                    cache[cid] = codec.decode(reader.read_chunk(cid))
                    while len(cache) > 2:
                        cache.popitem(last=False)
                where = (chunk_ids == cid).nonzero().reshape(-1)
                out[where] = cache[cid][index[where] - starts[cid]]
        seconds = time.perf_counter() - start
    return sum(b.numel() for b in batches) / seconds


def _streaming_rate(path: str, labels: int) -> float:
    """``decode_all`` (whole chunks, in order) over the first ``labels`` labels."""
    with ArchiveReader(path) as reader:
        start, done = time.perf_counter(), 0
        for batch in reader.decode_all(BATCH):
            done += batch.shape[0]
            if done >= labels:
                break
        return done / (time.perf_counter() - start)


def _fit(name: str, logits: torch.Tensor, ratio: float, fit_steps: int) -> Codec:
    if name == "dense":  # stores every value: fp16, 1x (no rate to choose)
        return create_codec("dense", dtype="fp16").fit([logits[:1]])
    options = {"steps": fit_steps} if name == "vqae" else {}
    return fit_codec(
        name,
        lambda: logits.split(4096),
        options,
        target=ArchiveTarget(
            RateGoal(ratio=ratio), Layout.for_shape(logits.shape[:-1]), logits.shape[1]
        ),
    )


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--codecs", nargs="+", default=["vqae", "topk", "dense"])
    parser.add_argument("--ratio", type=float, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40, help="batches per run")
    parser.add_argument("--cold-batches", type=int, default=400)
    parser.add_argument("--cache-bytes", type=float, default=2.5e9)
    parser.add_argument("--before-batches", type=int, default=3)
    parser.add_argument("--fit-steps", type=int, default=200)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--chunk-study-size", type=int, default=100_000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    source = load_file(args.labels)["logits"]
    load = os.getloadavg()[0]
    lines = [
        "# Shuffled vs contiguous reads",
        "",
        f"Command: `python benchmarks/shuffled_reads.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other "
        f"jobs: load average {load:.1f} at start), torch {torch.__version__}, "
        "1 thread (`torch.set_num_threads(1)`)  ",
        f"Labels: real EfficientNet-Lite0 logits, C={source.shape[1]}, "
        f"{source.shape[0]:,} stored rows tiled for larger N; batches of {BATCH}; "
        f"medians of {args.repeats} repeats, the modes interleaved in each repeat",
        "",
        "labels/s per core. 'decode share' = one shuffled warm batch's decode time "
        f"over a {STEP_SECONDS * 1000:.0f} ms training step.",
        "",
        "| codec | N | ratio | archive MB | decode_all | contiguous | shuffled cold "
        "| shuffled warm | whole-chunk shuffled (before) | decode share "
        "| parsed cache MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    study: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.codecs:
            for n in args.sizes:
                logits = _tiled(source, n)
                codec = _fit(name, logits[:100_000], args.ratio, args.fit_steps)
                sizes = [4096]
                if n == args.chunk_study_size:
                    sizes = sorted(set(args.chunk_sizes) | {4096})
                for chunk in sizes:
                    path = os.path.join(tmp, f"{name}-{n}-{chunk}.lz")
                    account = save_archive(path, codec, logits, chunk_size=chunk)
                    row = _measure(path, n, args)
                    if chunk == 4096:
                        line = (
                            f"| {name} | {n:,} | {account.ratio:.1f}x | "
                            f"{account.total_bytes / 1e6:.1f} | {row['stream']} | "
                            f"{row['contiguous']} | "
                            f"{row['cold']} | {row['warm']} | {row['before']} | "
                            f"{row['share']} | {row['cache']} |"
                        )
                        print(line, flush=True)
                        lines.append(line)
                    if len(sizes) > 1:
                        study.append(
                            f"| {name} | {chunk} | {account.total_bytes:,} | "
                            f"{account.header_bytes:,} | {row['contiguous']} | "
                            f"{row['cold']} | {row['warm']} |"
                        )
                        print(study[-1], flush=True)
                    os.remove(path)
                del logits
    if study:
        lines += [
            "",
            f"## Chunk size at N = {args.chunk_study_size:,}",
            "",
            "Header bytes are everything but payload and model: the framing, the "
            "JSON document (one chunk count per chunk) and one 32-byte digest per "
            "chunk.",
            "",
            "| codec | chunk labels | archive bytes | header bytes | contiguous | "
            "shuffled cold | shuffled warm |",
            "|---|---|---|---|---|---|---|",
            *study,
        ]
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text("\n".join(lines) + "\n")
    return 0


def _measure(path: str, n: int, args: argparse.Namespace) -> dict[str, str]:
    """Medians over repeats of every mode, interleaved within each repeat."""
    count = min(args.batches, n // BATCH)
    cold_count = min(args.cold_batches, n // BATCH)
    contiguous = [torch.arange(k * BATCH, (k + 1) * BATCH) for k in range(count)]

    def fresh() -> ArchiveReader:
        return ArchiveReader(path, cache_bytes=int(args.cache_bytes))

    rates: dict[str, list[float]] = {m: [] for m in ("contiguous", "cold", "warm")}
    rates["before"], rates["stream"] = [], []
    warm_seconds: list[float] = []
    for repeat in range(args.repeats):
        g = torch.Generator().manual_seed(repeat)
        order = torch.randperm(n, generator=g)
        shuffled = [order[k * BATCH : (k + 1) * BATCH] for k in range(cold_count)]
        rates["stream"].append(_streaming_rate(path, cold_count * BATCH))
        rates["contiguous"].append(_rate(fresh, contiguous))
        rates["cold"].append(_rate(fresh, shuffled))
        warm = _rate(fresh, shuffled[:count], warm=True)
        rates["warm"].append(warm)
        warm_seconds.append(BATCH / warm)
        if args.before_batches and n <= 100_000:
            rates["before"].append(
                _whole_chunk_rate(path, shuffled[: args.before_batches])
            )
    with fresh() as reader:
        reader.prefetch()
        cache_bytes = reader.cached_bytes
        whole = reader.cached_chunks == reader.num_chunks
    share = statistics.median(warm_seconds) / STEP_SECONDS
    return {
        "stream": _median(rates["stream"]),
        "contiguous": _median(rates["contiguous"]),
        "cold": _median(rates["cold"]),
        "warm": _median(rates["warm"]),
        "before": _median(rates["before"]) if rates["before"] else "not run",
        "share": f"{100 * share:.1f}%",
        "cache": f"{cache_bytes / 1e6:.1f}" + ("" if whole else " (partial)"),
    }


if __name__ == "__main__":
    sys.exit(main())
