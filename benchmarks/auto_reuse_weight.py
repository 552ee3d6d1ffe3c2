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

Usage (one torch thread):
    python benchmarks/auto_reuse_weight.py --settings random:10 sre2l:10 \\
        --ratios 40 100 --weights 1 0.5 0.25 0.1 0 --out results/auto_reuse_weight
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
def reuse_views(views: float | None) -> Any:
    """Charge the reuse mismatch at ``views`` / m inside the block (None: as is)."""
    saved = score_module.REUSE_VIEWS
    if views is not None:
        score_module.REUSE_VIEWS = views
    try:
        yield
    finally:
        score_module.REUSE_VIEWS = saved


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
    keeps: tuple[float, ...] = KEEPS,
) -> list[Any]:
    """The auto choice's candidate results of one set at each ratio."""
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

    auto = AutoConfig(keep_fractions=keeps, confirm_steps=0)
    out = []
    for ratio in ratios:
        started = time.perf_counter()
        request = RelabelOutput(
            path=Path("unused.lz"), codec="auto", ratio=ratio, auto=auto
        )
        _, _, choice = choose_relabel_codec(
            request, label, layout, num_classes, metadata, config
        )
        out.append((ratio, choice, time.perf_counter() - started))
    return out


def row(r: CandidateResult, weight: float | None) -> dict[str, Any]:
    return {
        "codec": r.candidate.name,
        "keep": r.candidate.keep_fraction,
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
    parser.add_argument("--data-dir", type=Path, default=None, help="IDX folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report: dict[str, Any] = {"command": " ".join(sys.argv), "commit": commit}
    lines = [
        "# The reuse weight against auto's pick (relabel, Fashion-MNIST IPC sets)",
        "",
        f"Command: `python {' '.join(sys.argv)}` (labelzip at commit {commit})  ",
        f"Machine: {platform.machine()}, 2 shared CPUs, torch {torch.__version__}, "
        "one thread.",
        "",
        "Each set is measured once per target (view budgets 1 ... 1/32, no finalist "
        "refits); the pick is redone from those measurements for each weight.",
        "",
    ]
    settings = []
    for setting in args.settings:
        framework, ipc = setting.split(":")
        for ratio, choice, seconds in measure(
            framework,
            int(ipc),
            args.epochs,
            args.ratios,
            args.data_dir,
            tuple(args.keeps),
        ):
            picks = {}
            for name in args.weights:
                weight, views = weight_of(name)
                cfg = choice.config.model_copy(update={"reuse_weight": weight})
                with reuse_views(views):
                    win = pick_candidate(list(choice.results), cfg)
                picks[name] = f"{win.name} keep {win.keep_fraction:g}"
            settings.append(
                {
                    "setting": setting,
                    "ratio": ratio,
                    "seconds": seconds,
                    "picks": picks,
                    "rows": [row(r, None) for r in choice.results],
                }
            )
            lines += [f"## {setting} at {ratio:g}x ({seconds:.0f} s)", ""]
            lines += [
                "| reuse weight | pick |",
                "|---|---|",
                *[f"| {w} | {p} |" for w, p in picks.items()],
                "",
                "| candidate | keep | held-out KL | source KL | score (default) | stored top-1 "
                "| stored top-2 | skipped |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in choice.results:
                d = row(r, None)
                kl = "-" if d["kl"] is None else f"{d['kl']:.4f}"
                src = "-" if d["source_kl"] is None else f"{d['source_kl']:.4f}"
                own = "-" if d["stored_top1"] is None else f"{d['stored_top1']:.3f}"
                two = "-" if d["stored_top2"] is None else f"{d['stored_top2']:.3f}"
                score = "-" if d["score"] is None else f"{d['score']:.4f}"
                lines.append(
                    f"| {d['codec']} | {d['keep']:.4g} | {kl} | {src} | {score} | {own} | "
                    f"{two} | {d['skipped'] or ''} |"
                )
            lines.append("")
            print("\n".join(lines[-len(choice.results) - 12 :]), flush=True)
    report["settings"] = settings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out.with_suffix(".md"), "\n".join(lines))
    write_text(args.out.with_suffix(".json"), json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
