"""``labelzip relabel-lm``: an LM teacher's next-token distributions -> a label archive."""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from labelzip.cli import run_command
from labelzip.cli._common import (
    add_auto_options,
    add_codec_option_flags,
    add_device_option,
    add_json_option,
    add_rate_options,
    auto_config,
    codec_options,
    format_bytes,
    print_json,
    rate_goal,
    resolve_device,
    validated,
    with_run_defaults,
)
from labelzip.codecs.registry import codec_choices
from labelzip.distributed import refuse_several_ranks
from labelzip.errors import ConfigError
from labelzip.io import check_output_path
from labelzip.lm.corpus import CorpusConfig, build_corpus
from labelzip.lm.provenance import corpus_record
from labelzip.lm.relabel import (
    LMOutput,
    RelabelLMConfig,
    RelabelLMResult,
    relabel_lm,
)
from labelzip.lm.teacher import (
    SMOLLM2_NAME,
    load_teacher,
    max_context,
    require_transformers,
)
from labelzip.selection.auto import AUTO, resolve_codec_name

__all__ = [
    "add_corpus_options",
    "add_teacher_options",
    "build_parser",
    "corpus_config",
    "main",
    "peak_rss_mib",
    "quiet_transformers",
]

EPILOG = """examples:
  labelzip relabel-lm --tokens 50000 --codec topk --k 32 --decoder mr -o topk.lz
  labelzip relabel-lm --tokens 50000 --codec topk-tail --ratio 500 -o tail.lz
  labelzip relabel-lm --tokens 50000 --ratio 500 -o auto.lz   # --codec auto
  labelzip relabel-lm --corpus kjv --seq-len 512 --codec rskd --ratio 1000 -o rskd.lz
  labelzip relabel-lm --teacher path/to/hf-model --corpus my_texts/ --codec dense -o dense.lz

The teacher runs over the train windows of the corpus (split by document) and each
position's logits stream into the codec: label (sequence n, position t) is the
distribution after tokens 0..t of window n. Codecs that learn from the labels
(topk-tail, vqae, rskd with measured sizing) are fitted on a reservoir sample of
--fit-positions positions from --fit-windows windows labelled in a first pass.
--ratio counts every byte of the archive against dense fp16 (2 x V bytes/token).
With a target and no --codec, auto measures the LM candidates (topk, topk-tail,
rskd, vqae-sparse, vqae-rs) on held-out positions of that sample and picks the
best (docs/auto.md); without a target the codec is topk.
"""


def add_teacher_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        default=SMOLLM2_NAME,
        help=f"'{SMOLLM2_NAME}' (bundled GGUF, cached) or a local Hugging Face "
        "causal-LM folder (default: %(default)s)",
    )
    p.add_argument(
        "--teacher-dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="teacher weight dtype (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice)"
    )


def add_corpus_options(p: argparse.ArgumentParser) -> None:
    """Corpus flags; all default to None so a recorded recipe can fill them in."""
    g = p.add_argument_group("corpus")
    g.add_argument(
        "--corpus",
        nargs="+",
        metavar="SOURCE",
        help="'shakespeare' (default), 'kjv', or .txt/.jsonl files or folders",
    )
    g.add_argument("--seq-len", type=int, help="tokens per window T (default 256)")
    g.add_argument(
        "--validation-fraction",
        type=float,
        help="share of documents held out (default 0.1)",
    )
    g.add_argument(
        "--split-seed", type=int, help="seed of the split and window samples (0)"
    )
    g.add_argument(
        "--max-train-windows", type=int, help="seeded sample of train windows"
    )
    g.add_argument(
        "--tokens",
        type=int,
        help="train tokens to label: --max-train-windows = ceil(tokens / seq-len)",
    )
    g.add_argument(
        "--max-validation-windows",
        type=int,
        help="seeded sample of validation windows",
    )
    g.add_argument(
        "--separator",
        help="token after each document (default: the tokenizer's EOS token)",
    )


def corpus_config(
    args: argparse.Namespace, base: CorpusConfig | None = None
) -> CorpusConfig:
    """``base`` (or the defaults) with every corpus flag the user gave applied."""
    values: dict[str, Any] = (base or CorpusConfig()).model_dump()
    if args.corpus is not None:
        values["source"] = args.corpus[0] if len(args.corpus) == 1 else args.corpus
    for flag, key in (
        ("seq_len", "seq_len"),
        ("validation_fraction", "validation_fraction"),
        ("split_seed", "seed"),
        ("max_train_windows", "max_train_windows"),
        ("max_validation_windows", "max_validation_windows"),
        ("separator", "separator"),
    ):
        value = getattr(args, flag)
        if value is not None:
            values[key] = value
    if args.tokens is not None:
        if args.max_train_windows is not None:
            raise ConfigError("give --tokens or --max-train-windows, not both")
        if args.tokens < 1:
            raise ConfigError(f"--tokens must be >= 1, got {args.tokens}")
        values["max_train_windows"] = math.ceil(args.tokens / values["seq_len"])
    return validated(CorpusConfig, "corpus", **values)


