"""Peak RSS of the streaming commands at two input sizes (issue 12, item 1).

Runs each command as a child process and records its peak resident set
(``ru_maxrss`` from ``wait4``) and wall time, at a small and a large size:

- ``decompress`` and ``eval-codec``: a dense fp16 archive of N x 1000 labels and
  its (N, 1000) fp16 teacher file (both written batch by batch);
- ``relabel``: a 1000-image, 1000-class 3x32x32 set and a TorchScript linear
  teacher, E epochs (N = 1000 E views), ``--codec topk --ratio 20`` (a fitted
  codec: a fit pass over ``--fit-views`` views, then the encode pass);
- ``relabel-lm``: the tests' tiny LLaMA teacher (vocab 262) over a seeded text
  corpus, ``--codec topk-tail --ratio 20`` (two passes: reservoir, then encode).

Usage::

    PYTHONPATH=src python benchmarks/streaming_rss.py --work /tmp/streaming_rss \
        --out benchmarks/results/streaming_rss.md

``--src`` points the children at another source tree (e.g. a checkout of the
code before a change) to compare before/after on the same inputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from labelzip.archive import ArchiveWriter, Layout
from labelzip.codecs.registry import create_codec
from labelzip.distill import DistilledSet
from labelzip.logit_writer import SafetensorsStreamWriter

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 1000
BATCH = 4096


def peak_rss(argv: list[str], src: Path) -> tuple[float, float]:
    """(peak RSS MiB, wall s) of ``python -m labelzip ARGV`` with ``src`` first."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelzip", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {err}")
    return usage.ru_maxrss / 1024, wall


def logits_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    """A (n, 1000) fp16 teacher file and its dense fp16 archive."""
    logits, archive = folder / f"t{n}.safetensors", folder / f"a{n}.lz"
    codec = create_codec("dense").fit([torch.zeros(1, CLASSES)])
    gen = torch.Generator().manual_seed(n)
    with (
        SafetensorsStreamWriter(logits, {"logits": ((n, CLASSES), torch.float16)}) as t,
        ArchiveWriter(archive, codec, layout=Layout.for_shape((n,))) as writer,
    ):
        for lo in range(0, n, BATCH):
            rows = (torch.randn(min(BATCH, n - lo), CLASSES, generator=gen) * 3).half()
            t.write("logits", rows)
            writer.write(rows)
    return logits, archive


def vision_inputs(folder: Path) -> tuple[Path, Path]:
    """A 1000-image 1000-class set and a TorchScript linear teacher."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CLASSES, 3, 32, 32), generator=g, dtype=torch.uint8)
    names = tuple(f"c{i}" for i in range(CLASSES))
    distilled = DistilledSet(
        images=images,
        labels=torch.arange(CLASSES),
        class_names=names,
        method="random",
        ipc=1,
    )
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(192, CLASSES))
    path = folder / "teacher.ts"
    torch.jit.script(teacher).save(str(path))
    return distilled.save(folder / "set.safetensors"), path


def lm_inputs(folder: Path, words: int) -> tuple[Path, Path]:
    """The tests' tiny LLaMA teacher and a seeded corpus of ``words`` words."""
    sys.path.insert(0, str(ROOT))
    from tests.lm.conftest import save_tiny_teacher
    from tests.lm.test_relabel import write_documents

    teacher = folder / "lm_teacher"
    if not teacher.exists():
        save_tiny_teacher(teacher)
    docs = write_documents(folder / f"docs{words}", count=50, words=words // 50)
    return teacher, docs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--src", type=Path, default=ROOT / "src")
    p.add_argument("--labels", type=int, nargs=2, default=[65_536, 655_360])
    p.add_argument("--epochs", type=int, nargs=2, default=[20, 200])
    p.add_argument("--tokens", type=int, nargs=2, default=[16_000, 160_000])
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.labels:
        logits, archive = logits_inputs(args.work, n)
        out = args.work / "out.safetensors"
        rss, wall = peak_rss(
            ["decompress", str(archive), "-o", str(out), "--quiet"], args.src
        )
        rows.append(("decompress", f"{n:,} labels x 1000", rss, wall))
        out.unlink()
        argv = ["eval-codec", str(logits), str(archive), "--quiet", "--json"]
        rss, wall = peak_rss(argv, args.src)
        rows.append(("eval-codec", f"{n:,} labels x 1000", rss, wall))
        logits.unlink()
        archive.unlink()
    image_set, teacher = vision_inputs(args.work)
    for epochs in args.epochs:
        argv = ["relabel", str(image_set), "--teacher-file", str(teacher), "--epochs"]
        argv += [str(epochs), "--codec", "topk", "--ratio", "20", "--quiet"]
        rss, wall = peak_rss([*argv, "-o", str(args.work / "r.lz")], args.src)
        rows.append(("relabel", f"{epochs * CLASSES:,} views x 1000", rss, wall))
    for tokens in args.tokens:
        lm_teacher, docs = lm_inputs(args.work, int(tokens * 1.5))
        argv = ["relabel-lm", "--teacher", str(lm_teacher), "--corpus", str(docs)]
        argv += ["--seq-len", "64", "--tokens", str(tokens), "--threads", "1"]
        argv += ["--codec", "topk-tail", "--ratio", "20", "--quiet"]
        rss, wall = peak_rss([*argv, "-o", str(args.work / "lm.lz")], args.src)
        rows.append(("relabel-lm", f"{tokens:,} tokens x 262", rss, wall))
    lines = [
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {platform.machine()}, `nproc` = {os.cpu_count()}, "
        f"{platform.platform()}, torch {torch.__version__}; children with "
        "OMP_NUM_THREADS=1.",
        "",
        "| command | input | peak RSS MiB | wall s |",
        "|---|---|---|---|",
        *(f"| {c} | {i} | {r:.0f} | {w:.1f} |" for c, i, r, w in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
