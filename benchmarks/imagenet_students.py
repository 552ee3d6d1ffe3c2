"""1000-class students: which compressed labels does a student of EfficientNet-Lite0 prefer?

At 10 classes ``--codec auto`` is checked against students (``docs/auto.md``,
"Students"). At 1000 classes the question is how much a student minds a pruned
view's reused label: pruning (LPLD) stores few views with near-exact labels, ``vqae``
keeps every view at a few bits each, and auto's reuse charge decides between them.
No ImageNet images are on this machine, so this benchmark measures the student the
labels make against the teacher itself, on images the student never saw:

1. two SRe2L sets recovered from the teacher (``labelzip distill --dataset imagenet
   --method sre2l``): a train set and, with another seed, a test set;
2. test views: ``--test-views`` crops of every test image (scale 0.25-1, flip, no
   mix), labelled by the teacher (fp32 logits);
3. the train set relabelled once (SRe2L's recipe, ``--epochs`` views per image) into
   a dense fp16 archive and one archive per (row, ratio, archive seed), the rows as
   ``labelzip bench vision`` writes them (``auto``, ``vqae``, ``topk-ms``, ``lpld``
   ...; prune seed = archive seed, which also seeds auto's sample);
4. ``--student-seeds`` students per archive (the quickstart ConvNet at the view
   size, KD at T = 4, input statistics of the train images);
5. per student: top-1 agreement with the teacher on the test views, KL(teacher ||
   student) at T = 1 there, and top-1 on the test images' recovery classes.

Archives and students are cached in ``--work`` (a rerun skips what is done, so a
rerun with fewer ``--rows`` reports those from the cache). ``--auto-codecs`` limits
auto's candidates: with the view-context codecs (the default) one choice at C = 1000
took about 25 minutes here, most of it fitting ``vqae-ctx``. Writes OUT.md and
OUT.json; the committed result's command is in its header. The sets:

    labelzip distill --dataset imagenet --method sre2l --ipc 10 --classes 0-9 \\
        --image-size 64 --steps 200 --seed 0 -o train.safetensors
    labelzip distill --dataset imagenet --method sre2l --ipc 5 --classes 0-9 \\
        --image-size 64 --steps 200 --seed 1 -o test.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from labelzip.archive import ArchiveReader, load_archive
from labelzip.augment import ViewConfig
from labelzip.bench.vision import archive_seed_summary
from labelzip.distill import DistilledSet
from labelzip.ops.metrics import kl_divergence
from labelzip.outputs import write_text
from labelzip.pipelines.quickstart import ROW_SPECS, with_input_stats
from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel
from labelzip.pipelines.replay import ReplayDataset, ViewCache
from labelzip.pipelines.train_student import StudentConfig, train_student
from labelzip.selection.auto import AUTO_KEY, AutoConfig
from labelzip.teachers import load_efficientnet_lite0

TEST_SEED = 1_000_003  # views of the test images: unrelated to the train views

# Rows besides ``labelzip bench vision``'s (ROW_SPECS): top-k MS with k set by rate
# control (the bench row fixes k = 2, about 128x at C = 1000 with every view), and
# vqae on half of each image's views (LPLD's reuse for the rest, more bits each):
# the trade auto's reuse charge prices.
EXTRA_ROWS: dict[str, dict[str, Any]] = {
    "topk-ms-fit": {"codec": "topk", "options": {"decoder": "ms"}, "auto_prune": True},
    "vqae-half": {"codec": "vqae", "keep_fraction": 0.5},
}
ROWS = {**ROW_SPECS, **EXTRA_ROWS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--train-set", required=True, help="recovered train set")
    parser.add_argument("--test-set", required=True, help="recovered test set")
    parser.add_argument("--work", required=True, help="archive and cache folder")
    parser.add_argument("--out", required=True, help="report path without suffix")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=sorted(ROWS),
        default=["auto", "vqae", "topk-ms-fit", "lpld"],
    )
    parser.add_argument("--ratios", nargs="+", type=float, default=[40.0, 100.0])
    parser.add_argument(
        "--auto-codecs",
        nargs="+",
        default=None,
        help="auto's candidate codecs (default: all that apply, the view-context "
        "codecs included, which take most of the choice's time at C = 1000)",
    )
    parser.add_argument("--epochs", type=int, default=300, help="views per image")
    parser.add_argument("--archive-seeds", type=int, default=2)
    parser.add_argument("--student-seeds", type=int, default=2)
    parser.add_argument("--test-views", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--machine-note", default="")
    return parser


def test_views(
    test_set: DistilledSet, teacher: torch.nn.Module, work: Path, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` unmixed crops of every test image, the teacher's fp32 logits of
    each and the image's recovery class (written once as a dense archive)."""
    path = work / "test_views.lz"
    h, w = test_set.images.shape[-2:]
    config = RelabelConfig(
        epochs=count,
        seed=TEST_SEED,
        view=ViewConfig(output_size=(int(h), int(w)), scale=(0.25, 1.0), mix="none"),
    )
    if not path.exists():
        relabel(
            test_set,
            teacher,
            [RelabelOutput(path=path, codec="dense", options={"dtype": "fp32"})],
            config,
            teacher_id=test_set.teacher_id,
        )
    replay = ReplayDataset(test_set, path)
    index = torch.arange(replay.num_images)
    views, logits, classes = [], [], []
    for epoch in range(count):
        batch = replay.batch(epoch, index)
        views.append(batch.views)
        logits.append(batch.logits)
        classes.append(test_set.labels[batch.index])
    replay.close()
    return torch.cat(views), torch.cat(logits), torch.cat(classes)


