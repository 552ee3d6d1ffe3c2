"""LM distillation benchmark: students trained from compressed labels vs references.

One run: the teacher labels the training windows once (plus the fitting pass) into
one archive per (codec, target ratio); a student is trained from each archive's
decoded labels, next to a CE-only student and an online-KD student (the teacher
live), all with the same initialisation, windows, order and optimiser; every
student is evaluated on the held-out documents (perplexity, KL to the teacher,
top-1 agreement) in one shared teacher pass. Storage is stated all-in (the file
size) against dense fp16, and each codec's measured bytes per token are
extrapolated to the paper's setting (GPT-2: V = 50,257, 1,114,112 tokens = 112 GB
dense fp16 -> 200 MB claimed) with :func:`labelzip.storage.lm_storage_table`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.archive import ArchiveReader, Layout
from labelzip.errors import ConfigError, UnreachableTargetError
from labelzip.lm.corpus import CorpusConfig, build_corpus
from labelzip.lm.evaluate import LMScores, evaluate_students
from labelzip.lm.provenance import LAYOUT_DIMS, corpus_record
from labelzip.lm.relabel import (
    LMOutput,
    RelabelLMConfig,
    RelabelLMResult,
    relabel_lm_many,
)
from labelzip.lm.student import StudentConfig, build_student_for_teacher
from labelzip.lm.teacher import load_teacher, max_context
from labelzip.lm.train import ArchiveLabels, TeacherLabels, TrainLMConfig, train_student
from labelzip.outputs import atomic_path, write_text
from labelzip.rate import ArchiveTarget, RateGoal, configure_codec
from labelzip.rate.target import RateValue
from labelzip.selection.auto import AUTO, LM_CANDIDATES, AutoConfig

__all__ = [
    "CODEC_PRESETS",
    "LMBenchConfig",
    "LMBenchRow",
    "PAPER_DENSE_BYTES",
    "PAPER_LABEL_BYTES",
    "PAPER_TOKENS",
    "PAPER_VOCAB",
    "markdown_table",
    "run_lm_bench",
    "write_report",
]

logger = logging.getLogger(__name__)

# The paper's LM setting: GPT-2 vocabulary, 112 GB of dense fp16 labels.
PAPER_VOCAB = 50257
PAPER_TOKENS = 1_114_112  # 1,114,112 x 50,257 x 2 B = 111.98 GB
PAPER_DENSE_BYTES = 112_000_000_000
PAPER_LABEL_BYTES = 200_000_000

# Options each baseline is run with unless the config overrides them.
CODEC_PRESETS: dict[str, dict[str, Any]] = {
    "topk": {"decoder": "mr"},  # top-K log-probs renormalised (Axolotl / Megatron)
    "topk-tail": {},  # DistillKit style: top-K + modelled tail
    "rskd": {"sizing": "measured"},  # fill the budget (worst_case under-uses it)
    "vqae": {},
    "vqae-sparse": {},  # VQAE on the top-K support (large V)
    "vqae-rs": {},  # VQAE head + unbiased sampled tail
    "dense": {},
}

LogFn = Callable[[str], None]


class LMBenchConfig(BaseModel):
    """What the benchmark labels, compresses and trains."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    teacher: str = Field(default="smollm2-135m", description="teacher name or folder")
    tokens: int = Field(
        default=200_000, ge=2, description="training tokens labelled (N x T)"
    )
    corpus: CorpusConfig = Field(
        default_factory=lambda: CorpusConfig(max_validation_windows=16),
        description="text, window length, split; max_train_windows comes from tokens",
    )
    codecs: tuple[str, ...] = Field(
        default=("auto", "topk-tail", "topk", "rskd", "vqae-sparse", "vqae-rs"),
        description="codecs compared ('auto': the measured choice, docs/auto.md)",
    )
    ratios: tuple[RateValue, ...] = Field(
        default=(100.0, 500.0, 2000.0), description="all-in target ratios vs fp16"
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="codec -> options over CODEC_PRESETS"
    )
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainLMConfig = Field(default_factory=TrainLMConfig)
    relabel: RelabelLMConfig = Field(default_factory=RelabelLMConfig)
    online: bool = Field(default=True, description="train the online-KD reference")
    eval_batch_size: int = Field(default=4, ge=1, description="validation windows")


