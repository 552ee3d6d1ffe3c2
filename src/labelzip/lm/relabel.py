"""Label a token corpus with an LM teacher, streaming every position into an archive.

One next-token distribution is V values (V = 49,152 for SmolLM2: ~96 KiB in fp16),
so a label set of even 50k tokens (~5 GB dense) is never held in memory. The
teacher runs over the (N, T) token windows ``batch_size`` windows at a time; each
batch's (B, T, V) logits go straight into an :class:`~labelzip.archive.ArchiveWriter`
with layout ``("sequence", "position")`` of shape (N, T): label ``n * T + t`` is the
teacher's distribution after ``windows[n, : t + 1]`` (it predicts
``windows[n, t + 1]``; the last position's target lies past the window). A chunk
holds ``chunk_windows`` whole windows, so a student batch decodes only its windows.

Fitting. Codecs whose ``fit`` only reads the vocabulary size (dense, topk, rskd
with a fixed sample count) are fitted on the first teacher batch: one pass. Codecs
that learn from the labels (topk-tail's token prior and decay grid, vqae, rskd
with measured sizing) need a sample first, so the run takes two passes:

1. the teacher labels a seeded sample of ``fit_windows`` windows (all windows when
   there are fewer), and a seeded reservoir (Algorithm R) keeps a uniform sample
   of ``fit_positions`` of their positions in fp16; the codec is fitted on it;
2. the teacher labels every window again and the writer encodes each batch.

Cost of the two-pass flow: ``fit_windows / N`` of an extra teacher pass (e.g.
64 of 800 windows: +8% teacher time), ``fit_positions x V x 2`` bytes of memory
for the reservoir (2048 x 49,152 x 2 = 192 MiB), plus the codec's fit time. Peak
memory otherwise is the teacher, one batch of (B, T, V) float32 logits and the
codec's temporaries for one chunk, whatever N is.

Codec ``"auto"`` (:mod:`labelzip.selection.auto`, the LM candidates) is measured
on the fitting sample (so it always takes two passes): part of the reservoir is
held out, the winner is then fitted on the whole reservoir and the archive records
the choice.

Several archives (codecs, rate targets) can share one teacher pass:
:func:`relabel_lm_many`. Provenance (fingerprints, corpus recipe) and the checks a
trainer runs are in :mod:`labelzip.lm.provenance`.

Measured (SmolLM2-135M, Shakespeare windows of 256, topk-tail at 500x, batches of
4 windows, 1 thread): peak RSS 1915 MiB for 20k tokens and 1921 MiB for 50k.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelzip.accounting import StorageAccount
from labelzip.archive import ArchiveMetadata, ArchiveWriter, Layout
from labelzip.codecs.base import Codec
from labelzip.codecs.registry import codec_class
from labelzip.errors import ConfigError, InputError
from labelzip.lm.provenance import LAYOUT_DIMS, archive_metadata
from labelzip.lm.reservoir import PositionReservoir
from labelzip.lm.teacher import (
    max_context,
    teacher_logits,
)
from labelzip.rate import ArchiveTarget, TargetFields, configure_codec, fit_codec
from labelzip.selection.auto import (
    AUTO,
    AutoChoice,
    AutoConfig,
    Target,
    choose_from_rows,
    run_options,
    with_auto_record,
)

__all__ = [
    "LAYOUT_DIMS",
    "LMOutput",
    "PositionReservoir",
    "RelabelLMConfig",
    "RelabelLMResult",
    "check_windows",
    "needs_fit_sample",
    "relabel_lm",
    "relabel_lm_many",
]

logger = logging.getLogger(__name__)


ProgressFn = Callable[[str, int], None]
"""``progress(phase, positions)`` after each teacher batch; phase "fit" or "encode"."""


class RelabelLMConfig(BaseModel):
    """How the teacher runs and how codecs are fitted (shared by every codec)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(
        default=4, ge=1, le=4096, description="windows per teacher forward pass (B)"
    )
    chunk_windows: int = Field(
        default=1, ge=1, le=1 << 16, description="windows per archive chunk"
    )
    fit_positions: int = Field(
        default=2048,
        ge=1,
        le=1 << 22,
        description="positions in the reservoir a learned codec is fitted on",
    )
    fit_windows: int | None = Field(
        default=64,
        ge=1,
        description="windows the fitting pass labels (seeded sample); None = all",
    )
    seed: int = Field(default=0, ge=0, lt=1 << 63, description="seed of the fit sample")


