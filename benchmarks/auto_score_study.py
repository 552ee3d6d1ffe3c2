"""Which label distortion predicts the students? A study over archives with students.

``--codec auto`` ranks candidates by a held-out score: the KL at T = 4 of the labels as
stored plus 2/m of the reuse mismatch of pruned views. Students disagreed with it on some
sets (docs/auto.md). This study takes archives whose students were trained (the work
folders of ``labelzip bench vision`` and ``benchmarks/auto_compress_students.py``), decodes
each against its dense archive (the teacher's labels) and measures, per archive:

- the codec's error on the stored labels: KL at T = 1 and T = 4, and whether the stored
  label keeps the teacher's top-1 and its top-2 set;
- the reuse mismatch: KL at T = 4 between a pruned view's teacher label and that of the
  kept view standing in for it (0 without pruning), and m, the views kept per sample;
- auto's score with the default charge (stored KL + min(1, 2/m) x reuse mismatch, over
  every view) and the plain KL of every label as used;

then the Spearman rank correlation of each with the students' accuracy loss (1 -
retention) over all archives, and within each framework's set. Measured on the archives
themselves (the labels students saw), not on auto's held-out sample.

    python benchmarks/auto_score_study.py --bench /work/runs/mnist5k:mnist \\
        --students /work/runs/acs2_fmnist:fashion --out results/auto_score_study
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from labelzip.archive import ArchiveReader, load_archive
from labelzip.ops.metrics import kl_divergence
from labelzip.outputs import write_text
from labelzip.selection.score import reuse_score, reuse_share

MEASURES = (
    "stored_kl_t4",
    "stored_kl_t1",
    "stored_top1_miss",
    "stored_top2_miss",
    "reuse_kl_t4",
    "one_over_m",
    "auto_score",
    "auto_score_t1",
    "error_t1_reuse_t4",
    "used_kl_t4",
)


def measure(archive: Path, dense: Path) -> dict[str, float]:
    """The distortions of ``archive``'s labels against ``dense`` (module docstring)."""
    teacher = load_archive(dense).float()
    decoded = load_archive(archive).float()
    num_classes = teacher.shape[-1]
    teacher, decoded = (
        teacher.reshape(-1, num_classes),
        decoded.reshape(-1, num_classes),
    )
    with ArchiveReader(archive) as reader:
        plan = reader.prune
        views = int(reader.layout.shape[reader.layout.dims.index("epoch")])
    flat = torch.arange(teacher.shape[0])
    if plan is None:
        kept, standin, m = flat, flat, views
    else:
        kept = plan.kept_indices()
        standin = plan.kept_flat(plan.stored_index(flat))
        m = int(plan.keep_per_group)
    stored_t4 = kl_divergence(teacher[kept], decoded[kept], 4.0)
    stored_t1 = kl_divergence(teacher[kept], decoded[kept], 1.0)
    top1 = teacher[kept].argmax(1) == decoded[kept].argmax(1)
    top2 = (
        teacher[kept].topk(2, dim=1).indices.sort(1).values
        == decoded[kept].topk(2, dim=1).indices.sort(1).values
    ).all(1)
    reuse = kl_divergence(teacher, teacher[standin], 4.0)
    stored_views = m if plan is not None else None
    used, scores = {}, {}
    for t in (4.0, 1.0):  # auto's score at its default temperature, and at T = 1
        source = kl_divergence(teacher[standin], decoded, t)  # error of label used
        used[t] = kl_divergence(teacher, decoded, t)
        scores[t] = reuse_score(used[t], source, stored_views, None, num_classes)
    return {
        "views_kept": m,
        "stored_kl_t4": float(stored_t4.mean()),
        "stored_kl_t1": float(stored_t1.mean()),
        "stored_top1_miss": 1 - float(top1.float().mean()),
        "stored_top2_miss": 1 - float(top2.float().mean()),
        "reuse_kl_t4": float(reuse.mean()),
        "one_over_m": 1 / m,
        "auto_score": float(scores[4.0].mean()),
        "auto_score_t1": float(scores[1.0].mean()),
        # the stored labels' error at T = 1 plus the reuse charge of the mismatch at T = 4
        "error_t1_reuse_t4": float(stored_t1.mean())
        + reuse_share(stored_views, None, num_classes) * float(reuse.mean()),
        "used_kl_t4": float(used[4.0].mean()),
    }


