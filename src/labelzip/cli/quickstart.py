"""``labelzip quickstart``: the whole experiment on Fashion-MNIST in minutes on a CPU."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from labelzip.cli import run_command
from labelzip.cli._common import (
    add_device_option,
    print_json,
    resolve_device,
    stderr_progress,
)
from labelzip.cli.relabel import one_line
from labelzip.errors import ConfigError, InputError
from labelzip.io import check_output_path
from labelzip.outputs import scratch_folder
from labelzip.pipelines.quickstart import (
    DEFAULT_CODECS,
    ROW_SPECS,
    QuickstartConfig,
    QuickstartResult,
    run_quickstart,
    write_plot,
)
from labelzip.pipelines.train_student import StudentConfig

__all__ = ["build_parser", "main"]

EPILOG = f"""examples:
  labelzip quickstart
  labelzip quickstart --framework sre2l --json
  labelzip quickstart --ipc 50 --epochs 100 --ratio 100 --plot rate.png

Steps: train (once, cached) the ConvNet teacher on Fashion-MNIST; distill IPC
images per class; relabel EPOCHS views per image; store the labels as dense fp16
(the reference) and, at the same all-in --ratio, with {", ".join(DEFAULT_CODECS[1:])};
train one student per archive; print accuracy and retention (accuracy / dense).
Codecs that cannot meet the ratio with a label for every view keep labels for
fewer views per image (LPLD pruning), so all rows use equal bytes.
"""

_STAGES = ("teacher", "distill", "relabel", "students")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip quickstart",
        description="Teacher -> distilled set -> compressed labels -> students, "
        "on Fashion-MNIST.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--framework", default="random", help="random (default), sre2l, ...")
    p.add_argument("--ipc", type=int, default=10, help="images per class (10)")
    p.add_argument("--epochs", type=int, default=300, help="views per image (300)")
    p.add_argument("--ratio", type=float, default=40.0, help="all-in ratio (40)")
    p.add_argument(
        "--codecs",
        default=",".join(DEFAULT_CODECS),
        help=f"rows, comma-separated, from {','.join(ROW_SPECS)} (dense always runs)",
    )
    p.add_argument("--teacher", default="convnet", choices=("convnet", "resnet"))
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--student-epochs", type=int, help="default: --epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the table is the same bytes whatever "
        "the machine's load; float reductions differ between thread counts)",
    )
    p.add_argument("--workdir", help="keep the archives here (default a temp folder)")
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder")
    p.add_argument(
        "--plot", default="labelzip-quickstart.png", help="PNG to write ('' for none)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_option(p, "run")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the rows as a JSON list (framework, ipc, codec, ratio, "
        "accuracy, retention, ...) instead of the table",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("quickstart", lambda: _run(args))


def _config(args: argparse.Namespace) -> QuickstartConfig:
    codecs = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    unknown = [c for c in codecs if c not in ROW_SPECS]
    if unknown:
        raise ConfigError(f"unknown --codecs {unknown}; choose from {list(ROW_SPECS)}")
    try:
        defaults = QuickstartConfig().student.model_dump()
        student = StudentConfig(
            **{**defaults, "epochs": args.student_epochs, "seed": args.seed}
        )
        return QuickstartConfig(
            framework=args.framework,
            ipc=args.ipc,
            epochs=args.epochs,
            ratio=args.ratio,
            codecs=codecs,
            teacher_arch=args.teacher,
            teacher_epochs=args.teacher_epochs,
            seed=args.seed,
            student=student,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid quickstart options: {one_line(exc)}") from exc


@contextmanager
def _stage_bars(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """One rich bar per stage on stderr; silent off a terminal."""
    with stderr_progress(
        enabled, description="{task.description:<10}", transient=False
    ) as bar:
        if bar is None:
            yield lambda stage, done, total: None
            return
        tasks = {s: bar.add_task(s, total=None, start=False) for s in _STAGES}

        def update(stage: str, done: int, total: int) -> None:
            task = tasks[stage]
            bar.start_task(task)
            bar.update(task, completed=done, total=total)

        yield update


def _run(args: argparse.Namespace) -> int:
    from labelzip.data import load_fashion_mnist

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    config = _config(args)
    device = resolve_device(args.device)
    plot_path = check_output_path(args.plot, [args.data_dir]) if args.plot else None
    start = time.perf_counter()
    train_set = load_fashion_mnist("train", root=args.data_dir)
    test_set = load_fashion_mnist("test", root=args.data_dir)
    with _workdir(args.workdir) as workdir, _stage_bars(not args.quiet) as update:
        result = run_quickstart(
            config,
            train_set=train_set,
            test_set=test_set,
            workdir=workdir,
            device=device,
            progress=update,
        )
    plot = (
        write_plot(result.rows, plot_path, result.teacher_accuracy)
        if plot_path is not None
        else None
    )
    wall = time.perf_counter() - start
    if args.json:
        print_json([row.to_dict() for row in result.rows])
    else:
        _table(result, config, wall, plot)
    return 0


@contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path is None:
        with scratch_folder(tempfile.gettempdir(), "labelzip-quickstart") as tmp:
            yield tmp
        return
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--workdir {path!r} is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


def _table(
    result: QuickstartResult, config: QuickstartConfig, wall: float, plot: Path | None
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Fashion-MNIST, {config.framework} IPC {config.ipc}, "
        f"{config.epochs} views/image, {config.ratio:g}x all-in"
    )
    headers = ("codec", "ratio", "bits/lbl", "views", "KL@T", "acc", "retain", "decode")
    for name in headers:
        if name == "codec":  # never truncate a row's name (ctx-transform, ...)
            table.add_column(name, justify="left", no_wrap=True, min_width=14)
        else:
            table.add_column(name, justify="right")
    for row in result.rows:
        table.add_row(
            row.codec,
            f"{row.ratio:.1f}x",
            f"{row.bits_per_label:.2f}",
            f"{100 * row.views_kept:.1f}%",
            f"{row.kl:.3f}",
            f"{100 * row.accuracy:.2f}%",
            f"{100 * row.retention:.1f}%",
            f"{100 * row.decode_share:.2f}%",
        )
    console = Console()
    console.print(table)
    cached = "cached" if result.teacher_from_cache else "trained"
    console.print(
        f"teacher ({config.teacher_arch}, {cached}): {100 * result.teacher_accuracy:.2f}% "
        "test accuracy. views: share of views whose label is stored (LPLD "
        "pruning where a codec cannot meet the ratio otherwise); KL@T: "
        f"KL(dense || decoded) at the student's T = {config.student.temperature:g}; "
        "retain: accuracy / dense accuracy; decode: label decoding's share of "
        "training time. Augmentations are replayed from the seed: 0 B per view."
    )
    stages = []
    for name, value in result.seconds.items():
        stages.append(f"{name} {value:.0f} s")
        if name == "relabel" and result.relabel is not None:
            parts = result.relabel.seconds
            keys = ("render", "teacher", "fit", "write")
            stages[-1] += " (" + ", ".join(f"{k} {parts[k]:.0f} s" for k in keys) + ")"
    where = f"; plot: {plot}" if plot is not None else ""
    threads = torch.get_num_threads()
    console.print(
        f"wall time {wall:.0f} s on {threads} thread(s): {'; '.join(stages)}{where}"
    )