class LMOutput(TargetFields):
    """The archive to write: codec, its options and an optional all-in target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="archive file to write")
    codec: str = Field(
        default="topk",
        description="codec registry name, or 'auto' (measured choice, needs a target)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="codec options the user fixed"
    )
    auto: AutoConfig | None = Field(
        default=None, description="how 'auto' measures its candidates (defaults)"
    )

    @model_validator(mode="after")
    def _check(self) -> LMOutput:
        if self.codec == AUTO and not self.has_target:
            raise ValueError("codec 'auto' chooses for a target: give a ratio")
        if self.codec == AUTO and self.options:
            raise ValueError("codec 'auto' chooses the options: give none")
        return self

    def target(
        self,
        layout: Layout,
        num_classes: int,
        chunk_size: int,
        metadata: ArchiveMetadata,
    ) -> ArchiveTarget | None:
        """This output's target for an archive of ``layout``, or None."""
        return ArchiveTarget.of(
            self.goal, layout, num_classes, chunk_size, metadata=metadata
        )


@dataclass(frozen=True)
class RelabelLMResult:
    """What a run wrote and what it cost."""

    path: Path
    account: StorageAccount
    codec_config: dict[str, Any]
    num_sequences: int
    seq_len: int
    two_pass: bool
    fit_windows: int  # windows the fitting pass labelled (0 for one pass)
    fit_positions: int  # positions the codec was fitted on
    teacher_positions: int  # positions run through the teacher, both passes
    reservoir_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    auto: AutoChoice | None = None  # what 'auto' measured, when it chose the codec

    @property
    def num_tokens(self) -> int:
        return self.num_sequences * self.seq_len


def needs_fit_sample(codec: Codec) -> bool:
    """Whether ``codec.fit`` learns from label values (else it reads only C)."""
    if codec.kind in ("dense", "topk"):
        return False
    if codec.kind == "rskd":
        return getattr(codec.config, "num_samples", None) is None
    return True


def check_windows(windows: torch.Tensor, model: Any) -> tuple[int, int]:
    """Validate (N, T) int64 windows against a teacher; returns (N, T).

    Raises:
        InputError: wrong shape or dtype, no windows, ids outside the vocabulary.
        ConfigError: T above the teacher's context.
    """
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else None
        raise InputError(f"windows must be an (N, T) tensor, got {shape}")
    if windows.dtype != torch.long:
        raise InputError(f"windows must be int64 token ids, got {windows.dtype}")
    n, t = windows.shape
    if n == 0 or t < 2:
        raise InputError(f"need at least one window of >= 2 tokens, got ({n}, {t})")
    context = max_context(model)
    if t > context:
        raise ConfigError(
            f"seq_len {t} exceeds the teacher's maximum context of {context} tokens; "
            f"use seq_len <= {context}"
        )
    vocab = int(model.config.vocab_size)
    lo, hi = int(windows.min()), int(windows.max())
    if lo < 0 or hi >= vocab:
        raise InputError(
            f"token ids span {lo}..{hi} but the teacher's vocabulary has {vocab} "
            "entries; tokenise the corpus with the teacher's own tokenizer"
        )
    return n, t


def _unfitted_codec(
    output: LMOutput,
    layout: Layout,
    num_classes: int,
    chunk_size: int,
    metadata: ArchiveMetadata,
) -> Codec:
    codec_class(output.codec)  # unknown names fail here, before the teacher runs
    target = output.target(layout, num_classes, chunk_size, metadata)
    return configure_codec(output.codec, output.options, target)


def _fit(
    output: LMOutput,
    source: Callable[[], Iterator[torch.Tensor]] | list[torch.Tensor],
    layout: Layout,
    chunk_size: int,
    metadata: ArchiveMetadata,
    num_labels: int,
) -> Codec:
    target = output.target(layout, _num_classes(source), chunk_size, metadata)
    return fit_codec(
        output.codec, source, output.options, num_labels=num_labels, target=target
    )


def _num_classes(
    source: Callable[[], Iterator[torch.Tensor]] | list[torch.Tensor],
) -> int:
    first = next(iter(source() if callable(source) else source))
    return int(first.shape[-1])


