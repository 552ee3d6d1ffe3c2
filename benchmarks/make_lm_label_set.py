"""Make a dev label set of real LM teacher logits (SmolLM2-135M over Shakespeare).

Runs the teacher over seeded samples of token windows from the train and the
held-out (by document) validation part of a corpus, streaming each batch's logits
(B*T, V) to disk in float16, so memory never holds more than one batch of logits.
Writes two safetensors files, each with:

    logits     (N, V) float16   next-token logits; row r predicts token_ids[r + 1]
                                within its window (the last row of a window has no
                                target inside the file)
    token_ids  (N,)   int64     the input tokens, windows of seq_len concatenated

plus metadata (teacher id and fingerprints, corpus fingerprint, window layout), and
describes them in a section of ``<out-dir>/README.md`` (other sections untouched).
Prints tokens/s and peak RSS as JSON.

Usage:
    python benchmarks/make_lm_label_set.py                # /work/devdata defaults
    python benchmarks/make_lm_label_set.py --train-tokens 512 --test-tokens 256 \\
        --out-dir /tmp/x --teacher path/to/hf-folder --corpus my.txt
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from labelzip.lm.corpus import CorpusConfig, build_corpus
from labelzip.lm.teacher import (
    load_teacher,
    max_context,
    teacher_fingerprint,
    teacher_logits,
    tokenizer_fingerprint,
)
from labelzip.logit_writer import SafetensorsStreamWriter

FP16_MAX = 65504.0
SECTION_BEGIN = "<!-- make_lm_label_set:{prefix}:begin -->"
SECTION_END = "<!-- make_lm_label_set:{prefix}:end -->"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="smollm2-135m", help="name or HF folder")
    p.add_argument(
        "--corpus", nargs="+", default=["shakespeare"], help="corpus name or files"
    )
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window (T)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (B)")
    p.add_argument(
        "--train-tokens", type=int, default=4096, help="tokens in the train set"
    )
    p.add_argument(
        "--test-tokens", type=int, default=1024, help="tokens in the test set"
    )
    p.add_argument(
        "--validation-fraction", type=float, default=0.1, help="documents held out"
    )
    p.add_argument("--seed", type=int, default=0, help="split and window-sample seed")
    p.add_argument(
        "--separator",
        default="<|endoftext|>",
        help="token between documents ('' = the tokenizer's EOS)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a busy CPU)",
    )
    p.add_argument("--out-dir", type=Path, default=Path("/work/devdata"))
    p.add_argument("--prefix", default="lm_smollm2_logits", help="file name prefix")
    p.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    return p


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _accumulate_stats(
    stats: dict[str, float], half: torch.Tensor, ids: torch.Tensor
) -> None:
    """Add one batch's sums: entropy, max prob, and NLL / top-1 of the next token.

    ``half`` is the batch's stored (B*T, V) float16 logits, ``ids`` its (B, T) input.
    One window at a time keeps the float32 temporaries at T x V.
    """
    seq_len = ids.shape[1]
    for b in range(ids.shape[0]):
        logp = (
            half[b * seq_len : (b + 1) * seq_len].float().log_softmax(dim=-1)
        )  # (T, V)
        stats["entropy"] += float(-(logp.exp() * logp).sum())
        stats["max_prob"] += float(logp.max(dim=-1).values.exp().sum())
        targets = ids[b, 1:]  # row t predicts token t + 1; the last row has no target
        stats["nll"] += float(-logp[:-1].gather(1, targets[:, None]).sum())
        stats["top1"] += float((logp[:-1].argmax(dim=-1) == targets).sum())
        stats["targets"] += seq_len - 1


def write_split(
    path: Path,
    model: Any,
    windows: torch.Tensor,
    *,
    batch_size: int,
    metadata: dict[str, str],
) -> dict[str, float]:
    """Stream the teacher's logits over ``windows`` (N, T) into ``path``."""
    num_windows, seq_len = windows.shape
    num_tokens = num_windows * seq_len
    vocab = int(model.config.vocab_size)
    specs = {
        "token_ids": ((num_tokens,), torch.int64),
        "logits": ((num_tokens, vocab), torch.float16),
    }
    forward_s = 0.0
    max_abs = 0.0
    stats = dict.fromkeys(("entropy", "max_prob", "nll", "top1", "targets"), 0.0)
    start = time.perf_counter()
    with SafetensorsStreamWriter(path, specs, metadata) as writer:
        writer.write("token_ids", windows.reshape(-1))
        tick = time.perf_counter()
        for ids, logits in teacher_logits(model, windows, batch_size=batch_size):
            forward_s += time.perf_counter() - tick
            flat = logits.reshape(-1, vocab)  # (B*T, V) float32
            low, high = torch.aminmax(flat)  # no (B*T, V) temporary, unlike abs()
            max_abs = max(max_abs, -float(low), float(high))
            if not max_abs <= FP16_MAX:  # also catches NaN
                raise RuntimeError(
                    f"teacher logits reach {max_abs}: not storable as fp16"
                )
            half = flat.to(torch.float16)
            writer.write("logits", half)
            _accumulate_stats(stats, half, ids)
            del logits, flat, half  # hold at most one batch
            tick = time.perf_counter()
    total_s = time.perf_counter() - start
    return {
        "tokens": num_tokens,
        "forward_s": round(forward_s, 2),
        "total_s": round(total_s, 2),
        "tokens_per_s": round(num_tokens / forward_s, 1),
        "max_abs_logit": round(max_abs, 2),
        "mean_entropy_nats": round(stats["entropy"] / num_tokens, 3),
        "mean_max_prob": round(stats["max_prob"] / num_tokens, 3),
        "next_token_top1": round(stats["top1"] / stats["targets"], 3),
        "perplexity": round(math.exp(stats["nll"] / stats["targets"]), 2),
        "bytes": path.stat().st_size,
    }


