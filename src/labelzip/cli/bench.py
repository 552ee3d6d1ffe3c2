"""``labelzip bench``: benchmarks that train students.

``lm``: LM distillation (teacher labels once, one student per codec and ratio).
``vision``: dataset distillation on Fashion-MNIST (per framework and IPC, one
relabel pass, one student per codec and ratio).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from labelzip.cli import run_command
from labelzip.cli._common import (
    add_json_option,
    one_line,
    parse_key_values,
    print_json,
    resolve_device,
)
from labelzip.cli.relabel_lm import quiet_transformers
from labelzip.errors import ConfigError

__all__ = ["build_parser", "main"]

LM_EPILOG = """examples:
  labelzip bench lm                                  # 200k tokens, 3 codecs x 3 ratios
  labelzip bench lm --tokens 20000 --steps 60 --ratios 100 500 --threads 2
  labelzip bench lm --codecs topk-tail topk rskd vqae --device cuda

Labels every training window once (one teacher pass, plus a fitting pass for
learned codecs) into one archive per (codec, ratio), trains a student from each
archive's decoded labels plus a CE-only and an online-KD student (same init, data
order and optimiser), evaluates all on held-out documents and writes
<out-dir>/lm_bench.{json,md,png}. The default (200k tokens, 200 steps of 8 x 256
tokens, online KD) takes hours on a CPU: the teacher runs ~100 tokens/s on 2 cores.
"""


VISION_EPILOG = """examples:
  labelzip bench vision                  # the full spec: hours on a CPU (see below)
  labelzip bench vision --frameworks random sre2l --ipcs 10 --ratios 40 \\
      --codecs vqae topk-ms --threads 1
  labelzip bench vision --ipcs 10 50 --epochs 10:300 50:100 --device cuda
  labelzip bench vision --settings random:10 sre2l:10 random:50 --ratios 40 100

For each framework and IPC: distil the set from Fashion-MNIST (the cached ConvNet
teacher), relabel EPOCHS views per image once into a dense fp16 archive and one
archive per (codec, ratio) at equal all-in bytes (codecs that cannot meet a ratio
with every view keep fewer views per image, LPLD-style; unreachable targets become
skipped rows with the reason), train one student per archive, and report accuracy,
retention (vs the dense-label student), the ratio vs dense fp16 and vs the
framework's shipped labels (LPLD: 40x-pruned), the teacher and a full-data
baseline. Writes <out-dir>/vision_bench.{json,md,png}.

The default (random, sre2l, rded, lpld x IPC 10, 50 x 5 codecs x 10/40/100/300x,
300 views per image) trains ~150 students: about 5-6 hours on one CPU thread
(an IPC 10 student ~30 s, an IPC 50 student ~2.5 min). See docs/bench-vision.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip bench",
        description="Run a labelzip benchmark that trains students.",
        epilog="suites: lm (LM distillation), vision (dataset distillation); "
        "labelzip bench SUITE --help for each",
    )
    sub = p.add_subparsers(dest="suite", required=True, metavar="SUITE")
    _lm_parser(sub)
    _vision_parser(sub)
    return p


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="benchmarks/results", help="report folder")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_json_option(p)