def bench_rows(folder: Path, dataset: str) -> list[dict[str, Any]]:
    """Archives and retentions of a ``bench vision`` out-dir."""
    report = json.loads((folder / "vision_bench.json").read_text())
    archives = folder / "vision_archives"
    out = []
    for row in report["rows"]:
        if row["codec"] == "dense":
            continue
        stem = f"{row['framework']}_ipc{row['ipc']}"
        name = f"{stem}_{row['codec']}_{row['target_ratio']:g}x.lz"
        out.append(
            {
                "dataset": dataset,
                "set": row["framework"],
                "archive": archives / name,
                "dense": archives / f"{stem}_dense.lz",
                "label": f"relabel {row['codec']} {row['target_ratio']:g}x",
                "retention": row["retention"],
            }
        )
    return out


def student_rows(folder: Path, dataset: str) -> list[dict[str, Any]]:
    """Archives and retentions of an ``auto_compress_students.py`` work folder."""
    report = json.loads((folder / "report.json").read_text())
    out = []
    for setting in report["settings"]:
        stem = folder / f"{setting['framework']}_ipc{setting['ipc']}"
        for row in setting["rows"][1:]:
            out.append(
                {
                    "dataset": dataset,
                    "set": setting["framework"],
                    "archive": stem / f"compress_auto_{row['target']:g}x.lz",
                    "dense": stem / "dense.lz",
                    "label": f"compress auto {row['target']:g}x ({row['chosen']})",
                    "retention": row["retention"],
                }
            )
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", nargs="*", default=[], help="OUT_DIR:DATASET")
    parser.add_argument("--students", nargs="*", default=[], help="WORK:DATASET")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for item in args.bench:
        folder, _, dataset = item.rpartition(":")
        rows += bench_rows(Path(folder), dataset)
    for item in args.students:
        folder, _, dataset = item.rpartition(":")
        rows += student_rows(Path(folder), dataset)
    for row in rows:
        row.update(measure(row["archive"], row["dense"]))
        row["loss"] = 1 - row["retention"]
    lines = [
        "# Which label distortion predicts the students?",
        "",
        "Command: `python benchmarks/auto_score_study.py "
        + " ".join(
            [f"--bench {' '.join(args.bench)}"] * bool(args.bench)
            + [f"--students {' '.join(args.students)}"] * bool(args.students)
        )
        + f" --out {args.out}`",
        "",
        f"{len(rows)} archives with students. Spearman rank correlation of each measure "
        "with the students' loss (1 - retention); 1 = it orders the archives as the "
        "students do.",
        "",
    ]
    groups: dict[str, list[dict[str, Any]]] = {"all": rows}
    for row in rows:
        groups.setdefault(f"{row['dataset']} {row['set']}", []).append(row)
    lines += [
        "| measure | "
        + " | ".join(f"{k} ({len(v)})" for k, v in groups.items())
        + " |",
        "|---|" + "---|" * len(groups),
    ]
    correlations: dict[str, dict[str, float]] = {}
    for name in MEASURES:
        correlations[name] = {
            k: spearman([r[name] for r in v], [r["loss"] for r in v])
            for k, v in groups.items()
        }
        cells = " | ".join(f"{c:+.2f}" for c in correlations[name].values())
        lines.append(f"| {name} | {cells} |")
    lines += [
        "",
        "| dataset | set | archive | m | stored KL T=4 | stored KL T=1 | top-1 miss "
        "| top-2 miss | reuse KL | auto score | used KL | retention |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["set"], -r["retention"])):
        lines.append(
            f"| {r['dataset']} | {r['set']} | {r['label']} | {r['views_kept']} | "
            f"{r['stored_kl_t4']:.4f} | {r['stored_kl_t1']:.4f} | "
            f"{r['stored_top1_miss']:.3f} | {r['stored_top2_miss']:.3f} | "
            f"{r['reuse_kl_t4']:.4f} | {r['auto_score']:.4f} | {r['used_kl_t4']:.4f} | "
            f"{100 * r['retention']:.1f}% |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    for row in rows:
        row["archive"], row["dense"] = str(row["archive"]), str(row["dense"])
    write_text(
        args.out.with_suffix(".json"),
        json.dumps({"rows": rows, "correlations": correlations}, indent=1) + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
