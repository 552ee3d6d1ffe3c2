"""Long archive fuzz run: seeded corruptions of every codec's archives, tallied.

Usage (the committed result was made with the command in its header):
    nice python benchmarks/fuzz.py --cases 50000 --seed 1 --threads 1 \
        --out benchmarks/results/fuzz.md

The same cases as ``tests/fuzz`` (:mod:`labelzip.bench.fuzz`), many more of
them: random bytes, header edits with every digest recomputed, crafted sizes,
over a plain and a pruned archive of each registered codec. A case fails when
reading it neither raises a ``LabelzipError`` nor decodes to the intact labels
(document edits that decode cleanly to other labels are ``reinterpreted``, see
the module). Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

from labelzip.bench.fuzz import FAMILIES, build_archives, run_fuzz
from labelzip.io import atomic_path

OUTCOMES = ("refused", "identical", "reinterpreted")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="s per case")
    parser.add_argument(
        "--memory-gib", type=float, default=8.0, help="address-space limit"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    limit = int(args.memory_gib * (1 << 30))  # a runaway allocation fails, not swaps
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    with tempfile.TemporaryDirectory() as tmp:
        archives = build_archives(Path(tmp))

    def progress(i: int, report: object) -> None:
        if (i + 1) % 5000 == 0:
            print(f"{i + 1} cases", flush=True)

    report = run_fuzz(
        archives,
        args.cases,
        seed=args.seed,
        timeout_s=args.timeout,
        progress=progress,
    )
    per: dict[tuple[str, str], Counter[str]] = {}
    for (name, family, outcome), n in report.outcomes.items():
        per.setdefault((name, family), Counter())[outcome] += n
    totals: Counter[str] = Counter()
    for counts in per.values():
        totals.update(counts)
    failed = sum(n for o, n in totals.items() if o not in OUTCOMES)
    lines = [
        "# Archive fuzzing: long run",
        "",
        f"Command: `python benchmarks/fuzz.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {args.threads} thread, Python "
        f"{platform.python_version()}  ",
        f"Cases: {report.cases} in {report.seconds:.0f} s, seed {args.seed}; "
        f"{len(archives)} archives (plain and pruned, every codec), families "
        f"{', '.join(FAMILIES)}  ",
        f"Failures (crash, hang or wrong labels): **{failed}**",
        "",
        "| archive | family | cases | refused | identical | reinterpreted | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, family), counts in sorted(per.items()):
        bad = sum(n for o, n in counts.items() if o not in OUTCOMES)
        cells = [str(counts[o]) for o in OUTCOMES]
        lines.append(
            f"| {name} | {family} | {sum(counts.values())} | "
            + " | ".join(cells)
            + f" | {bad} |"
        )
    cells = [str(totals[o]) for o in OUTCOMES]
    lines.append(
        f"| **all** | | {report.cases} | " + " | ".join(cells) + f" | {failed} |"
    )
    if report.failures:
        lines += ["", "First failures:", ""]
        lines += [f"- `{f}`" for f in report.failures]
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[:6]))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