def _lm_parser(sub: Any) -> None:
    from labelzip.bench.lm import LMBenchConfig
    from labelzip.lm.train import TrainLMConfig

    p = sub.add_parser(
        "lm",
        help="LM distillation",
        description="LM distillation from compressed labels.",
        epilog=LM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = LMBenchConfig()
    t = TrainLMConfig()
    p.add_argument("--teacher", default=d.teacher, help="teacher name or HF folder")
    p.add_argument(
        "--corpus", nargs="+", default=None, help="'shakespeare', 'kjv' or files"
    )
    p.add_argument("--tokens", type=int, default=d.tokens, help="training tokens")
    p.add_argument("--seq-len", type=int, default=d.corpus.seq_len)
    p.add_argument(
        "--validation-windows",
        type=int,
        default=d.corpus.max_validation_windows,
        help="held-out windows evaluated",
    )
    p.add_argument("--codecs", nargs="+", default=list(d.codecs))
    p.add_argument("--ratios", nargs="+", type=float, default=list(d.ratios))
    p.add_argument("--steps", type=int, default=t.steps)
    p.add_argument("--batch-size", type=int, default=t.batch_size, help="windows")
    p.add_argument("--lr", type=float, default=t.learning_rate)
    p.add_argument("--ce-weight", type=float, default=t.ce_weight)
    p.add_argument("--layers", type=int, default=d.student.num_layers)
    p.add_argument("--hidden", type=int, default=d.student.hidden_size)
    p.add_argument("--heads", type=int, default=d.student.num_heads)
    p.add_argument("--no-online", action="store_true", help="skip online KD")
    p.add_argument(
        "--fit-windows", type=int, default=d.relabel.fit_windows, help="0 = all"
    )
    p.add_argument("--work-dir", help="archive folder (default: <out-dir>/lm_archives)")
    _common_flags(p)


def _vision_parser(sub: Any) -> None:
    from labelzip.bench.vision import VisionBenchConfig
    from labelzip.pipelines.quickstart import ROW_SPECS

    d = VisionBenchConfig()
    p = sub.add_parser(
        "vision",
        help="dataset distillation (Fashion-MNIST)",
        description="Dataset distillation from compressed labels: accuracy and "
        "retention per framework, IPC, codec and all-in ratio.",
        epilog=VISION_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--frameworks",
        nargs="+",
        default=list(d.frameworks),
        help="random, sre2l, cda, lpld, rded",
    )
    p.add_argument("--ipcs", nargs="+", type=int, default=list(d.ipcs))
    p.add_argument(
        "--settings",
        nargs="+",
        metavar="FRAMEWORK:IPC",
        help="run these pairs instead of --frameworks x --ipcs (random:10 random:50)",
    )
    p.add_argument(
        "--codecs",
        nargs="+",
        default=list(d.codecs),
        help=f"from {', '.join(ROW_SPECS)} (dense always runs)",
    )
    p.add_argument("--ratios", nargs="+", type=float, default=list(d.ratios))
    p.add_argument(
        "--epochs",
        nargs="+",
        default=[str(d.epochs)],
        help="views per image: N for every IPC, or IPC:N pairs (10:300 50:100)",
    )
    p.add_argument("--student-epochs", type=int, help="default: the views per image")
    p.add_argument("--student-arch", default=d.student.arch, help="convnet, resnet")
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument(
        "--baseline-epochs",
        type=int,
        default=d.baseline_epochs,
        help="full-data baseline epochs (0: skip)",
    )
    p.add_argument(
        "--distill-option",
        action="append",
        metavar="FRAMEWORK:KEY=VALUE",
        help="a distillation option, e.g. sre2l:steps=500 (repeatable)",
    )
    p.add_argument(
        "--image-format",
        default=d.image_format,
        choices=("jpeg", "raw", "png-estimate"),
        help="how the storage columns count distilled images",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder")
    p.add_argument(
        "--work-dir", help="archive folder (default: <out-dir>/vision_archives)"
    )
    _common_flags(p)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = _run_vision if args.suite == "vision" else _run
    return run_command("bench", lambda: run(args))


def _config(args: argparse.Namespace) -> object:
    from labelzip.bench.lm import LMBenchConfig
    from labelzip.lm.corpus import CorpusConfig
    from labelzip.lm.relabel import RelabelLMConfig
    from labelzip.lm.student import StudentConfig
    from labelzip.lm.train import TrainLMConfig

    try:
        corpus = CorpusConfig(
            source=(args.corpus[0] if len(args.corpus) == 1 else args.corpus)
            if args.corpus
            else "shakespeare",
            seq_len=args.seq_len,
            max_validation_windows=args.validation_windows,
        )
        return LMBenchConfig(
            teacher=args.teacher,
            tokens=args.tokens,
            corpus=corpus,
            codecs=tuple(args.codecs),
            ratios=tuple(args.ratios),
            student=StudentConfig(
                num_layers=args.layers,
                hidden_size=args.hidden,
                num_heads=args.heads,
                max_position_embeddings=max(args.seq_len, 2),
            ),
            train=TrainLMConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                ce_weight=args.ce_weight,
            ),
            relabel=RelabelLMConfig(fit_windows=args.fit_windows or None),
            online=not args.no_online,
        )
    except Exception as exc:  # pydantic ValidationError -> one line
        raise ConfigError(f"invalid benchmark options: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    from labelzip.bench.lm import (
        LMBenchConfig,
        markdown_table,
        run_lm_bench,
        write_report,
    )

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    device = resolve_device(args.device)
    config = _config(args)
    assert isinstance(config, LMBenchConfig)
    out = Path(args.out_dir)
    work = Path(args.work_dir) if args.work_dir else out / "lm_archives"
    quiet_transformers()

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    report = run_lm_bench(config, work, device=device, log=log)
    paths = write_report(report, out)
    if args.json:
        print_json({**report, "files": [str(p) for p in paths]})
        return 0
    print(markdown_table(report), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _epochs(values: Sequence[str]) -> tuple[int, dict[int, int]]:
    """``["300"]`` -> (300, {}); ``["10:300", "50:100"]`` -> (300, {10: 300, 50: 100})."""
    default = 300
    per_ipc: dict[int, int] = {}
    for value in values:
        ipc, sep, count = value.partition(":")
        try:
            if sep:
                per_ipc[int(ipc)] = int(count)
            else:
                default = int(ipc)
        except ValueError:
            raise ConfigError(
                f"--epochs expects N or IPC:N (e.g. 300 or 10:300), got {value!r}"
            ) from None
    return default, per_ipc


def _settings(values: Sequence[str] | None) -> tuple[tuple[str, int], ...]:
    out = []
    for value in values or ():
        framework, sep, ipc = value.partition(":")
        if not sep or not framework or not ipc.isdigit():
            raise ConfigError(
                f"--settings expects FRAMEWORK:IPC (e.g. sre2l:10), got {value!r}"
            )
        out.append((framework, int(ipc)))
    return tuple(out)


def _distill_options(values: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for value in values or ():
        framework, sep, pair = value.partition(":")
        if not sep or not framework:
            raise ConfigError(
                f"--distill-option expects FRAMEWORK:KEY=VALUE, got {value!r}"
            )
        out.setdefault(framework, {}).update(
            parse_key_values([pair], "--distill-option")
        )
    return out


def _vision_config(args: argparse.Namespace) -> Any:
    from labelzip.bench.vision import VisionBenchConfig

    default, per_ipc = _epochs(args.epochs)
    try:
        student = VisionBenchConfig().student.model_copy(
            update={
                "epochs": args.student_epochs,
                "arch": args.student_arch,
                "seed": args.seed,
            }
        )
        return VisionBenchConfig.model_validate(
            {
                "frameworks": tuple(args.frameworks),
                "ipcs": tuple(args.ipcs),
                "settings": _settings(args.settings),
                "codecs": tuple(args.codecs),
                "ratios": tuple(args.ratios),
                "epochs": default,
                "epochs_per_ipc": per_ipc,
                "student": student.model_dump(),
                "teacher_epochs": args.teacher_epochs,
                "baseline_epochs": args.baseline_epochs,
                "seed": args.seed,
                "image_format": args.image_format,
                "distill_options": _distill_options(args.distill_option),
            }
        )
    except ValueError as exc:  # pydantic ValidationError -> one line
        raise ConfigError(f"invalid benchmark options: {one_line(exc)}") from exc


def _run_vision(args: argparse.Namespace) -> int:
    from labelzip.bench.vision import markdown_report, run_vision_bench, write_report
    from labelzip.data import load_fashion_mnist

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = _vision_config(args)
    device = resolve_device(args.device)
    out = Path(args.out_dir)
    work = Path(args.work_dir) if args.work_dir else out / "vision_archives"
    train_set = load_fashion_mnist("train", root=args.data_dir)
    test_set = load_fashion_mnist("test", root=args.data_dir)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    report = run_vision_bench(
        config,
        train_set=train_set,
        test_set=test_set,
        work_dir=work,
        device=device,
        log=log,
    )
    paths = write_report(report, out)
    if args.json:
        print_json({**report, "files": [str(p) for p in paths]})
        return 0
    print(markdown_report(report), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
