"""Encode rate of ``labelzip compress --codec vqae`` after its fit, before/after (issue 12, item 2).

Runs ``python -m labelzip compress IN --codec vqae --ratio R`` as a child
process on one torch thread (``OMP_NUM_THREADS=MKL_NUM_THREADS=1``) once per
source tree per round, the trees alternating, and reads the pass times of its
``--json`` report: the encode rate is ``N / seconds.encode`` (everything after
the fit: reading, widening, the encoder, the nearest-codeword search, top ids,
head levels, packing and ANS, the writes). Every run's archive is hashed: the
trees must write the same bytes. One more run per tree under cProfile gives
the seconds per stage of the encode pass.

The input is real teacher logits tiled to N rows in fp16
(:func:`labelzip.bench.scale.write_tiled_input`, as ``labelzip bench scale``
makes it), written once into ``--work``.

Usage::

    git archive BASE src | tar -x -C /tmp/before
    PYTHONPATH=src python benchmarks/vqae_encode_pipeline.py \
        --labels /work/benchdata/effnet_views.safetensors --num-labels 1M \
        --work /tmp/vqae_encode --src before=/tmp/before/src --src after=src \
        --opt steps=50 --rounds 3 --out benchmarks/results/vqae_encode_pipeline.json

``--opt`` is passed to every compress run: ``steps=50`` shortens the fit only
(rate control picks the same configuration, so the encode does the same work).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from labelzip.bench.scale import parse_count, write_tiled_input

# Encode-pass stages: (name, file, function names) as cProfile names them. Where
# a stage's function was renamed between the trees compared, every name is
# listed and the largest cumulative time (the outermost call) is taken.
STAGES = (
    ("read input rows", "compress_run.py", ("chunk_rows",)),
    ("codec encode, all of it", "archive/chunks.py", ("encode",)),
    ("  check logits", "ops/logits.py", ("check_logits",)),
    ("  normalise", "autoencoder.py", ("normalize_logits",)),
    ("  encoder MLP", "autoencoder.py", ("encode_latent",)),
    ("  nearest codeword", "quantizer.py", ("quantize_residual",)),
    ("  top ids", "train.py", ("top_ids", "top_ids_and_next")),
    ("  head levels", "vqae/codec.py", ("_levels",)),
    ("  pack + ANS", "layout.py", ("pack",)),
)

# Runs the CLI with cProfile on only while a chunk is read or encoded (the
# encode pass; the fit is left out). argv: dump path, then the CLI's argv.
PROFILE_DRIVER = """
import cProfile, runpy, sys
from labelzip.archive.chunks import ChunkEncoder
from labelzip.pipelines import compress_run
dump, sys.argv = sys.argv[1], ["labelzip", *sys.argv[2:]]
prof = cProfile.Profile()
def profiled(fn):
    def run(*args, **kwargs):
        prof.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            prof.disable()
    return run
compress_run.chunk_rows = profiled(compress_run.chunk_rows)
ChunkEncoder.encode = profiled(ChunkEncoder.encode)
try:
    runpy.run_module("labelzip", run_name="__main__")
finally:
    prof.dump_stats(dump)
"""


def compress(
    src: Path, source: Path, out: Path, args: argparse.Namespace, profile: Path | None
) -> dict[str, Any]:
    """One ``compress`` run with ``src`` first on the path: its JSON report."""
    env = {
        **os.environ,
        "PYTHONPATH": str(src.resolve()),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    head = [sys.executable, "-m", "labelzip"]
    if profile is not None:
        head = [sys.executable, "-c", PROFILE_DRIVER, str(profile)]
    cmd = [*head, "compress", str(source), "--key", "logits"]
    cmd += ["--codec", "vqae", "--ratio", f"{args.ratio:g}", "--json", "--quiet"]
    for option in args.opt or ():
        cmd += ["--opt", option]
    cmd += ["-o", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"compress failed ({src}): {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    report["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return report


def stage_seconds(profile: Path) -> dict[str, float]:
    """Cumulative seconds per encode-pass stage in a dump of :data:`PROFILE_DRIVER`."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for name, file, functions in STAGES:
        out[name] = max(
            sum(
                timing[3]
                for (path, _, func), timing in stats.items()
                if path.endswith(file) and func == function
            )
            for function in functions
        )
    return out


def _row(name: str, runs: list[dict[str, Any]], num_labels: int) -> dict[str, Any]:
    encode = [r["seconds"]["encode"] for r in runs]
    return {
        "tree": name,
        "encode_seconds": encode,
        "fit_seconds": [r["seconds"]["fit"] for r in runs],
        "encode_labels_per_s": [num_labels / s for s in encode],
        "median_labels_per_s": num_labels / statistics.median(encode),
        "sha256": sorted({r["sha256"] for r in runs}),
        "total_bytes": runs[0]["total_bytes"],
    }


def markdown_tables(result: dict[str, Any]) -> str:
    """The rates and the stage seconds of ``result`` as markdown tables."""
    trees = result["trees"]
    lines = [
        "| tree | encode labels/s, each run | median | encode s (median) | archive sha256 |",
        "|---|---|---|---|---|",
    ]
    for row in trees:
        rates = ", ".join(f"{r:,.0f}" for r in row["encode_labels_per_s"])
        seconds = statistics.median(row["encode_seconds"])
        digest = ", ".join(d[:12] for d in row["sha256"])
        lines.append(
            f"| {row['tree']} | {rates} | {row['median_labels_per_s']:,.0f} "
            f"| {seconds:.1f} | {digest} |"
        )
    profiles = result["profile_stage_seconds"]
    if profiles:
        names = list(profiles)
        lines += ["", "| encode-pass stage (s) | " + " | ".join(names) + " |"]
        lines.append("|---|" + "---|" * len(names))
        for stage, _, _ in STAGES:
            cells = " | ".join(f"{profiles[n][stage]:.2f}" for n in names)
            lines.append(f"| {stage.strip()} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--key", default=None, help="tensor key in --labels")
    parser.add_argument("--num-labels", type=parse_count, default=1_000_000)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--src", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--ratio", type=float, default=40.0)
    parser.add_argument("--opt", action="append", metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.src)
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.work / f"input-{args.num_labels}.safetensors"
    if not source.exists():
        write_tiled_input(source, args.labels, args.num_labels, args.key)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            report = compress(
                Path(trees[name]), source, args.work / "out.lz", args, None
            )
            runs[name].append(report)
            rate = args.num_labels / report["seconds"]["encode"]
            print(f"round {round_} {name}: {rate:,.0f} labels/s", flush=True)
    profiles: dict[str, dict[str, float]] = {}
    if not args.no_profile:
        for name, tree in trees.items():
            dump = args.work / f"{name}.prof"
            compress(Path(tree), source, args.work / "out.lz", args, dump)
            profiles[name] = stage_seconds(dump)
    result = {
        "command": " ".join(sys.argv),
        "num_labels": args.num_labels,
        "ratio": args.ratio,
        "options": args.opt or [],
        "machine": {
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "trees": [_row(name, runs[name], args.num_labels) for name in trees],
        "same_bytes": len({r["sha256"] for rs in runs.values() for r in rs}) == 1,
        "profile_stage_seconds": profiles,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_tables(result))


if __name__ == "__main__":
    main()