def relabel_lm(
    model: Any,
    tokenizer: Any,
    windows: torch.Tensor,
    output: LMOutput,
    config: RelabelLMConfig | None = None,
    *,
    teacher_id: str | None = None,
    corpus: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> RelabelLMResult:
    """Run the teacher over (N, T) windows and stream its logits into an archive.

    Args:
        model: a causal LM in eval mode (``model(input_ids).logits`` is (B, T, V)),
            on the device it should run on.
        tokenizer: the teacher's tokenizer (fingerprinted into the archive).
        windows: (N, T) int64 token ids, e.g. ``build_corpus(...).train``.
        output: archive path, codec, options and optional all-in target.
        config: teacher batch size, chunking and the fitting sample.
        teacher_id: recorded as the archive's teacher (``load_teacher``'s id).
        corpus: JSON-able recipe of the windows (e.g. the CorpusConfig dump and
            document names), so a trainer can rebuild and check them.
        progress: called with (phase, positions) after each teacher batch.

    Returns:
        A :class:`RelabelLMResult`: the archive's all-in account and the costs.

    Raises:
        InputError, ConfigError: bad windows (see :func:`check_windows`), bad codec
            options; UnreachableTargetError: the target is out of the codec's reach.

    Example:
        >>> model, tok, tid = load_teacher("smollm2-135m")  # doctest: +SKIP
        >>> corpus = build_corpus(CorpusConfig(max_train_windows=80), tok)
        >>> relabel_lm(model, tok, corpus.train, LMOutput(path="lm.lz", ratio=500),
        ...            teacher_id=tid)
    """
    results = relabel_lm_many(
        model,
        tokenizer,
        windows,
        [output],
        config,
        teacher_id=teacher_id,
        corpus=corpus,
        progress=progress,
    )
    return results[0]


def relabel_lm_many(
    model: Any,
    tokenizer: Any,
    windows: torch.Tensor,
    outputs: Sequence[LMOutput],
    config: RelabelLMConfig | None = None,
    *,
    teacher_id: str | None = None,
    corpus: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> list[RelabelLMResult]:
    """:func:`relabel_lm` for several archives from one teacher pass (two with fitting).

    Every output is checked (codec options, rate target) before the teacher runs.
    When any output needs a fitting sample, one reservoir serves them all.
    Each result's ``seconds`` holds the shared teacher times and its own codec
    times (``fit_codec``, ``encode_codec``).
    """
    config = config or RelabelLMConfig()
    outputs = list(outputs)
    paths = [o.path.resolve() for o in outputs]
    if not outputs or len(set(paths)) != len(paths):
        raise ConfigError("relabel-lm needs one or more outputs with distinct paths")
    n, t = check_windows(windows, model)
    vocab = int(model.config.vocab_size)
    layout = Layout(LAYOUT_DIMS, (n, t))
    chunk_size = config.chunk_windows * t
    probe_meta = archive_metadata(model, tokenizer, windows, corpus, teacher_id, {})
    probes = [
        _unfitted_codec(o, layout, vocab, chunk_size, probe_meta)
        for o in outputs
        if o.codec != AUTO
    ]
    # auto measures its candidates on the fitting sample
    two_pass = any(o.codec == AUTO for o in outputs) or any(
        needs_fit_sample(p) for p in probes
    )
    seconds: dict[str, float] = {}
    run = _TeacherRun(model, config.batch_size, progress, seconds)
    start = time.perf_counter()
    encode_batches = run.batches(windows, "encode")
    source: Callable[[], Iterator[torch.Tensor]] | list[torch.Tensor]
    if two_pass:
        fit_ids = _fit_window_ids(n, config)
        reservoir = PositionReservoir(config.fit_positions, vocab, config.seed)
        for logits in run.batches(windows[fit_ids], "fit"):
            reservoir.add(logits.reshape(-1, vocab))
            del logits
        source = reservoir.batches
        fit_info = {
            "two_pass": True,
            "fit_windows": len(fit_ids),
            "fit_positions": reservoir.rows().shape[0],
            "seed": config.seed,
        }
        reservoir_bytes = reservoir.nbytes
    else:
        first = next(encode_batches)
        source = [first.reshape(-1, vocab)]
        encode_batches = _prepend([first], encode_batches)
        del first  # the writers drop it after writing: no batch is held twice
        fit_info = {"two_pass": False, "fit_windows": 0, "fit_positions": 0}
        reservoir_bytes = 0
    metadata = archive_metadata(model, tokenizer, windows, corpus, teacher_id, fit_info)
    codecs, own, metas, choices = [], [], [], []
    for output in outputs:
        t0 = time.perf_counter()
        choice = None
        meta = metadata
        if output.codec == AUTO:
            choice = _choose(output, reservoir, layout, chunk_size, metadata)
            output, meta = _resolved(output, choice, metadata)
        choices.append(choice)
        metas.append(meta)
        codecs.append(_fit(output, source, layout, chunk_size, meta, n * t))
        own.append({"fit_codec": time.perf_counter() - t0, "encode_codec": 0.0})
    source = []  # drop the reservoir before the encoding pass
    accounts = _write(outputs, codecs, layout, chunk_size, metas, own, encode_batches)
    seconds["total"] = time.perf_counter() - start
    results = []
    for output, codec, account, times, choice in zip(
        outputs, codecs, accounts, own, choices, strict=True
    ):
        results.append(
            RelabelLMResult(
                path=output.path,
                account=account,
                codec_config=codec.to_config(),
                num_sequences=n,
                seq_len=t,
                two_pass=two_pass,
                fit_windows=int(fit_info["fit_windows"]),
                fit_positions=int(fit_info["fit_positions"]),
                teacher_positions=run.positions,
                reservoir_bytes=reservoir_bytes,
                seconds={**seconds, **times},
                auto=choice,
            )
        )
        logger.info("relabel-lm wrote %s: %s", output.path, account)
    return results


def _choose(
    output: LMOutput,
    reservoir: PositionReservoir,
    layout: Layout,
    chunk_size: int,
    metadata: ArchiveMetadata,
) -> AutoChoice:
    """``auto``: the candidates measured on a seeded part of the fitting sample."""
    goal = output.goal
    assert goal is not None  # LMOutput: codec 'auto' needs a target
    target = Target(
        goal,
        layout,
        reservoir.num_classes,
        chunk_size=chunk_size,
        metadata=metadata,
        family="lm",
    )
    return choose_from_rows(reservoir.rows(), target, output.auto or AutoConfig())


def _resolved(
    output: LMOutput, choice: AutoChoice, metadata: ArchiveMetadata
) -> tuple[LMOutput, ArchiveMetadata]:
    """The output of the auto winner (its full schedule) and its metadata."""
    win = choice.winner
    options = run_options(win.codec, win.options, choice.config)
    resolved = output.model_copy(update={"codec": win.codec, "options": options})
    return resolved, with_auto_record(metadata, choice)


def _fit_window_ids(num_windows: int, config: RelabelLMConfig) -> torch.Tensor:
    """Sorted ids of the windows the fitting pass labels (seeded uniform sample)."""
    limit = config.fit_windows
    if limit is None or limit >= num_windows:
        return torch.arange(num_windows)
    g = torch.Generator().manual_seed(config.seed)
    return torch.randperm(num_windows, generator=g)[:limit].sort().values


class _TeacherRun:
    """Teacher batches with timing, position counts and progress reports."""

    def __init__(
        self,
        model: Any,
        batch_size: int,
        progress: ProgressFn | None,
        seconds: dict[str, float],
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        self.seconds = seconds
        self.positions = 0

    def batches(self, windows: torch.Tensor, phase: str) -> Iterator[torch.Tensor]:
        """(B, T, V) float32 logits per batch, on the teacher's device."""
        key = f"{phase}_teacher"
        self.seconds.setdefault(key, 0.0)
        stream = teacher_logits(self.model, windows, batch_size=self.batch_size)
        while True:
            t0 = time.perf_counter()
            item = next(stream, None)
            self.seconds[key] += time.perf_counter() - t0
            if item is None:
                return
            ids, logits = item
            count = ids.numel()
            del item, ids
            self.positions += count
            yield logits
            del logits  # free this batch before the next forward pass
            if self.progress is not None:
                self.progress(phase, count)


def _prepend(
    first: list[torch.Tensor], rest: Iterator[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """``first``'s items, then ``rest``; each item is released once yielded."""
    while first:
        yield first.pop(0)
    yield from rest


def _write(
    outputs: list[LMOutput],
    codecs: list[Codec],
    layout: Layout,
    chunk_size: int,
    metadata: list[ArchiveMetadata],
    seconds: list[dict[str, float]],
    batches: Iterator[torch.Tensor],
) -> list[StorageAccount]:
    vocab = codecs[0].num_classes
    assert vocab is not None
    with ExitStack() as stack:
        writers = [
            stack.enter_context(
                ArchiveWriter(
                    o.path, c, layout=layout, chunk_size=chunk_size, metadata=m
                )
            )
            for o, c, m in zip(outputs, codecs, metadata, strict=True)
        ]
        for logits in batches:
            rows = logits.reshape(-1, vocab)
            del logits
            for writer, times in zip(writers, seconds, strict=True):
                t0 = time.perf_counter()
                writer.write(rows)
                times["encode_codec"] += time.perf_counter() - t0
            del rows
    accounts = []
    for writer in writers:
        assert writer.account is not None
        accounts.append(writer.account)
    return accounts
