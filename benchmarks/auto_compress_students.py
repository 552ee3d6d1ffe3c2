"""Students from ``labelzip compress --codec auto`` archives of relabelled views.

``labelzip relabel --codec auto`` has been checked against students
(``auto_codec_students_v3.md``); ``compress --codec auto`` chooses among fewer codecs
(no view recipe, so no view-context codecs) on another split (whole held-out
samples). This benchmark checks *its* choices with students, as a user would reach
them: for each (framework, IPC) it distils the set and relabels it into a dense fp16
archive exactly as ``labelzip bench vision`` does (same config, seeds and teacher, so
the dense students match that benchmark's), decodes the dense archive to a logits
file with ``labelzip decompress``, compresses that file with ``labelzip compress
--codec auto --ratio R --dims epoch,sample``, carrying the set's fingerprint, class
names and relabel recipe as metadata so that ``labelzip train`` can replay its
views, and trains the same students (seeds 0, 1, ...) from every archive.
``--named`` adds single codecs compressed the same way with ``--auto-prune`` (the
most views per sample at which that codec meets the target), e.g. ``--named
"topk --decoder ms --k 2"``: the baseline auto is held to, through the same path.

    python benchmarks/auto_compress_students.py --settings random:10 sre2l:10 \\
        --ratios 40 100 --student-seeds 2 --out benchmarks/results/auto_compress_students

``--data-dir`` takes another IDX folder (e.g. ``benchmarks/make_mnist5k.py``'s).
Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from labelzip.archive import ArchiveReader
from labelzip.bench.vision import (
    VisionBenchConfig,
    archive_seed_summary,
    setting_quickstart_config,
    setting_relabel_config,
)
from labelzip.data import load_fashion_mnist
from labelzip.outputs import write_text
from labelzip.pipelines.quickstart import (
    build_distilled_set,
    prepare_teacher,
    with_input_stats,
)
from labelzip.pipelines.relabel import (
    RELABEL_KEY,
    RelabelOutput,
    relabel,
)
from labelzip.pipelines.replay import ReplayDataset, ViewCache
from labelzip.pipelines.train_student import train_student


def labelzip(*args: str, threads: int = 1) -> dict[str, Any]:
    """Run one labelzip command with ``--json`` in a child process; its JSON."""
    cmd = [sys.executable, "-m", "labelzip", *args, "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return dict(json.loads(done.stdout))


def compress_views(
    dense: Path,
    ratio: float,
    out: Path,
    threads: int,
    codec: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """decompress ``dense`` to a logits file, then ``compress --codec CODEC...`` it
    (``codec``: ``["auto"]`` or a codec and its options, given ``--auto-prune``)
    with ``--seed seed`` (the kept views and the fits)."""
    reader = ArchiveReader(dense)
    header = reader.header
    logits = out.with_suffix(".logits.safetensors")
    names = out.with_suffix(".classes.json")
    reader.close()
    labelzip("decompress", str(dense), "-o", str(logits), "--quiet", threads=threads)
    names.write_text(json.dumps(list(header.class_names or ())))
    report = labelzip(
        "compress",
        str(logits),
        "--codec",
        *codec,
        *([] if codec == ["auto"] else ["--auto-prune"]),
        "--ratio",
        f"{ratio:g}",
        "--dims",
        "epoch,sample",
        "--dataset-fingerprint",
        str(header.dataset_fingerprint),
        "--class-names",
        str(names),
        "--teacher",
        str(header.teacher),
        "--meta",
        f"{RELABEL_KEY}={json.dumps(header.user[RELABEL_KEY])}",
        "--seed",
        str(seed),
        "--quiet",
        "-o",
        str(out),
        threads=threads,
    )
    logits.unlink()
    names.unlink()
    return report


def students(
    image_set: Any,
    archive: Path,
    config: Any,
    seeds: list[int],
    test_set: Any,
    cache: ViewCache,
) -> list[float]:
    """Test accuracy of one student per seed trained from ``archive``."""
    accuracies = []
    for seed in seeds:
        replay = ReplayDataset(image_set, archive, view_cache=cache)
        result = train_student(
            replay, config.model_copy(update={"seed": seed}), test_set=test_set
        )
        replay.close()
        accuracies.append(float(result.accuracy or 0.0))
    return accuracies


def run_setting(
    bench: VisionBenchConfig,
    framework: str,
    ipc: int,
    args: argparse.Namespace,
    data: tuple[Any, Any],
    teacher: tuple[torch.nn.Module, str],
) -> dict[str, Any]:
    train_set, test_set = data
    model, teacher_id = teacher
    qconfig = setting_quickstart_config(bench, framework, ipc)
    device = torch.device("cpu")
    image_set = build_distilled_set(
        qconfig, train_set, model, teacher_id, device, lambda *_: None
    )
    relabel_config = setting_relabel_config(bench, qconfig, image_set)
    work = args.work / f"{framework}_ipc{ipc}"
    work.mkdir(parents=True, exist_ok=True)
    dense = work / "dense.lz"
    relabel(
        image_set,
        model,
        [RelabelOutput(path=dense, name="dense", codec="dense")],
        relabel_config,
        teacher_id=teacher_id,
        device=device,
    )
    student_config = with_input_stats(bench.student, train_set).model_copy(
        update={"epochs": bench.epochs}
    )
    seeds = [bench.student.seed + i for i in range(bench.student_seeds)]
    cache = ViewCache()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    dense_acc = students(image_set, dense, student_config, seeds, test_set, cache)
    rows.append({"run": "dense", "accuracies": dense_acc, "ratio": 1.0})
    print(f"[{framework} {ipc}] dense {dense_acc} ({time.perf_counter() - t0:.0f} s)")
    runs = [["auto"]] + [named.split() for named in args.named]
    archive_seeds = range(args.archive_seeds)
    for ratio, codec, seed in (
        (r, c, s) for r in args.ratios for c in runs for s in archive_seeds
    ):
        label = " ".join(codec)
        tag = f"_s{seed}" if args.archive_seeds > 1 else ""
        out = work / f"compress_{'_'.join(codec).replace('-', '')}_{ratio:g}x{tag}.lz"
        t1 = time.perf_counter()
        report = compress_views(dense, ratio, out, args.threads, codec, seed)
        choose = time.perf_counter() - t1
        auto = report.get("auto")
        if auto is not None:
            chosen = auto["chosen"]
            keep = chosen["keep_fraction"]
        else:
            with ArchiveReader(out) as reader:
                info = reader.info()
            chosen = {"codec": report["codec"], "options": {}}
            keep = (info["prune"] or {}).get("keep_fraction", 1.0)
        options = ",".join(f"{k}={v}" for k, v in sorted(chosen["options"].items()))
        accuracies = students(image_set, out, student_config, seeds, test_set, cache)
        rows.append(
            {
                "run": f"compress {label} {ratio:g}x",
                "archive_seed": seed,
                "target": ratio,
                "ratio": report["ratio"],
                "chosen": chosen["codec"] + (f"({options})" if options else ""),
                "views_kept": round(keep * bench.epochs),
                "compress_seconds": choose,
                "accuracies": accuracies,
                "auto": auto,
            }
        )
        print(
            f"[{framework} {ipc}] {ratio:g}x seed {seed}: {rows[-1]['chosen']} "
            f"{chosen} -> {accuracies}"
        )
    dense_mean = sum(dense_acc) / len(dense_acc)
    for row in rows:
        mean = sum(row["accuracies"]) / len(row["accuracies"])
        row["accuracy"] = mean
        row["retention"] = mean / dense_mean
    summary = archive_seed_summary(
        [
            {
                "framework": framework,
                "ipc": ipc,
                "codec": row["run"],
                "target_ratio": row.get("target"),
                "accuracy": row["accuracy"],
                "retention": row["retention"],
                "ratio": row["ratio"],
                "views_kept": row.get("views_kept", bench.epochs) / bench.epochs,
                "archive_seed": row.get("archive_seed", 0),
            }
            for row in rows
        ]
    )
    return {"framework": framework, "ipc": ipc, "rows": rows, "summary": summary}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Students from `compress --codec auto` archives of relabelled views",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; total {report['seconds']:.0f} s. "
        f"Teacher test accuracy {100 * report['teacher_accuracy']:.2f}%.",
        "",
    ]
    for setting in report["settings"]:
        lines += [
            f"## {setting['framework']}, IPC {setting['ipc']}",
            "",
            "| run | all-in ratio | choice | views kept | accuracy (per seed) | retention |",
            "|---|---|---|---|---|---|",
        ]
        for row in setting["rows"]:
            seeds = " / ".join(f"{100 * a:.1f}" for a in row["accuracies"])
            ratio = f"{row['ratio']:.1f}x" if row.get("ratio") else "-"
            kept = row.get("views_kept", report["epochs"])
            run = row["run"]
            if setting.get("summary") and "target" in row:
                run = f"{run} (seed {row['archive_seed']})"
            lines.append(
                f"| {run} | {ratio} | {row.get('chosen') or 'dense'} | "
                f"{kept} / {report['epochs']} | "
                f"{100 * row['accuracy']:.2f}% ({seeds}) | "
                f"{100 * row['retention']:.2f}% |"
            )
        lines.append("")
        if setting.get("summary"):
            lines += [
                "Across archive seeds (`compress --seed` 0, 1, ...: other kept views "
                "and fits; SE: standard error of the mean across the archives):",
                "",
                "| run | archives | accuracy (each archive) | SE | retention |",
                "|---|---|---|---|---|",
            ]
            for g in setting["summary"]:
                each = " / ".join(f"{100 * a:.1f}" for a in g["archive_accuracies"])
                lines.append(
                    f"| {g['codec']} | {len(g['archive_accuracies'])} | "
                    f"{100 * g['accuracy']:.2f}% ({each}) | "
                    f"{100 * g['accuracy_se']:.2f} | {100 * g['retention']:.2f}% |"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["random:10", "sre2l:10"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[40.0, 100.0])
    parser.add_argument("--student-seeds", type=int, default=2)
    parser.add_argument(
        "--archive-seeds",
        type=int,
        default=1,
        help="archives per run and ratio, compressed with --seed 0, 1, ...",
    )
    parser.add_argument("--epochs", type=int, default=300, help="views per image")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--named",
        nargs="*",
        default=[],
        help='single codecs with their compress options, e.g. "topk --decoder ms '
        '--k 2", compressed with --auto-prune beside auto',
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/auto_compress_students")
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bench = VisionBenchConfig(epochs=args.epochs, student_seeds=args.student_seeds)
    train_set = load_fashion_mnist("train", root=args.data_dir)
    test_set = load_fashion_mnist("test", root=args.data_dir)
    model, teacher_id, teacher_acc, _ = prepare_teacher(
        setting_quickstart_config(bench, "random", 10),
        train_set,
        test_set,
        torch.device("cpu"),
        None,
    )
    report: dict[str, Any] = {
        "command": "python benchmarks/auto_compress_students.py "
        + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), shared 2-core host",
        "teacher_accuracy": teacher_acc,
        "epochs": args.epochs,
        "settings": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for item in args.settings:
        framework, _, ipc = item.partition(":")
        report["settings"].append(
            run_setting(
                bench,
                framework,
                int(ipc),
                args,
                (train_set, test_set),
                (model, teacher_id),
            )
        )
        report["seconds"] = time.perf_counter() - t0
        # written after every setting: a later failure keeps what was measured
        write_text(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
        write_text(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
