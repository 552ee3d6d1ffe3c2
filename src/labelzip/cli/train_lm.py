"""``labelzip train-lm``: train LM students from labels, CE only and online KD; compare."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from labelzip.archive import ArchiveReader
from labelzip.cli import run_command
from labelzip.cli._common import (
    add_device_option,
    add_json_option,
    format_bytes,
    print_json,
    resolve_device,
    validated,
)
from labelzip.cli.relabel_lm import (
    add_corpus_options,
    add_teacher_options,
    corpus_config,
    peak_rss_mib,
    quiet_transformers,
)
from labelzip.errors import ConfigError, InputError
from labelzip.lm.corpus import LMCorpus, build_corpus
from labelzip.lm.evaluate import LMScores, evaluate_students
from labelzip.lm.provenance import (
    check_lm_archive,
    corpus_config_of,
    lm_archive_record,
)
from labelzip.lm.student import (
    StudentConfig,
    build_student_for_teacher,
    check_student_vocab,
    check_vocab_match,
)
from labelzip.lm.teacher import load_teacher, max_context, require_transformers
from labelzip.lm.train import (
    MODES,
    ArchiveLabels,
    LabelSource,
    TeacherLabels,
    TrainLMConfig,
    TrainLMResult,
    distributed_info,
    init_distributed,
    train_student,
)
from labelzip.outputs import atomic_folder, check_output_folder

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  labelzip train-lm --labels tail.lz --steps 200 --threads 2
  labelzip train-lm --labels tail.lz --modes labels,ce --ce-weight 0.1 --json
  labelzip train-lm --modes online,ce --tokens 20000 --steps 100
  torchrun --nproc-per-node 2 -m labelzip train-lm --labels tail.lz --batch-size 8

Modes (trained identically: same student init, windows, order, optimiser):
  labels  forward KL to the distributions decoded from --labels (+ CE with --ce-weight)
  online  the same with the teacher running live (the uncompressed reference)
  ce      next-token cross-entropy only
With --labels the corpus is rebuilt from the recipe the archive records (corpus
flags override it) and checked against the archive's tokenizer and corpus
fingerprints. Evaluation: perplexity on the held-out documents and mean
KL(teacher || student) per position.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip train-lm",
        description="Train small LLaMA students from LM labels and compare references.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--labels", help="label archive from `labelzip relabel-lm`")
    p.add_argument(
        "--modes",
        help="comma-separated subset of labels,online,ce (default: all that apply)",
    )
    add_teacher_options(p)
    add_corpus_options(p)
    s = p.add_argument_group("student")
    sd = StudentConfig()
    s.add_argument("--student", help="start from this local HF causal-LM folder")
    s.add_argument("--layers", type=int, default=sd.num_layers)
    s.add_argument("--hidden", type=int, default=sd.hidden_size)
    s.add_argument("--heads", type=int, default=sd.num_heads)
    s.add_argument("--kv-heads", type=int, help="key/value heads (default: --heads)")
    s.add_argument("--student-seed", type=int, default=sd.seed)
    t = p.add_argument_group("training")
    td = TrainLMConfig()
    t.add_argument("--steps", type=int, default=td.steps)
    t.add_argument("--batch-size", type=int, default=td.batch_size, help="windows")
    t.add_argument("--lr", type=float, default=td.learning_rate)
    t.add_argument("--weight-decay", type=float, default=td.weight_decay)
    t.add_argument("--warmup-steps", type=int, default=td.warmup_steps)
    t.add_argument("--temperature", type=float, default=td.temperature)
    t.add_argument("--ce-weight", type=float, default=td.ce_weight)
    t.add_argument("--seed", type=int, default=td.seed, help="window-order seed")
    t.add_argument("--log-every", type=int, default=td.log_every)
    t.add_argument("--eval-batch-size", type=int, default=4, help="windows")
    t.add_argument("--save-dir", help="save each trained student under DIR/<mode>")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    add_device_option(p, "train on")
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("train-lm", lambda: _run(args))


def _modes(args: argparse.Namespace) -> list[str]:
    if args.modes is None:
        return list(MODES) if args.labels else ["online", "ce"]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes or len(set(modes)) != len(modes):
        raise ConfigError(
            f"--modes must list distinct modes of {', '.join(MODES)}, got {args.modes!r}"
        )
    if "labels" in modes and not args.labels:
        raise ConfigError("mode 'labels' needs --labels ARCHIVE")
    return modes


def _configs(args: argparse.Namespace) -> TrainLMConfig:
    return validated(
        TrainLMConfig,
        "training",
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        temperature=args.temperature,
        ce_weight=args.ce_weight,
        seed=args.seed,
        log_every=args.log_every,
    )


def _run(args: argparse.Namespace) -> int:
    modes = _modes(args)
    config = _configs(args)
    if args.save_dir:
        check_output_folder(args.save_dir)
    if args.labels and not Path(args.labels).is_file():
        raise InputError(f"label archive {args.labels!r} does not exist")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    device = init_distributed(resolve_device(args.device))
    rank, _ = distributed_info()
    quiet_transformers()
    teacher, tokenizer, teacher_id = load_teacher(
        args.teacher, device=device, dtype=args.teacher_dtype
    )
    reader = ArchiveReader(args.labels) if args.labels else None
    corpus = _corpus(args, reader, teacher, tokenizer)
    vocab = int(teacher.config.vocab_size)
    if reader is not None:
        check_lm_archive(
            reader, tokenizer=tokenizer, windows=corpus.train, vocab_size=vocab
        )
    student_config = _student_config(args, teacher, corpus)
    results: dict[str, TrainLMResult] = {}
    students: dict[str, Any] = {}
    for mode in modes:
        student = _student(args, student_config, teacher, tokenizer)
        labels = _labels(mode, reader, teacher)
        t0 = time.perf_counter()
        results[mode] = train_student(
            student, corpus.train, labels, config, mode=mode, device=device
        )
        results[mode].seconds["total"] = time.perf_counter() - t0
        students[mode] = student
        if not args.quiet and rank == 0:
            _progress_line(mode, results[mode])
    if rank != 0:
        return 0
    scores = evaluate_students(
        students,
        corpus.validation,
        teacher=teacher,
        batch_size=args.eval_batch_size,
        device=device,
    )
    if args.save_dir:
        _save(Path(args.save_dir), students, tokenizer)
    _report(args, teacher_id, corpus, reader, results, scores, student_config)
    return 0


def _corpus(
    args: argparse.Namespace, reader: ArchiveReader | None, teacher: Any, tokenizer: Any
) -> LMCorpus:
    base = None
    if reader is not None:
        record = lm_archive_record(reader)
        if record.corpus is not None or args.corpus is None:
            base = corpus_config_of(record)
    cfg = corpus_config(args, base)
    return build_corpus(cfg, tokenizer, max_context=max_context(teacher))


def _student_config(
    args: argparse.Namespace, teacher: Any, corpus: LMCorpus
) -> StudentConfig:
    context = max(corpus.train.shape[1], min(2048, max_context(teacher)))
    return validated(
        StudentConfig,
        "student",
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        max_position_embeddings=context,
        seed=args.student_seed,
    )


def _student(
    args: argparse.Namespace, config: StudentConfig, teacher: Any, tokenizer: Any
) -> Any:
    """A fresh student: built from ``config``, or loaded from ``--student``."""
    if args.student is None:
        return build_student_for_teacher(config, teacher, tokenizer)
    transformers = require_transformers()
    folder = Path(args.student)
    if not (folder / "config.json").is_file():
        raise InputError(f"student folder {str(folder)!r} has no config.json")
    try:
        student_tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, local_files_only=True
        )
        student = transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load the student from {str(folder)!r} ({exc}); it needs "
            "config.json, weights and the tokenizer files"
        ) from exc
    check_vocab_match(student_tokenizer, tokenizer)
    check_student_vocab(student, teacher)
    return student


def _labels(
    mode: str, reader: ArchiveReader | None, teacher: Any
) -> LabelSource | None:
    if mode == "labels":
        assert reader is not None
        return ArchiveLabels(reader)
    if mode == "online":
        return TeacherLabels(teacher)
    return None


def _progress_line(mode: str, result: TrainLMResult) -> None:
    import sys

    last = result.history[-1] if result.history else {}
    print(
        f"trained {mode}: {result.steps} steps, final loss {last.get('loss', 0):.4f}, "
        f"{result.seconds['total']:.1f} s",
        file=sys.stderr,
    )


def _save(folder: Path, students: dict[str, Any], tokenizer: Any) -> None:
    for mode, student in students.items():
        with atomic_folder(folder / mode) as tmp:
            student.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


def _report(
    args: argparse.Namespace,
    teacher_id: str,
    corpus: LMCorpus,
    reader: ArchiveReader | None,
    results: dict[str, TrainLMResult],
    scores: dict[str, LMScores],
    student_config: StudentConfig,
) -> None:
    summary: dict[str, Any] = {
        "teacher": teacher_id,
        "train_windows": list(corpus.train.shape),
        "validation_windows": list(corpus.validation.shape),
        "student": student_config.model_dump(),
        "config": _configs(args).model_dump(),
        "peak_rss_mib": peak_rss_mib(),
        "modes": {
            mode: {
                **scores[mode].to_dict(),
                "final_loss": r.history[-1]["loss"] if r.history else None,
                "seconds": r.seconds,
                "tokens_seen": r.tokens_seen,
                "history": r.history,
            }
            for mode, r in results.items()
        },
    }
    if reader is not None:
        account = reader.account()
        summary["labels"] = {
            "path": str(reader.path),
            "codec": reader.codec_name,
            "ratio": account.ratio,
            "total_bytes": account.total_bytes,
            "bytes_per_token": account.total_bytes / account.num_labels,
        }
    if "labels" in scores and "online" in scores:
        gap = scores["labels"].perplexity / scores["online"].perplexity - 1
        summary["perplexity_gap_to_online"] = gap
    if args.json:
        print_json(json.loads(json.dumps(summary)))
        return
    if reader is not None:
        lab = summary["labels"]
        print(
            f"labels: {lab['path']} ({lab['codec']}, {lab['ratio']:.1f}x, "
            f"{format_bytes(lab['total_bytes'])})"
        )
    print(
        f"train {corpus.train.shape[0]} x {corpus.train.shape[1]} tokens, "
        f"validation {corpus.validation.shape[0]} x {corpus.validation.shape[1]}"
    )
    print(f"{'mode':<8} {'val ppl':>10} {'KL to teacher':>14} {'top-1 agree':>12}")
    for mode, s in scores.items():
        kl = f"{s.kl_to_teacher:.4f}" if s.kl_to_teacher is not None else "-"
        agree = f"{s.top1_agreement:.3f}" if s.top1_agreement is not None else "-"
        print(f"{mode:<8} {s.perplexity:>10.2f} {kl:>14} {agree:>12}")
    if "perplexity_gap_to_online" in summary:
        print(
            f"labels vs online perplexity: {summary['perplexity_gap_to_online']:+.2%}"
        )
