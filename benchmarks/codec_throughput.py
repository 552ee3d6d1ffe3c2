"""Codec throughput at C=1000: fit seconds, encode and decode labels/s, per thread count.

Usage (the committed result was made with the command in its header):
    python benchmarks/codec_throughput.py LABELS.safetensors --fit-rows 1000000 \
        --rows 100000 --threads 1 2 --repeats 3 --out benchmarks/results/codec_throughput.md

The fit reads a stream of ``--fit-rows`` labels: the real rows tiled, in
batches of 4096, in ``--dtype`` (fp16 like a saved label set), so a fit whose
cost grew with N would show it. Encode and decode run on the first ``--rows``
real rows, in archive chunks of 4096 labels, with ``torch.set_num_threads``
threads (the VQAE fit too, via its ``fit_threads``). Rates are medians of
``--repeats`` runs, in labels per wall second and per CPU second of this
process (the second is what one core does, whatever else runs on the machine).

Projections for IPC 10/50/200 ImageNet-1K label sets (3M/15M/60M labels) are
fit seconds plus N over the median encode rate. The GPU column assumes the
tensor half of VQAE encoding (encoder, codeword search, top ids, value levels:
:meth:`VQAECodec.symbols`) costs nothing next to its host half (bit packing and
ANS coding: :meth:`BlockLayout.pack`), which is measured here on one thread, and
the fp16 input crossing PCIe at 25 GB/s; it is a projection, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from labelzip.archive import Layout
from labelzip.codecs.base import Codec, EncodedBlock
from labelzip.codecs.registry import create_codec
from labelzip.codecs.vqae.codec import VQAECodec
from labelzip.io import atomic_path
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec

CHUNK = 4096  # labels per archive chunk (DEFAULT_CHUNK_SIZE)
IPC_SETS = (("IPC 10", 3_000_000), ("IPC 50", 15_000_000), ("IPC 200", 60_000_000))
PCIE_BYTES_PER_S = 25e9  # host-to-GPU copy rate assumed for the GPU projection


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _tiled(
    logits: torch.Tensor, rows: int, dtype: torch.dtype
) -> Callable[[], Iterator[torch.Tensor]]:
    """A re-iterable stream of ``rows`` labels: the real ones repeated, in CHUNK batches."""
    source = logits.to(dtype)

    def stream() -> Iterator[torch.Tensor]:
        done = 0
        while done < rows:
            for batch in source.split(CHUNK):
                take = min(batch.shape[0], rows - done)
                yield batch[:take]
                done += take
                if done == rows:
                    return

    return stream


def _fit(
    name: str,
    stream: Callable[[], Iterator[torch.Tensor]],
    rows: int,
    args: argparse.Namespace,
    threads: int,
) -> Codec:
    if name == "dense":
        return create_codec("dense").fit(stream, num_labels=rows)
    options: dict[str, Any] = {}
    if name == "vqae":
        options = {"steps": args.fit_steps, "fit_threads": threads}
    return fit_codec(
        name,
        stream,
        options,
        target=ArchiveTarget(
            RateGoal(ratio=args.ratio), Layout.for_shape((rows,)), 1000
        ),
    )


def _encode_all(codec: Codec, data: torch.Tensor) -> list[EncodedBlock]:
    return [codec.encode(b) for b in data.split(CHUNK)]


def _decode_all(codec: Codec, blocks: list[EncodedBlock]) -> None:
    for block in blocks:
        codec.decode(block)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt_rate(values: list[float]) -> str:
    return f"{_median(values):,.0f}"


def _fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _measure(
    name: str, logits: torch.Tensor, args: argparse.Namespace, threads: int
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    data = logits[: args.rows].to(args.torch_dtype)
    stream = _tiled(logits, args.fit_rows, args.torch_dtype)
    fits, fits_cpu, enc_wall, enc_cpu, dec_wall, dec_cpu, host = ([] for _ in range(7))
    codec: Codec | None = None
    for _ in range(args.repeats):
        wall, cpu, codec = _timed(
            lambda: _fit(name, stream, args.fit_rows, args, threads)
        )
        fits.append(wall)
        fits_cpu.append(cpu)
        torch.set_num_threads(threads)
        wall, cpu, blocks = _timed(_encode_all, codec, data)
        enc_wall.append(len(data) / wall)
        enc_cpu.append(len(data) / cpu)
        wall, cpu, _ = _timed(_decode_all, codec, blocks)
        dec_wall.append(len(data) / wall)
        dec_cpu.append(len(data) / cpu)
        if isinstance(codec, VQAECodec):
            host.append(_host_rate(codec, data))
    assert codec is not None
    payload = sum(b.data.numel() for b in blocks) / len(data)
    return {
        "codec": codec,
        "fit": fits,
        "fit_cpu": fits_cpu,
        "enc_wall": enc_wall,
        "enc_cpu": enc_cpu,
        "dec_wall": dec_wall,
        "dec_cpu": dec_cpu,
        "host": host,
        "payload": payload,
    }


def _host_rate(codec: VQAECodec, data: torch.Tensor) -> float:
    """Labels per CPU second of the host half of VQAE encoding (packing + ANS)."""
    parts = [codec.symbols(b) for b in data.split(CHUNK)]
    layout = codec.layout
    _, cpu, _ = _timed(lambda: [layout.pack(*p) for p in parts])
    return len(data) / cpu


def _describe(codec: Codec) -> str:
    cfg = codec.config.model_dump()
    if codec.kind == "vqae":
        keys = (
            "num_ids",
            "value_bits",
            "num_chunks",
            "codebook_size",
            "num_stages",
            "hidden_dim",
        )
        return ", ".join(f"{k}={cfg[k]}" for k in keys) + f", steps={cfg['steps']}"
    skip = {"kind", "seed"}
    return ", ".join(
        f"{k}={v}"
        for k, v in cfg.items()
        if k not in skip and not isinstance(v, list | dict)
    )[:90]


def _fit_scaling(logits: torch.Tensor, args: argparse.Namespace) -> list[str]:
    """VQAE fit seconds on 1 thread for a short and the full stream: bounded by the sample."""
    lines = [
        "",
        "## VQAE fit time against N (1 thread)",
        "",
        "| labels streamed | fit s (median) | runs |",
        "|---|---|---|",
    ]
    torch.set_num_threads(1)
    for rows in sorted({min(args.rows, args.fit_rows), args.fit_rows}):
        stream = _tiled(logits, rows, args.torch_dtype)
        runs = [
            _timed(_fit, "vqae", stream, rows, args, 1)[0] for _ in range(args.repeats)
        ]
        lines.append(
            f"| {rows:,} | {_median(runs):.1f} | {', '.join(f'{r:.1f}' for r in runs)} |"
        )
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "labels", help="safetensors file with a (N, 1000) 'logits' tensor"
    )
    parser.add_argument(
        "--codecs", nargs="+", default=["dense", "topk", "rskd", "vqae"]
    )
    parser.add_argument(
        "--ratio", type=float, default=40.0, help="all-in ratio (not dense)"
    )
    parser.add_argument("--fit-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--rows", type=int, default=100_000, help="labels encoded and decoded"
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fit-steps", type=int, default=2000, help="VQAE training steps"
    )
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    args.torch_dtype = getattr(torch, args.dtype)
    from safetensors.torch import load_file

    logits = load_file(args.labels)["logits"].float()
    results = {
        (name, t): _measure(name, logits, args, t)
        for name in args.codecs
        for t in args.threads
    }
    lines = [
        "# Codec throughput at C=1000",
        "",
        f"Command: `python benchmarks/codec_throughput.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at the end  ",
        f"Labels: {logits.shape[0]:,} real EfficientNet-Lite0 views, C={logits.shape[1]}, "
        f"{args.dtype}; fits stream {args.fit_rows:,} of them tiled, encode and decode "
        f"run on the first {args.rows:,} in chunks of {CHUNK}; ratio {args.ratio:g}x "
        f"(dense: fp16 values); VQAE fit with {args.fit_steps} steps  ",
        "Rates: median of the runs, labels per wall second and per CPU second of the process.",
        "",
        "| codec | threads | fit s (wall / CPU) | encode labels/s (wall) | encode labels/CPU-s | "
        "decode labels/s (wall) | decode labels/CPU-s | payload B/label | runs (encode wall) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, threads), r in results.items():
        lines.append(
            f"| {name} | {threads} | {_median(r['fit']):.1f} / {_median(r['fit_cpu']):.1f} "
            f"| {_fmt_rate(r['enc_wall'])} | "
            f"{_fmt_rate(r['enc_cpu'])} | {_fmt_rate(r['dec_wall'])} | {_fmt_rate(r['dec_cpu'])} | "
            f"{r['payload']:.1f} | {', '.join(f'{v:,.0f}' for v in r['enc_wall'])} |"
        )
    lines += ["", "Configurations chosen:", ""]
    for name in args.codecs:
        lines.append(
            f"- {name}: {_describe(results[(name, args.threads[0])]['codec'])}"
        )
    lines += [
        "",
        "## Projected time to encode an ImageNet-1K label set (fit + N / encode rate)",
        "",
        "One thread: from fit CPU seconds and encode rates per CPU second (what one "
        "idle core does); more threads: from the wall times measured here.",
        "",
        "| codec | threads | "
        + " | ".join(f"{label} ({n // 1_000_000}M)" for label, n in IPC_SETS)
        + " |",
        "|---|---|" + "---|" * len(IPC_SETS),
    ]
    for (name, threads), r in results.items():
        idle = threads == 1
        rate = _median(r["enc_cpu"] if idle else r["enc_wall"])
        fit = _median(r["fit_cpu"] if idle else r["fit"])
        cells = " | ".join(_fmt_time(fit + n / rate) for _, n in IPC_SETS)
        lines.append(f"| {name} | {threads} | {cells} |")
    vq = [(t, r) for (name, t), r in results.items() if name == "vqae" and r["host"]]
    if vq:
        threads, r = vq[0]
        host = _median(r["host"])
        pcie = PCIE_BYTES_PER_S / (2 * logits.shape[1])
        gpu_rate = min(host, pcie)
        fit = _median(r["fit"])
        lines += [
            "",
            "## Projection for one GPU (VQAE; not measured)",
            "",
            f"Assumption: on a GPU the tensor half of encoding (`VQAECodec.symbols`) is "
            f"free next to its host half (`BlockLayout.pack`: bit packing and ANS coding "
            f"on one CPU thread, measured here at {host:,.0f} labels/CPU-s) and the fp16 "
            f"input crossing PCIe at {PCIE_BYTES_PER_S / 1e9:.0f} GB/s ({pcie:,.0f} labels/s); "
            f"the fit is taken as measured here on {threads} thread(s) ({fit:.0f} s; a GPU "
            f"would shorten it). Projected rate: {gpu_rate:,.0f} labels/s.",
            "",
            "| "
            + " | ".join(f"{label} ({n // 1_000_000}M)" for label, n in IPC_SETS)
            + " |",
            "|" + "---|" * len(IPC_SETS),
            "| "
            + " | ".join(_fmt_time(fit + n / gpu_rate) for _, n in IPC_SETS)
            + " |",
        ]
    lines += _fit_scaling(logits, args) if "vqae" in args.codecs else []
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