@dataclass(frozen=True)
class LMBenchRow:
    """One student: its labels (none for CE) and its validation scores."""

    name: str
    kind: str  # "labels", "online" or "ce"
    codec: str | None
    target_ratio: float | None
    ratio: float | None  # all-in, file size vs dense fp16
    total_bytes: int | None
    bytes_per_token: float | None
    scores: dict[str, Any]
    gap_to_online: float | None  # perplexity / online perplexity - 1
    gap_to_ce: float | None  # perplexity / CE perplexity - 1
    paper_scale_bytes: int | None  # this codec at the paper's tokens and vocab
    codec_config: dict[str, Any] | None = None
    # {"train": training seconds; labels rows also "relabel": the shared teacher
    # pass and this codec's fit and encode seconds}
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log(log: LogFn | None, message: str) -> None:
    logger.info(message)
    if log is not None:
        log(message)


def _outputs(
    config: LMBenchConfig, work_dir: Path, layout: Layout, vocab: int
) -> tuple[list[LMOutput], list[dict[str, Any]]]:
    """Reachable (codec, ratio) archives, and the unreachable ones with the reason."""
    outputs: list[LMOutput] = []
    skipped: list[dict[str, Any]] = []
    chunk = config.relabel.chunk_windows * layout.shape[1]
    for codec in config.codecs:
        options = {**CODEC_PRESETS.get(codec, {}), **config.options.get(codec, {})}
        if codec == AUTO and options:
            raise ConfigError("codec 'auto' chooses the options: give none for it")
        # auto is reachable when one of its candidates is
        tried = [c for c, _ in LM_CANDIDATES] if codec == AUTO else [codec]
        for ratio in config.ratios:
            try:
                _reachable(tried, layout, vocab, ratio, chunk, options)
            except UnreachableTargetError as exc:
                skipped.append(
                    {"codec": codec, "target_ratio": ratio, "reason": str(exc)}
                )
                continue
            path = work_dir / f"lm_{codec}_{ratio:g}x.lz"
            # auto scores its candidates at the temperature the students train at
            auto = (
                AutoConfig(temperature=config.train.temperature)
                if codec == AUTO
                else None
            )
            outputs.append(
                LMOutput(
                    path=path, codec=codec, options=options, ratio=ratio, auto=auto
                )
            )
    return outputs, skipped


def _reachable(
    codecs: list[str],
    layout: Layout,
    vocab: int,
    ratio: float,
    chunk: int,
    options: dict[str, Any],
) -> None:
    """Return when one of ``codecs`` meets ``ratio``; else raise the first's reason."""
    first: UnreachableTargetError | None = None
    for codec in codecs:
        try:
            target = ArchiveTarget(RateGoal(ratio=ratio), layout, vocab, chunk)
            configure_codec(codec, options, target)
            return
        except UnreachableTargetError as exc:
            first = first or exc
    assert first is not None
    raise first


def _paper_scale_bytes(result: RelabelLMResult) -> int:
    """This archive's per-token bytes at the paper's token count (GPT-2 vocabulary).

    Payload and header grow with the tokens; the model is stored once. Top-K style payloads do not depend on V (16-bit ids for both
    49,152 and 50,257), so the per-token payload carries over.
    """
    from labelzip.storage import lm_storage_table

    account = result.account
    per_token = PAPER_TOKENS / account.num_labels
    rows = lm_storage_table(
        tokens=PAPER_TOKENS,
        vocab=PAPER_VOCAB,
        framework="labelzip",
        codec_bits_per_label=8 * account.payload_bytes / account.num_labels,
        codec_model_bytes=account.model_bytes,
        # the header grows with the chunk count, i.e. with the tokens
        codec_header_bytes=math.ceil(account.header_bytes * per_token),
    )
    return int(rows[0].label_total_bytes)


