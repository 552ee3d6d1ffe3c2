"""``labelzip bench``: benchmarks that train students (``lm``: LM distillation)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from labelzip.cli import run_command
from labelzip.cli._common import add_json_option, print_json, resolve_device
from labelzip.cli.relabel_lm import quiet_transformers
from labelzip.errors import ConfigError

__all__ = ["build_parser", "main"]

EPILOG = """examples:
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


def build_parser() -> argparse.ArgumentParser:
    from labelzip.bench.lm import LMBenchConfig
    from labelzip.lm.train import TrainLMConfig

    p = argparse.ArgumentParser(
        prog="labelzip bench",
        description="Run a labelzip benchmark that trains students.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", choices=["lm"], help="lm: LM distillation")
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
    p.add_argument("--out-dir", default="benchmarks/results", help="report folder")
    p.add_argument("--work-dir", help="archive folder (default: <out-dir>/lm_archives)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("bench", lambda: _run(args))


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