def outputs(args: argparse.Namespace, work: Path) -> list[RelabelOutput]:
    """Dense fp16 first (the reference), then every (row, ratio, archive seed);
    auto measures on its own sample per archive seed (``AutoConfig.seed``)."""
    out = [RelabelOutput(path=work / "dense.lz", name="dense", **ROW_SPECS["dense"])]
    for row in args.rows:
        for ratio in args.ratios:
            for seed in range(args.archive_seeds):
                spec = dict(ROWS[row])
                if row == "auto" and args.auto_codecs:
                    spec["auto"] = AutoConfig(seed=seed, codecs=tuple(args.auto_codecs))
                out.append(
                    RelabelOutput(
                        path=work / f"{row}_{ratio:g}x_s{seed}.lz",
                        name=f"{row}|{ratio:g}|{seed}",
                        ratio=ratio,
                        prune_seed=seed,
                        **spec,
                    )
                )
    return out


def archive_facts(path: Path, dense: torch.Tensor) -> dict[str, Any]:
    """All-in ratio (file size vs dense fp16), share of views stored, auto's
    choice and every label's KL at T = 4 against the dense archive (a pruned
    view counted with the label that stands in for it)."""
    with ArchiveReader(path) as reader:
        header = reader.header
        record = header.user.get(AUTO_KEY)
        codec = reader.codec_name
    decoded = load_archive(path).reshape(dense.shape)
    return {
        "bytes": path.stat().st_size,
        "ratio": dense.numel() * 2 / path.stat().st_size,
        "archive_codec": codec,
        "views_kept": header.num_stored / header.num_labels,
        "kl": float(kl_divergence(dense, decoded, 4.0).mean()),
        "chosen": record.get("chosen") if isinstance(record, dict) else None,
    }


