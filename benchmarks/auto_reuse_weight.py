"""Which candidate ``relabel --codec auto`` picks as the reuse weight varies.

For each framework's distilled set (Fashion-MNIST, the cached ConvNet teacher,
the same sets and views as ``labelzip bench vision``), the auto choice is
measured once at each target with every view budget down to 1/32 of the views
(so no budget depends on the weight) and no finalist refits (their choice would
depend on the weight), keeping every candidate's per-sample KL and source KL.
The pick is then redone for each reuse weight from those measurements
(:func:`labelzip.selection.auto.pick_candidate`): no refitting, so the table
shows how the weight alone moves the choice.

A weight ``cN`` charges N/m instead of the default 2/m at 10 classes (the pick is redone with
:data:`labelzip.selection.score.REUSE_VIEWS` set to N for that pick only).
``--keeps`` sets the view budgets measured and ``--data-dir`` another IDX folder
(``benchmarks/make_mnist5k.py``).

To see how a pick holds across auto's samples, ``--auto-budgets`` measures auto's own
view budgets, ``--seeds`` repeats the choice with other sample seeds, ``--confirm-steps``
adds the finalists' refits, and ``--top2-thresholds`` redoes the pick at other stored
top-2 lines (:data:`labelzip.selection.score.MIN_STORED_TOP2`, set for that pick
only). ``--summarize A.json B.json`` tabulates finished reports: each rule's picks
across the seeds, and the candidates near a stored top-2 line of 0.70-0.78.

Usage (one torch thread):
    python benchmarks/auto_reuse_weight.py --settings random:10 sre2l:10 \\
        --ratios 40 100 --weights 1 0.5 0.25 0.1 0 --out results/auto_reuse_weight
    python benchmarks/auto_reuse_weight.py --settings sre2l:10 --auto-budgets \
        --seeds 0 1 2 3 --confirm-steps 1000 --top2-thresholds 0.74 --out OUT
    python benchmarks/auto_reuse_weight.py --summarize OUT.json --out SUMMARY
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from labelzip.archive import Layout
from labelzip.data import load_fashion_mnist
from labelzip.outputs import write_text
from labelzip.pipelines.imageset import check_image_tensor
from labelzip.pipelines.quickstart import (
    QuickstartConfig,
    build_distilled_set,
    prepare_teacher,
    quickstart_view_config,
)
from labelzip.pipelines.relabel import (
    LAYOUT_DIMS,
    RelabelConfig,
    RelabelOutput,
    ViewLabeller,
    relabel_metadata,
)
from labelzip.pipelines.relabel_auto import choose_relabel_codec
from labelzip.selection import score as score_module
from labelzip.selection.auto import AutoConfig, CandidateResult, pick_candidate

KEEPS = (1.0, 0.5, 0.25, 0.125, 1 / 16, 1 / 32)


@contextlib.contextmanager
def score_constant(name: str, value: float | None) -> Any:
    """Set the pick's constant ``labelzip.selection.score.<name>`` to ``value``
    inside the block (None: as is): ``REUSE_VIEWS`` charges the reuse mismatch at
    value / m, ``MIN_STORED_TOP2`` is the stored top-2 line."""
    saved = getattr(score_module, name)
    if value is not None:
        setattr(score_module, name, value)
    try:
        yield
    finally:
        setattr(score_module, name, saved)


def weight_of(name: str) -> tuple[float | None, float | None]:
    """A ``--weights`` entry as (fixed weight, reuse views): m, cN or a number."""
    if name == "m":
        return None, None
    if name.startswith("c"):
        return None, float(name[1:])
    return float(name), None


def measure(
    framework: str,
    ipc: int,
    epochs: int,
    ratios: list[float],
    data_dir: Path | None = None,
    keeps: tuple[float, ...] | None = KEEPS,
    seeds: tuple[int, ...] = (0,),
    confirm_steps: int = 0,
) -> list[Any]:
    """The auto choice's candidate results of one set at each ratio and seed
    (``keeps`` None: auto's own view budgets)."""
    train_set = load_fashion_mnist("train", root=data_dir)
    test_set = load_fashion_mnist("test", root=data_dir)
    qconfig = QuickstartConfig(
        framework=framework, ipc=ipc, epochs=epochs, codecs=("dense",), seed=0
    )
    device = torch.device("cpu")
    teacher, teacher_id, _, _ = prepare_teacher(
        qconfig, train_set, test_set, device, None
    )
    image_set = build_distilled_set(
        qconfig, train_set, teacher, teacher_id, device, lambda *_: None
    )
    images = check_image_tensor(image_set.images, "distilled images")
    view = quickstart_view_config(*images.shape[-2:])
    config = RelabelConfig(epochs=epochs, seed=0, view=view)
    layout = Layout(LAYOUT_DIMS, (epochs, len(images)))
    metadata = relabel_metadata(image_set, images, config, view, teacher_id)
    num_classes = len(image_set.class_names)
    labeller = ViewLabeller(images, teacher, view, config, num_classes, device)
    memo: list[tuple[torch.Tensor, torch.Tensor]] = []

    def label(flat: torch.Tensor) -> torch.Tensor:  # one teacher pass per set
        if not (memo and torch.equal(memo[0][0], flat)):
            memo[:] = [(flat, labeller.rows(flat))]
        return memo[0][1]

    out = []
    for seed in seeds:
        auto = AutoConfig(confirm_steps=confirm_steps, seed=seed)
        if keeps is not None:
            auto = auto.model_copy(update={"keep_fractions": keeps})
        for ratio in ratios:
            started = time.perf_counter()
            request = RelabelOutput(
                path=Path("unused.lz"), codec="auto", ratio=ratio, auto=auto
            )
            _, _, choice = choose_relabel_codec(
                request, label, layout, num_classes, metadata, config
            )
            out.append((ratio, seed, choice, time.perf_counter() - started))
    return out


def row(r: CandidateResult, weight: float | None) -> dict[str, Any]:
    return {
        "codec": r.candidate.name,
        "keep": r.candidate.keep_fraction,
        "stored_views": r.stored_views,
        "steps": r.steps,
        "kl": r.kl,
        "source_kl": None
        if r.group_source_kl is None
        else float(r.group_source_kl.mean()),
        "score": r.score(weight),
        "top1": r.top1,
        "stored_top1": r.stored_top1,
        "stored_top2": r.stored_top2,
        "skipped": r.skipped,
    }


def pick_name(results: list[CandidateResult], config: AutoConfig) -> str:
    win = pick_candidate(results, config)
    return f"{win.name} keep {win.keep_fraction:g}"


def command_option(report: dict[str, Any], flag: str, default: str) -> str:
    """The value ``flag`` had in the command that made ``report`` (else ``default``)."""
    words = str(report["command"]).split()
    return words[words.index(flag) + 1] if flag in words else default


def dataset_of(report: dict[str, Any]) -> str:
    """The IDX folder's name a report was measured on (Fashion-MNIST by default)."""
    return Path(command_option(report, "--data-dir", "fashion-mnist")).name


def views_of(report: dict[str, Any]) -> int:
    """Views per image of a report's sets (its ``--epochs``)."""
    return int(command_option(report, "--epochs", "300"))


def views_kept(codec: str, keep: float, views: int) -> str:
    """A candidate as its codec's key and the views it keeps per image:
    ``ctx-transform(min_label_bits=0.0)`` at keep 0.0441942 of 300 is
    ``ctx-transform 13``."""
    return f"{codec.split('(')[0]} {round(views * keep)}"


def short_pick(pick: str, views: int) -> str:
    """A :func:`pick_name` string as :func:`views_kept` writes it."""
    name, keep = pick.rsplit(" keep ", 1)
    return views_kept(name, float(keep), views)


def summary(reports: list[dict[str, Any]]) -> list[str]:
    """Each rule's picks across the seeds, per set and target, as a table."""
    cells: dict[tuple[str, str, float], list[tuple[dict[str, Any], int]]] = {}
    for report in reports:
        for entry in report["settings"]:
            key = (dataset_of(report), entry["setting"], entry["ratio"])
            cells.setdefault(key, []).append((entry, views_of(report)))
    rules = list(next(iter(cells.values()))[0][0]["picks"])
    lines = [
        "| data | set | target | seeds | " + " | ".join(rules) + " |",
        "|---|---|---|---|" + "---|" * len(rules),
    ]
    for (data, setting, ratio), entries in cells.items():
        entries.sort(key=lambda pair: pair[0]["seed"])
        seeds = ",".join(str(e["seed"]) for e, _ in entries)
        picks = [
            " / ".join(short_pick(e["picks"][rule], views) for e, views in entries)
            for rule in rules
        ]
        lines.append(
            f"| {data} | {setting} | {ratio:g}x | {seeds} | " + " | ".join(picks) + " |"
        )
    return lines


def near_line(reports: list[dict[str, Any]], low: float, high: float) -> list[str]:
    """Per choice, the candidates whose held-out stored top-2 lies in [low, high)
    and whose default score is at most 2% above the default pick's: those a
    top-2 line in that range decides on (score relative to the pick)."""
    lines = [
        f"| data | set | target | seed | default pick | stored top-2 in [{low:g}, "
        f"{high:g}), score within 2% of the pick or lower (score / pick's) |",
        "|---|---|---|---|---|---|",
    ]
    for report in reports:
        views = views_of(report)
        for entry in report["settings"]:
            rows = [
                r for r in entry["rows"] if r["score"] is not None and not r["skipped"]
            ]
            name, keep = entry["picks"]["m"].rsplit(" keep ", 1)
            best = min(
                r["score"]
                for r in rows
                if r["codec"] == name and abs(r["keep"] - float(keep)) < 1e-6
            )
            near = sorted(
                (
                    r
                    for r in rows
                    if low <= r["stored_top2"] < high and r["score"] <= 1.02 * best
                ),
                key=lambda r: -r["stored_top2"],
            )
            cells = ", ".join(
                f"{views_kept(r['codec'], r['keep'], views)}"
                f"{' [refit]' if r['steps'] else ''} {r['stored_top2']:.4f} "
                f"({r['score'] / best:.3f})"
                for r in near
            )
            lines.append(
                f"| {dataset_of(report)} | {entry['setting']} | {entry['ratio']:g}x | "
                f"{entry['seed']} | {short_pick(entry['picks']['m'], views)} | {cells} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["random:10", "sre2l:10"])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--ratios", nargs="+", type=float, default=[40.0, 100.0])
    parser.add_argument(
        "--weights",
        nargs="+",
        default=["1", "0.1", "0", "m"],
        help="reuse weights; m: the default, min(1, REUSE_VIEWS / views stored); "
        "cN: min(1, N / views stored)",
    )
    parser.add_argument(
        "--keeps",
        nargs="+",
        type=lambda text: float(Fraction(text)),  # "1/16"
        default=list(KEEPS),
        help="view budgets measured, e.g. 1 1/2 1/16",
    )
    parser.add_argument(
        "--auto-budgets",
        action="store_true",
        help="measure auto's own view budgets instead of --keeps",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="auto sample seeds"
    )
    parser.add_argument(
        "--confirm-steps",
        type=int,
        default=0,
        help="finalists' refit steps (0: none, so no pick depends on the weight)",
    )
    parser.add_argument(
        "--top2-thresholds",
        nargs="*",
        type=float,
        default=[],
        help="also redo the default pick with these stored top-2 thresholds",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="IDX folder")
    parser.add_argument(
        "--summarize",
        nargs="+",
        type=Path,
        default=None,
        help="only print the picks table of these JSON reports (views of 300)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.summarize:
        reports = [json.loads(path.read_text()) for path in args.summarize]
        text = [
            "# auto's picks across sample seeds",
            "",
            f"Command: `python {' '.join(sys.argv)}`",
            "",
            "Picks per rule (codec and views kept per image; one per sample "
            "seed, `/`-separated). Reports:",
            "",
            *[f"- `{r['command']}` (commit {r['commit']})" for r in reports],
            "",
            *summary(reports),
            "",
            "Candidates near a stored top-2 line of 0.70-0.78:",
            "",
            *near_line(reports, 0.70, 0.78),
            "",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out.with_suffix(".md"), "\n".join(text))
        print("\n".join(text))
        return
    torch.set_num_threads(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report: dict[str, Any] = {"command": " ".join(sys.argv), "commit": commit}
    budgets = "auto's view budgets" if args.auto_budgets else "the view budgets given"
    refits = (
        f"finalists refit at {args.confirm_steps} steps"
        if args.confirm_steps
        else "no finalist refits"
    )
    lines = [
        "# The reuse weight against auto's pick (relabel, Fashion-MNIST IPC sets)",
        "",
        f"Command: `python {' '.join(sys.argv)}` (labelzip at commit {commit})  ",
        f"Machine: {platform.machine()}, 2 shared CPUs, torch {torch.__version__}, "
        "one thread.",
        "",
        f"Each set is measured once per target and seed ({budgets}, {refits}); the "
        "pick is redone from those measurements for each weight and stored top-2 "
        "threshold.",
        "",
    ]
    settings = []
    for setting in args.settings:
        framework, ipc = setting.split(":")
        for ratio, seed, choice, seconds in measure(
            framework,
            int(ipc),
            args.epochs,
            args.ratios,
            args.data_dir,
            None if args.auto_budgets else tuple(args.keeps),
            tuple(args.seeds),
            args.confirm_steps,
        ):
            results = list(choice.results)
            picks = {}
            for name in args.weights:
                weight, views = weight_of(name)
                cfg = choice.config.model_copy(update={"reuse_weight": weight})
                with score_constant("REUSE_VIEWS", views):
                    picks[name] = pick_name(results, cfg)
            for threshold in args.top2_thresholds:
                with score_constant("MIN_STORED_TOP2", threshold):
                    picks[f"top-2 >= {threshold:g}"] = pick_name(results, choice.config)
            settings.append(
                {
                    "setting": setting,
                    "ratio": ratio,
                    "seed": seed,
                    "seconds": seconds,
                    "picks": picks,
                    "rows": [row(r, None) for r in results],
                }
            )
            lines += [f"## {setting} at {ratio:g}x, seed {seed} ({seconds:.0f} s)", ""]
            lines += [
                "| rule | pick |",
                "|---|---|",
                *[f"| {w} | {p} |" for w, p in picks.items()],
                "",
                "| candidate | keep | held-out KL | source KL | score (default) | stored top-1 "
                "| stored top-2 | skipped |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in results:
                d = row(r, None)
                kl = "-" if d["kl"] is None else f"{d['kl']:.4f}"
                src = "-" if d["source_kl"] is None else f"{d['source_kl']:.4f}"
                own = "-" if d["stored_top1"] is None else f"{d['stored_top1']:.3f}"
                two = "-" if d["stored_top2"] is None else f"{d['stored_top2']:.4f}"
                score = "-" if d["score"] is None else f"{d['score']:.5f}"
                steps = f" [{d['steps']} steps]" if d["steps"] else ""
                lines.append(
                    f"| {d['codec']}{steps} | {d['keep']:.4g} | {kl} | {src} | {score} "
                    f"| {own} | {two} | {d['skipped'] or ''} |"
                )
            lines.append("")
            print("\n".join(lines[-len(results) - 12 :]), flush=True)
            report["settings"] = settings
            args.out.parent.mkdir(parents=True, exist_ok=True)
            done = ["## Picks across seeds", "", *summary([report]), ""]
            write_text(args.out.with_suffix(".md"), "\n".join(lines + done))
            write_text(args.out.with_suffix(".json"), json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