def readme_section(prefix: str, summary: dict[str, Any]) -> str:
    """The README section that describes the two files."""
    s = summary
    cmd = " ".join(["python benchmarks/make_lm_label_set.py", *s["argv"]])
    lines = [
        SECTION_BEGIN.format(prefix=prefix),
        f"## {prefix}*: real LM teacher logits ({s['teacher_id']})",
        "",
        f"Made by `{cmd}` in the labelzip repo (options not given take their defaults).",
        f"Teacher: `{s['teacher']}` -> `{s['teacher_id']}`, vocabulary V = {s['vocab_size']}, "
        f"run in float32 on CPU (torch threads: {s['threads']}). Unlike the image sets "
        "above, `logits` are **float16** (the teacher's range fits: see max |logit|).",
        f"Text: `{' '.join(s['corpus'])}`, split by document (seed {s['seed']}, "
        f"{s['validation_fraction']:.0%} of documents held out); windows of T = "
        f"{s['seq_len']} tokens, documents joined by `{s['separator']}`; a seeded sample "
        "of windows from each part.",
        "",
        "| file | tensors | tokens | windows | documents |",
        "|---|---|---|---|---|",
    ]
    for split in ("train", "test"):
        d = s[split]
        docs = ", ".join(d["documents"][:6]) + (
            " ..." if len(d["documents"]) > 6 else ""
        )
        lines.append(
            f"| `{d['file']}` | `logits` ({d['tokens']}, {s['vocab_size']}) float16, "
            f"`token_ids` ({d['tokens']},) int64 | {d['tokens']} | {d['windows']} | "
            f"{len(d['documents'])} ({docs}) |"
        )
    lines += [
        "",
        f"Row r of `logits` is the teacher's next-token distribution after "
        f"`token_ids[: r + 1]` within its window of {s['seq_len']} (windows are "
        f"consecutive; the target of row r is `token_ids[r + 1]` except at the last "
        f"row of a window). The test file's documents are disjoint from the train "
        f"file's. Metadata (`safetensors.safe_open(...).metadata()`) holds the teacher, "
        f"tokenizer and corpus fingerprints.",
        f"Measured: {s['train']['tokens_per_s']} tokens/s (train), "
        f"{s['test']['tokens_per_s']} tokens/s (test) for batches of "
        f"{s['batch_size']} x {s['seq_len']}; teacher load {s['load_s']} s; peak RSS "
        f"{s['peak_rss_mib']:.0f} MiB; max |logit| {s['train']['max_abs_logit']}; "
        f"1-min load average {s['load_average']} on {os.cpu_count()} cores (shared "
        "machine: tokens/s scale with the load).",
        "",
        "| file | next-token top-1 | perplexity | mean entropy (nats) | mean max prob |",
        "|---|---|---|---|---|",
        *(
            f"| `{s[k]['file']}` | {s[k]['next_token_top1']} | {s[k]['perplexity']} | "
            f"{s[k]['mean_entropy_nats']} | {s[k]['mean_max_prob']} |"
            for k in ("train", "test")
        ),
        "",
        "The teacher is far less peaked than an image classifier: expect codecs tuned "
        "on the image sets to behave differently here.",
        SECTION_END.format(prefix=prefix),
        "",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, prefix: str, section: str) -> None:
    """Replace this prefix's section in README.md, or append it; keep the rest."""
    begin, end = SECTION_BEGIN.format(prefix=prefix), SECTION_END.format(prefix=prefix)
    readme.touch(exist_ok=True)
    with readme.open("r+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another writer may update other sections
        text = f.read()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1].lstrip("\n")
            text = head + section + tail
        else:
            text = text + ("\n" if text and not text.endswith("\n\n") else "") + section
        f.seek(0)
        f.write(text)
        f.truncate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    seq_len = args.seq_len
    t0 = time.perf_counter()
    model, tokenizer, teacher_id = load_teacher(args.teacher)
    load_s = round(time.perf_counter() - t0, 2)
    config = CorpusConfig(
        source=args.corpus[0] if len(args.corpus) == 1 else list(args.corpus),
        seq_len=seq_len,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        max_train_windows=max(1, args.train_tokens // seq_len),
        max_validation_windows=max(1, args.test_tokens // seq_len),
        separator=args.separator or None,
    )
    corpus = build_corpus(config, tokenizer, max_context=max_context(model))
    base_meta = {
        "teacher": str(args.teacher),
        "teacher_id": teacher_id,
        "teacher_fingerprint": teacher_fingerprint(model, tokenizer),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "seq_len": str(seq_len),
        "layout": "logits[r] predicts token_ids[r+1] within windows of seq_len tokens",
    }
    summary: dict[str, Any] = {
        "teacher": str(args.teacher),
        "teacher_id": teacher_id,
        "vocab_size": int(model.config.vocab_size),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "corpus": list(args.corpus),
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "seq_len": seq_len,
        "separator": config.separator or "EOS",
        "batch_size": args.batch_size,
        "threads": args.threads,
        "load_s": load_s,
    }
    parts = {
        "train": (corpus.train, corpus.train_fingerprint, corpus.train_documents, ""),
        "test": (
            corpus.validation,
            corpus.validation_fingerprint,
            corpus.validation_documents,
            "_test",
        ),
    }
    for split, (windows, fingerprint, documents, suffix) in parts.items():
        if windows.shape[0] == 0:
            raise SystemExit(f"the {split} part has no windows; lower --seq-len")
        path = args.out_dir / f"{args.prefix}{suffix}.safetensors"
        meta = {**base_meta, "split": split, "corpus_fingerprint": fingerprint}
        meta["documents"] = json.dumps(list(documents))
        stats = write_split(
            path, model, windows, batch_size=args.batch_size, metadata=meta
        )
        summary[split] = {
            **stats,
            "file": path.name,
            "windows": int(windows.shape[0]),
            "documents": list(documents),
            "corpus_fingerprint": fingerprint,
        }
        logging.info("%s: %s", split, json.dumps(stats))
    summary["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    summary["load_average"] = round(os.getloadavg()[0], 1)
    if not args.no_readme:
        update_readme(
            args.out_dir / "README.md",
            args.prefix,
            readme_section(args.prefix, summary),
        )
    brief = {k: v for k, v in summary.items() if k not in ("train", "test")}
    for split in ("train", "test"):
        brief[split] = {k: v for k, v in summary[split].items() if k != "documents"}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