def agreement(
    model: torch.nn.Module,
    views: torch.Tensor,
    teacher_logits: torch.Tensor,
    classes: torch.Tensor,
) -> dict[str, float]:
    """Student vs teacher on the test views: top-1 agreement, KL at T = 1, and
    top-1 on the images' recovery classes."""
    model.eval()
    with torch.no_grad():
        student = torch.cat([model(v) for v in views.split(500)])
    return {
        "agreement": float(
            (student.argmax(1) == teacher_logits.argmax(1)).float().mean()
        ),
        "kl1": float(kl_divergence(teacher_logits, student, 1.0).mean()),
        "class_top1": float((student.argmax(1) == classes).float().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher = load_efficientnet_lite0(torch.device("cpu")).eval()
    train_set = DistilledSet.load(args.train_set)
    test_set = DistilledSet.load(args.test_set)
    views, teacher_logits, classes = test_views(
        test_set, teacher, work, args.test_views
    )
    teacher_class_top1 = float((teacher_logits.argmax(1) == classes).float().mean())
    print(
        f"{len(views)} test views; teacher top-1 on their classes {teacher_class_top1:.3f}"
    )

    planned = outputs(args, work)
    relabel_seconds = None
    todo = [o for o in planned if not o.path.exists()]
    if todo:
        t0 = time.perf_counter()
        result = relabel(
            train_set,
            teacher,
            todo,
            RelabelConfig(epochs=args.epochs, seed=0),
            teacher_id=train_set.teacher_id,
        )
        relabel_seconds = time.perf_counter() - t0
        for archive in result.archives:
            print(f"wrote {archive.name}: {archive.account.ratio:.1f}x", flush=True)

    dense = load_archive(work / "dense.lz")
    dense = dense.reshape(-1, dense.shape[-1])
    student_config = with_input_stats(StudentConfig(), train_set)
    cache_path = work / "students.json"
    done: dict[str, Any] = (
        json.loads(cache_path.read_text()) if cache_path.exists() else {}
    )
    view_cache = ViewCache()
    rows: list[dict[str, Any]] = []
    for out in planned:
        facts = archive_facts(out.path, dense)
        students = []
        for seed in range(args.student_seeds):
            key = f"{out.path.name}|{seed}"
            if key not in done:
                replay = ReplayDataset(train_set, out.path, view_cache=view_cache)
                t0 = time.perf_counter()
                trained = train_student(
                    replay, student_config.model_copy(update={"seed": seed})
                )
                replay.close()
                done[key] = {
                    **agreement(trained.model, views, teacher_logits, classes),
                    "seconds": time.perf_counter() - t0,
                }
                write_text(cache_path, json.dumps(done, indent=1, sort_keys=True))
            students.append(done[key])
        codec, target, seed = (out.label.split("|") + ["", "0"])[:3]
        row = {
            "framework": "sre2l",
            "ipc": int(len(train_set.labels) // len(set(train_set.labels.tolist()))),
            "codec": codec,
            "target_ratio": float(target) if target else None,
            "archive_seed": int(seed),
            **facts,
            "students": students,
            "accuracy": statistics.fmean(s["agreement"] for s in students),
            "kl1": statistics.fmean(s["kl1"] for s in students),
            "class_top1": statistics.fmean(s["class_top1"] for s in students),
        }
        rows.append(row)
        print(
            f"{out.label:22s} {row['ratio']:6.1f}x KL4 {row['kl']:.4f} "
            f"agree {100 * row['accuracy']:.2f}% KL1 {row['kl1']:.3f} "
            f"({statistics.fmean(s['seconds'] for s in students):.0f} s/student)",
            flush=True,
        )
    dense_acc = rows[0]["accuracy"]
    for row in rows:
        row["retention"] = row["accuracy"] / dense_acc if dense_acc else math.nan
    report = {
        "command": "python benchmarks/imagenet_students.py " + shlex.join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "note": args.machine_note,
        },
        "train_set": train_set.config,
        "num_train_images": len(train_set.labels),
        "num_test_views": len(views),
        "teacher_class_top1": teacher_class_top1,
        "relabel_seconds": relabel_seconds,
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "summary": archive_seed_summary(rows),
        "paired": paired(rows, "auto"),
    }
    out_path = Path(args.out)
    write_text(out_path.with_suffix(".json"), json.dumps(report, indent=1))
    write_text(out_path.with_suffix(".md"), markdown(report))
    print("wrote", out_path.with_suffix(".md"))
    return 0


def _choice(row: dict[str, Any]) -> str:
    chosen = row.get("chosen")
    if not chosen:
        return ""
    options = " ".join(f"{k}={v}" for k, v in sorted(chosen["options"].items()))
    return f"{chosen['codec']} {options}".strip()


def paired(rows: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """``base`` minus every other row at each target, paired by archive seed:
    the mean difference of agreement (points) and its standard error."""
    by_key = {(r["codec"], r["target_ratio"], r["archive_seed"]): r for r in rows}
    out = []
    targets = sorted({r["target_ratio"] for r in rows if r["target_ratio"]})
    others = list(dict.fromkeys(r["codec"] for r in rows if r["codec"] != "dense"))
    for target in targets:
        for other in others:
            if other == base:
                continue
            diffs = [
                100 * (r["accuracy"] - by_key[(other, target, s)]["accuracy"])
                for (codec, t, s), r in by_key.items()
                if codec == base and t == target and (other, target, s) in by_key
            ]
            if len(diffs) < 2:
                continue
            out.append(
                {
                    "target_ratio": target,
                    "other": other,
                    "pairs": len(diffs),
                    "mean": statistics.fmean(diffs),
                    "se": statistics.stdev(diffs) / math.sqrt(len(diffs)),
                }
            )
    return out


def markdown(report: dict[str, Any]) -> str:
    """Every archive, the mean per (row, target) across archive seeds, and auto
    paired with each other row."""
    rows = report["rows"]
    machine = report["machine"]
    lines = [
        "# 1000-class students from compressed labels (EfficientNet-Lite0, SRe2L)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, "
        f"{machine['threads']} torch threads, torch {machine['torch']}. "
        f"{machine['note']} Run time {report['seconds'] / 60:.0f} min.",
        "",
        f"Train set: {report['num_train_images']} recovered images; test: "
        f"{report['num_test_views']} unmixed crops of held-out recovered images, "
        "labelled by the teacher (its top-1 on their recovery classes "
        f"{100 * report['teacher_class_top1']:.1f}%). **agree**: the student's top-1 "
        "equals the teacher's (mean of the students); **KL1**: KL(teacher || "
        "student) at T = 1; **class**: the student's top-1 on the recovery class; "
        "**label KL4**: every label of the archive against the dense archive at T = 4 "
        "(pruned views with their stand-in's label).",
        "",
        "| row | target | archive seed | all-in | views stored | auto's choice | "
        "label KL4 | agree (students) | KL1 | class |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        students = ", ".join(f"{100 * s['agreement']:.2f}" for s in r["students"])
        target = f"{r['target_ratio']:g}x" if r["target_ratio"] else "-"
        lines.append(
            f"| {r['codec']} | {target} | {r['archive_seed']} | {r['ratio']:.1f}x | "
            f"{r['views_kept']:.3f} | {_choice(r)} | {r['kl']:.4f} | "
            f"**{100 * r['accuracy']:.2f}** ({students}) | {r['kl1']:.3f} | "
            f"{100 * r['class_top1']:.2f} |"
        )
    lines += [
        "",
        "## Across archive seeds",
        "",
        "| row | target | archives | agree: mean (SE) | KL1: mean | all-in | label KL4 |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in report["summary"]:
        kl1 = statistics.fmean(
            r["kl1"]
            for r in rows
            if (r["codec"], r["target_ratio"]) == (g["codec"], g["target_ratio"])
        )
        lines.append(
            f"| {g['codec']} | {g['target_ratio']:g}x | {len(g['archive_seeds'])} | "
            f"{100 * g['accuracy']:.2f} ({100 * g['accuracy_se']:.2f}) | {kl1:.3f} | "
            f"{g['ratio']:.1f}x | {g['kl']:.4f} |"
        )
    pairs = report.get("paired") or []
    if pairs:
        lines += [
            "",
            "## auto minus each row, paired by archive seed (points of agreement)",
            "",
            "| target | other row | pairs | mean (SE) |",
            "|---|---|---|---|",
        ]
        for p in pairs:
            lines.append(
                f"| {p['target_ratio']:g}x | {p['other']} | {p['pairs']} | "
                f"{p['mean']:+.2f} ({p['se']:.2f}) |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
