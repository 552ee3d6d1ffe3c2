"""Merge `labelzip bench vision` reports of separate runs into one report (JSON, MD, PNG).

Runs that split the settings across processes (one per core) or add codecs later
write one ``vision_bench.json`` each; this joins them into one table per
(framework, IPC) and one plot. The runs must share the dataset and teacher. A
row (framework, IPC, codec, target) that two runs both have is kept once, from
the first run, after checking both runs measured the same accuracies (the dense
reference of runs with the same seed is bit-identical; anything else means the
runs are not comparable and the merge refuses).

    python benchmarks/merge_vision_reports.py RUN1/vision_bench.json \
        RUN2/vision_bench.json --stem vision_bench_v3 --out-dir benchmarks/results \
        --preamble provenance.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from labelzip.bench.vision import write_report


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["framework"], row["ipc"], row["codec"], row["target_ratio"])


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report holding every run's settings, rows, skipped rows and storage rows."""
    first = reports[0]
    for other in reports[1:]:
        for field in ("dataset", "teacher"):
            if other[field] != first[field]:
                raise SystemExit(f"runs differ in {field}: cannot merge")
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    settings: dict[tuple[str, int], dict[str, Any]] = {}
    storage: dict[tuple[Any, ...], dict[str, Any]] = {}
    skipped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for report in reports:
        for info in report["settings"]:
            settings.setdefault((info["framework"], info["ipc"]), info)
        for row in report["rows"]:
            seen = rows.get(_key(row))
            if seen is None:
                rows[_key(row)] = row
            elif seen.get("accuracies", [seen["accuracy"]]) != row.get(
                "accuracies", [row["accuracy"]]
            ):
                raise SystemExit(
                    f"runs measured {_key(row)} differently "
                    f"({seen['accuracy']} vs {row['accuracy']}): not the same setting"
                )
        for item in report["skipped"]:
            skipped.setdefault(_key(item), item)
        for item in report["storage"]:
            key = (item["dataset"], item["ipc"], item["epochs"], item["framework"])
            storage.setdefault(key, item)
    order = list(settings)
    by_setting = sorted(
        rows.values(), key=lambda r: order.index((r["framework"], r["ipc"]))
    )
    return {
        **first,
        "config": {
            **first["config"],
            "ratios": sorted({x for r in reports for x in r["config"]["ratios"]}),
            "codecs": list(
                dict.fromkeys(c for r in reports for c in r["config"]["codecs"])
            ),
            "settings": [list(s) for s in order],
            "merged_runs": [r["config"] for r in reports],
        },
        "seconds": [r["seconds"] for r in reports],
        "settings": list(settings.values()),
        "rows": by_setting,
        "skipped": list(skipped.values()),
        "storage": list(storage.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="vision_bench.json files")
    parser.add_argument("--stem", default="vision_bench_merged")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--preamble",
        type=Path,
        help="Markdown put before the report (commands, machine)",
    )
    args = parser.parse_args(argv)
    report = merge([json.loads(p.read_text()) for p in args.reports])
    paths = write_report(report, args.out_dir, args.stem)
    if args.preamble is not None:
        md = paths[1]
        body = md.read_text()
        title, _, rest = body.partition("\n")
        md.write_text(f"{title}\n\n{args.preamble.read_text().strip()}\n{rest}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