def quiet_transformers() -> None:
    """No tqdm bars from transformers (weight loading): the command reports itself."""
    require_transformers().utils.logging.disable_progress_bar()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux: ru_maxrss is KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip relabel-lm",
        description="Label a text corpus with an LM teacher into a labelzip archive.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", required=True, help="archive to write")
    add_teacher_options(p)
    add_corpus_options(p)
    c = p.add_argument_group("codec")
    c.add_argument(
        "--codec",
        choices=[AUTO, *codec_choices()],
        help="codec (default: topk; auto with --ratio / --bits-per-label, which "
        "measures the candidates on held-out positions and picks the best)",
    )
    add_rate_options(c, unit="token")
    add_codec_option_flags(c)
    add_auto_options(p)
    r = p.add_argument_group("run")
    defaults = RelabelLMConfig()
    r.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="windows per teacher forward (default: %(default)s)",
    )
    r.add_argument(
        "--chunk-windows",
        type=int,
        default=defaults.chunk_windows,
        help="windows per archive chunk (default: %(default)s)",
    )
    r.add_argument(
        "--fit-positions",
        type=int,
        default=defaults.fit_positions,
        help="reservoir size for learned codecs (default: %(default)s)",
    )
    r.add_argument(
        "--fit-windows",
        type=int,
        default=defaults.fit_windows,
        help="windows the fitting pass labels; 0 = all (default: %(default)s)",
    )
    r.add_argument("--seed", type=int, default=0, help="seed of the fit sample")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    add_device_option(p, "run the teacher")
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("relabel-lm", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    refuse_several_ranks("relabel-lm")
    out = check_output_path(args.output, [args.teacher, *(args.corpus or ())])
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    device = resolve_device(args.device)
    config = validated(
        RelabelLMConfig,
        "relabel-lm",
        batch_size=args.batch_size,
        chunk_windows=args.chunk_windows,
        fit_positions=args.fit_positions,
        fit_windows=args.fit_windows or None,
        seed=args.seed,
    )
    options = codec_options(args)
    has_target = rate_goal(args) is not None
    codec = resolve_codec_name(
        args.codec, options, has_target=has_target, default="topk"
    )
    assert codec is not None
    auto = None
    if codec == AUTO:
        auto = auto_config(args, seed=args.seed, device=device)
    else:
        options = with_run_defaults(codec, options, seed=args.seed, device=device)
    output = validated(
        LMOutput,
        "codec",
        path=out,
        codec=codec,
        options=options,
        ratio=args.ratio,
        bits_per_label=args.bits_per_label,
        auto=auto,
    )
    cfg = corpus_config(args)
    quiet_transformers()
    t0 = time.perf_counter()
    model, tokenizer, teacher_id = load_teacher(
        args.teacher, device=device, dtype=args.teacher_dtype
    )
    t1 = time.perf_counter()
    corpus = build_corpus(cfg, tokenizer, max_context=max_context(model))
    t2 = time.perf_counter()
    result = relabel_lm(
        model,
        tokenizer,
        corpus.train,
        output,
        config,
        teacher_id=teacher_id,
        corpus=corpus_record(cfg, corpus),
        progress=None if args.quiet else _Progress(corpus.train.numel()),
    )
    seconds = {"load_teacher": t1 - t0, "corpus": t2 - t1, **result.seconds}
    _report(result, teacher_id, seconds, args.json)
    return 0


class _Progress:
    """One stderr line per phase, updated in place on a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done: dict[str, int] = {}
        self.tty = sys.stderr.isatty()

    def __call__(self, phase: str, positions: int) -> None:
        self.done[phase] = self.done.get(phase, 0) + positions
        if self.tty:
            what = "fitting sample" if phase == "fit" else "labelling"
            total = "" if phase == "fit" else f"/{self.total}"
            print(
                f"\r{what}: {self.done[phase]}{total} tokens", end="", file=sys.stderr
            )
            if phase == "encode" and self.done[phase] >= self.total:
                print(file=sys.stderr)


def _report(
    result: RelabelLMResult,
    teacher_id: str,
    seconds: dict[str, float],
    as_json: bool,
) -> None:
    account = result.account
    teacher_time = seconds.get("fit_teacher", 0.0) + seconds.get("encode_teacher", 0.0)
    summary = {
        "output": str(result.path),
        **account.to_dict(),
        "teacher": teacher_id,
        "codec_config": result.codec_config,
        "num_sequences": result.num_sequences,
        "seq_len": result.seq_len,
        "num_tokens": result.num_tokens,
        "two_pass": result.two_pass,
        "fit_windows": result.fit_windows,
        "fit_positions": result.fit_positions,
        "teacher_positions": result.teacher_positions,
        "reservoir_bytes": result.reservoir_bytes,
        "teacher_tokens_per_s": result.teacher_positions / max(teacher_time, 1e-9),
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
    }
    if result.auto is not None:
        summary["auto"] = result.auto.to_dict(report=True)
    if as_json:
        print_json(summary)
        return
    for line in result.auto.table() if result.auto is not None else ():
        print(line)
    passes = "two passes" if result.two_pass else "one pass"
    print(
        f"wrote {result.path}: {result.num_tokens} tokens "
        f"({result.num_sequences} x {result.seq_len}) x V={account.num_classes}, "
        f"codec {account.codec}, {passes}"
    )
    print(
        f"  {format_bytes(account.total_bytes)} all-in = payload "
        f"{format_bytes(account.payload_bytes)} + model "
        f"{format_bytes(account.model_bytes)} + header "
        f"{format_bytes(account.header_bytes)}; ratio {account.ratio:.1f}x vs dense "
        f"fp16 ({format_bytes(account.reference_bytes)}), "
        f"{account.bits_per_label / 8:.1f} bytes per token"
    )
    print(
        f"  teacher {result.teacher_positions} positions at "
        f"{summary['teacher_tokens_per_s']:.0f} tokens/s; total "
        f"{seconds['total']:.1f} s; peak RSS {summary['peak_rss_mib']:.0f} MiB"
    )