def run_lm_bench(
    config: LMBenchConfig,
    work_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Label, compress, train and evaluate; returns the JSON-able report.

    Args:
        config: what to run.
        work_dir: where the archives are written (kept: they are the result).
        device: where the teacher, students and decoding run.
        log: called with one line per stage.

    Raises:
        ConfigError: no (codec, ratio) is reachable; bad corpus or teacher.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    start = time.perf_counter()
    model, tokenizer, teacher_id = load_teacher(config.teacher, device=device)
    seq_len = config.corpus.seq_len
    cfg = config.corpus.model_copy(
        update={"max_train_windows": max(1, math.ceil(config.tokens / seq_len))}
    )
    corpus = build_corpus(cfg, tokenizer, max_context=max_context(model))
    vocab = int(model.config.vocab_size)
    layout = Layout(LAYOUT_DIMS, tuple(corpus.train.shape))
    outputs, skipped = _outputs(config, work, layout, vocab)
    if not outputs:
        raise ConfigError(
            f"no codec reaches any of the ratios {list(config.ratios)} at "
            f"{layout.num_labels} tokens: {skipped[0]['reason'] if skipped else ''}"
        )
    _log(log, f"labelling {layout.num_labels} tokens into {len(outputs)} archives")
    results = relabel_lm_many(
        model,
        tokenizer,
        corpus.train,
        outputs,
        config.relabel,
        teacher_id=teacher_id,
        corpus=corpus_record(cfg, corpus),
    )
    students: dict[str, Any] = {}
    seconds: dict[str, dict[str, float]] = {}
    readers = [ArchiveReader(r.path) for r in results]
    try:
        plan: list[tuple[str, Any]] = [("ce", None)]
        if config.online:
            plan.append(("online", TeacherLabels(model)))
        plan += [
            (f"{o.codec}@{o.ratio:g}x", ArchiveLabels(rd))
            for o, rd in zip(outputs, readers, strict=True)
        ]
        for name, labels in plan:
            _log(log, f"training student {name}")
            student = build_student_for_teacher(config.student, model, tokenizer)
            t0 = time.perf_counter()
            run = train_student(
                student, corpus.train, labels, config.train, mode=name, device=device
            )
            seconds[name] = {**run.seconds, "total": time.perf_counter() - t0}
            students[name] = student
    finally:
        for reader in readers:
            reader.close()
    _log(log, f"evaluating {len(students)} students")
    scores = evaluate_students(
        students,
        corpus.validation,
        teacher=model,
        batch_size=config.eval_batch_size,
        device=device,
    )
    rows = _rows(outputs, results, scores, seconds)
    return {
        "teacher": teacher_id,
        "config": config.model_dump(mode="json"),
        "train_windows": list(corpus.train.shape),
        "validation_windows": list(corpus.validation.shape),
        "dense_fp16_bytes": layout.num_labels * vocab * 2,
        "relabel": {
            "teacher_positions": results[0].teacher_positions,
            "two_pass": results[0].two_pass,
            "seconds": {r.path.name: r.seconds for r in results},
        },
        "paper": {
            "tokens": PAPER_TOKENS,
            "vocab": PAPER_VOCAB,
            "dense_fp16_bytes": PAPER_TOKENS * PAPER_VOCAB * 2,
            "claimed_bytes": PAPER_LABEL_BYTES,
            "claimed_ratio": PAPER_TOKENS * PAPER_VOCAB * 2 / PAPER_LABEL_BYTES,
        },
        "rows": [row.to_dict() for row in rows],
        "skipped": skipped,
        "seconds": time.perf_counter() - start,
    }


def _rows(
    outputs: Sequence[LMOutput],
    results: Sequence[RelabelLMResult],
    scores: dict[str, LMScores],
    seconds: dict[str, dict[str, float]],
) -> list[LMBenchRow]:
    online = scores.get("online")
    ce = scores["ce"]

    def gap(s: LMScores, ref: LMScores | None) -> float | None:
        return None if ref is None else s.perplexity / ref.perplexity - 1

    rows = [
        LMBenchRow(
            name=name,
            kind=name,
            codec=None,
            target_ratio=None,
            ratio=None,
            total_bytes=None,
            bytes_per_token=None,
            scores=scores[name].to_dict(),
            gap_to_online=gap(scores[name], online),
            gap_to_ce=gap(scores[name], ce),
            paper_scale_bytes=None,
            seconds={"train": seconds[name]},
        )
        for name in ("online", "ce")
        if name in scores
    ]
    for output, result in zip(outputs, results, strict=True):
        name = f"{output.codec}@{output.ratio:g}x"
        account = result.account
        rows.append(
            LMBenchRow(
                name=name,
                kind="labels",
                codec=output.codec,
                target_ratio=output.ratio,
                ratio=account.ratio,
                total_bytes=account.total_bytes,
                bytes_per_token=account.total_bytes / account.num_labels,
                scores=scores[name].to_dict(),
                gap_to_online=gap(scores[name], online),
                gap_to_ce=gap(scores[name], ce),
                paper_scale_bytes=_paper_scale_bytes(result),
                codec_config=result.codec_config,
                seconds={"train": seconds[name], "relabel": result.seconds},
            )
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(report: dict[str, Any]) -> str:
    """The report's rows as a Markdown table, plus the paper arithmetic."""
    lines = [
        "| student | labels | all-in ratio | B/token | val ppl | KL to teacher | "
        "top-1 agree | ppl vs online | ppl vs CE | at paper scale |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        s = row["scores"]
        paper = row["paper_scale_bytes"]
        lines.append(
            f"| {row['name']} | {row['codec'] or row['kind']} | "
            f"{_fmt(row['ratio'], '.1f')} | {_fmt(row['bytes_per_token'], '.1f')} | "
            f"{s['perplexity']:.2f} | {_fmt(s['kl_to_teacher'], '.4f')} | "
            f"{_fmt(s['top1_agreement'], '.3f')} | "
            f"{_fmt(row['gap_to_online'], '+.1%')} | {_fmt(row['gap_to_ce'], '+.1%')} | "
            f"{'-' if paper is None else f'{paper / 1e6:.1f} MB'} |"
        )
    p = report["paper"]
    lines += [
        "",
        f"Paper arithmetic: {p['tokens']:,} tokens x V = {p['vocab']:,} x 2 B = "
        f"{p['dense_fp16_bytes'] / 1e9:.2f} GB dense fp16; 200 MB is "
        f"{p['claimed_ratio']:.0f}x. 'at paper scale' extrapolates each archive's "
        "measured payload per token, model and header to that token count.",
    ]
    for item in report["skipped"]:
        lines.append(
            f"\nSkipped {item['codec']} at {item['target_ratio']:g}x: {item['reason']}"
        )
    return "\n".join(lines) + "\n"


def write_report(
    report: dict[str, Any], out_dir: str | Path, stem: str = "lm_bench"
) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (if matplotlib)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    write_text(paths[0], json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_text(paths[1], markdown_table(report))
    png = _plot(report, out / f"{stem}.png")
    return paths + ([png] if png is not None else [])


def _plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    by_codec: dict[str, list[tuple[float, float]]] = {}
    for row in report["rows"]:
        if row["kind"] == "labels":
            by_codec.setdefault(row["codec"], []).append(
                (row["ratio"], row["scores"]["perplexity"])
            )
    for codec, points in sorted(by_codec.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=codec)
    styles = {"online": ("k", "--"), "ce": ("tab:red", ":")}
    for row in report["rows"]:
        if row["kind"] in styles:
            color, style = styles[row["kind"]]
            ax.axhline(
                row["scores"]["perplexity"],
                color=color,
                linestyle=style,
                label=f"{row['kind']} reference",
            )
    ax.set_xscale("log")
    ax.set_xlabel("all-in compression ratio vs dense fp16")
    ax.set_ylabel("student validation perplexity")
    ax.set_title(
        f"LM KD from compressed labels ({report['train_windows'][0]} x "
        f"{report['train_windows'][1]} tokens)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
