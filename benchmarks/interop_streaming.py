"""Streaming benchmark: `labelzip import` / `export` on a multi-GB SRe2L-format store.

Issue 10, item 3: import and export hold one file at a time, so peak memory must
not grow with the number of files. This script writes (one file at a time) an
SRe2L-format store -- ``epoch_{e}/batch_{b}.tar``, batch 1024, 1000 classes,
fp16 logits, CutMix parameters, the layout of SRe2L's ``generate_soft_label.py``
-- whose labels tile the real EfficientNet-Lite0 logits of
``effnet_views.safetensors``; then it runs the lossless ``labelzip import
--format sre2l`` and ``labelzip export --format sre2l`` as child processes and
records each one's wall time and peak RSS (``wait4`` rusage of that child). It
does the same on a store with 10x fewer epochs, checks that the export gives back
sampled files element for element, and deletes every store, archive and export.

Usage (the committed results were made with the command in their header)::

    nice -n 10 python benchmarks/interop_streaming.py \
        --labels /work/benchdata/effnet_views.safetensors \
        --work /work/benchdata/interop_streaming --epochs 260 26 \
        --out benchmarks/results/interop_streaming.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from interop_stores import StoreSpec, tiled_source, write_store
from labelzip.interop.safe_load import load_torch_file
from labelzip.io import atomic_path

IMAGES = 10_000  # ImageNet-1K IPC 10: 10 batches of at most 1024 per epoch
BATCH = 1024


def _status_kib(pid: int) -> dict[str, int]:
    """RssAnon / RssFile of a running process, in KiB (empty once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``: wall seconds, peak RSS (MiB) from the child's own rusage, and the
    peaks of its anonymous and file-backed (mapped file pages) RSS, sampled every 50 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    peaks = {"RssAnon": 0, "RssFile": 0}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        for key, value in _status_kib(proc.pid).items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit {proc.returncode}: {' '.join(cmd)}")
    return {
        "wall_s": wall,
        "rss_mib": usage.ru_maxrss / 1024,
        "anon_mib": peaks["RssAnon"] / 1024,
        "file_mib": peaks["RssFile"] / 1024,
        "cpu_s": usage.ru_utime,
    }


def tree_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root`` (a file or a folder)."""
    if root.is_file():
        return 1, root.stat().st_size
    sizes = [p.stat().st_size for p in root.rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)


def check_sampled_files(store: Path, export: Path, epochs: int) -> int:
    """Compare first, middle and last files element by element; returns files checked."""
    names = [
        f"epoch_{e}/batch_{b}.tar" for e in {0, epochs // 2, epochs - 1} for b in (0, 9)
    ]
    for name in names:
        a = load_torch_file(store / name, root=store)
        b = load_torch_file(export / name, root=export)
        if len(a) != len(b):
            raise SystemExit(f"{name}: list length {len(a)} vs {len(b)}")
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            same = (
                torch.equal(x, y) and x.dtype == y.dtype
                if isinstance(x, torch.Tensor)
                else type(x) is type(y) and repr(x) == repr(y)
            )
            if not same:
                raise SystemExit(f"{name}: element {k} differs after export")
    return len(names)


def one_size(
    epochs: int, work: Path, source: Any, env: dict[str, str]
) -> dict[str, Any]:
    """Write, import, export, check and delete one store; its measurements."""
    store, archive, export = (
        work / f"store_{epochs}",
        work / f"a_{epochs}.lz",
        work / f"x_{epochs}",
    )
    t0 = time.perf_counter()
    info = write_store("sre2l", store, StoreSpec(IMAGES, BATCH, epochs), source)
    write_s = time.perf_counter() - t0
    cli = [sys.executable, "-m", "labelzip"]
    try:
        imp = run_measured(
            [
                *cli,
                "import",
                "--format",
                "sre2l",
                str(store),
                "-o",
                str(archive),
                "--sampler-seed",
                "42",
                "--batch-size",
                str(BATCH),
                "--quiet",
            ],
            env,
        )
        exp = run_measured(
            [
                *cli,
                "export",
                str(archive),
                "--format",
                "sre2l",
                "-o",
                str(export),
            ],
            env,
        )
        checked = check_sampled_files(store, export, epochs)
        return {
            "epochs": epochs,
            "labels": info["labels"],
            "files": info["files"],
            "store_bytes": info["bytes"],
            "write_s": write_s,
            "archive_bytes": archive.stat().st_size,
            "export_files_bytes": tree_bytes(export),
            "import": imp,
            "export": exp,
            "checked": checked,
        }
    finally:
        for path in (store, export):
            shutil.rmtree(path, ignore_errors=True)
        archive.unlink(missing_ok=True)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    return (
        f"{platform.machine()}, `nproc` = {os.cpu_count()}, CPU model: {cpu}, "
        f"{platform.platform()}, torch {torch.__version__}; `free -h`:\n\n```\n{mem}\n```"
    )


def _rss(run: dict[str, float]) -> str:
    return f"{run['rss_mib']:.0f} ({run['anon_mib']:.0f} / {run['file_mib']:.0f})"


def report(rows: list[dict[str, Any]], command: str, notes: str) -> str:
    lines = [
        "# Streaming import/export of an SRe2L-format store",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}",
        "",
        notes,
        "",
        "Peak RSS is the child's `ru_maxrss`; anon / file are the peaks of its `RssAnon` "
        "(heap) and `RssFile` (pages of mapped files, e.g. an mmapped archive; reclaimable "
        "page cache, but counted in RSS) sampled every 50 ms.",
        "",
        "| epochs | labels | files | store GB | write s | import s | import peak RSS MiB "
        "(anon / file) | archive GB | export s | export peak RSS MiB (anon / file) "
        "| export GB | files checked |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['epochs']} | {r['labels']:,} | {r['files']:,} | {r['store_bytes'] / 1e9:.2f} "
            f"| {r['write_s']:.0f} | {r['import']['wall_s']:.0f} | {_rss(r['import'])} "
            f"| {r['archive_bytes'] / 1e9:.2f} | {r['export']['wall_s']:.0f} "
            f"| {_rss(r['export'])} | {r['export_files_bytes'][1] / 1e9:.2f} "
            f"| {r['checked']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--labels", type=Path, required=True, help="effnet_views.safetensors"
    )
    parser.add_argument(
        "--work", type=Path, required=True, help="scratch folder (created)"
    )
    parser.add_argument("--epochs", type=int, nargs="+", default=[260, 26])
    parser.add_argument("--out", type=Path, required=True, help="results markdown")
    parser.add_argument("--notes", default="", help="free text for the report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logits = load_file(str(args.labels))["logits"]
    source = tiled_source(logits)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args.work.mkdir(parents=True, exist_ok=False)
    rows = []
    try:
        for epochs in args.epochs:
            rows.append(one_size(epochs, args.work, source, env))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    command = "python " + shlex.join(sys.argv)
    with atomic_path(args.out) as tmp:
        tmp.write_text(report(rows, command, args.notes))


if __name__ == "__main__":
    main()
