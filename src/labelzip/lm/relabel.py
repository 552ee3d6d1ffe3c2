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

Provenance. The archive records the teacher id (``teacher``), the corpus
fingerprint of the windows (``dataset_fingerprint``) and, under the user metadata
key ``"lm"``, the tokenizer and teacher fingerprints, V, the window shape, the
corpus recipe and the fitting pass; :func:`check_lm_archive` refuses an archive
whose tokenizer, vocabulary or corpus differ from the ones a student uses.
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
from labelzip.archive import (
    ArchiveMetadata,
    ArchiveReader,
    ArchiveWriter,
    Layout,
    codec_for_target,
    fit_for_target,
)
from labelzip.codecs.base import Codec
from labelzip.codecs.registry import codec_class, create_codec
from labelzip.errors import CodecMismatchError, ConfigError, InputError
from labelzip.lm.corpus import CorpusConfig, corpus_fingerprint
from labelzip.lm.teacher import (
    max_context,
    teacher_fingerprint,
    teacher_logits,
    tokenizer_fingerprint,
)

__all__ = [
    "LAYOUT_DIMS",
    "LM_KEY",
    "LMArchiveRecord",
    "LMOutput",
    "PositionReservoir",
    "RelabelLMConfig",
    "RelabelLMResult",
    "check_lm_archive",
    "check_windows",
    "corpus_config_of",
    "corpus_record",
    "lm_archive_record",
    "needs_fit_sample",
    "relabel_lm",
    "relabel_lm_many",
]

logger = logging.getLogger(__name__)

LAYOUT_DIMS = ("sequence", "position")
LM_KEY = "lm"  # the archive's user-metadata entry written here
RECORD_FORMAT = "labelzip-lm-labels-v1"
_FIT_BATCH = 1024  # reservoir rows per fit() batch (float32: V x 4 KiB each)
_MAX_LISTED_DOCUMENTS = 256  # document names recorded in the header at most

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


class LMOutput(BaseModel):
    """The archive to write: codec, its options and an optional all-in target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="archive file to write")
    codec: str = Field(default="topk", description="codec registry name")
    options: dict[str, Any] = Field(
        default_factory=dict, description="codec options the user fixed"
    )
    ratio: float | None = Field(
        default=None, gt=0, description="all-in ratio vs dense fp16 to meet"
    )
    bits_per_label: float | None = Field(
        default=None, gt=0, description="all-in bits per label to meet"
    )

    @model_validator(mode="after")
    def _check(self) -> LMOutput:
        if self.ratio is not None and self.bits_per_label is not None:
            raise ValueError("give at most one of ratio and bits_per_label")
        return self


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

    @property
    def num_tokens(self) -> int:
        return self.num_sequences * self.seq_len


@dataclass(frozen=True)
class LMArchiveRecord:
    """The ``"lm"`` metadata of an archive written by :func:`relabel_lm`."""

    teacher: str | None
    tokenizer_fingerprint: str
    teacher_fingerprint: str
    corpus_fingerprint: str
    vocab_size: int
    num_sequences: int
    seq_len: int
    corpus: dict[str, Any] | None


class PositionReservoir:
    """A seeded uniform sample of at most ``capacity`` rows from a stream (Algorithm R).

    Row i of the stream (0-based) is kept with probability ``capacity / (i + 1)``,
    replacing a uniformly chosen slot; the result is a uniform sample of the rows
    seen, in fp16, ``capacity x C x 2`` bytes at most. Same seed and stream give
    the same sample.
    """

    def __init__(self, capacity: int, num_classes: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ConfigError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.num_classes = num_classes
        self.seen = 0
        self._rows = torch.empty(0, num_classes, dtype=torch.float16)
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        return self.capacity * self.num_classes * 2

    def add(self, rows: torch.Tensor) -> None:
        """Offer (n, C) rows, in stream order."""
        rows = rows.detach().reshape(-1, self.num_classes).to("cpu", torch.float16)
        n = rows.shape[0]
        fill = min(max(self.capacity - self.seen, 0), n)
        if fill:
            self._rows = torch.cat([self._rows, rows[:fill]])
        if fill < n:
            index = torch.arange(self.seen + fill, self.seen + n, dtype=torch.float64)
            u = torch.rand(n - fill, generator=self._gen, dtype=torch.float64)
            slot = (u * (index + 1)).floor().long()
            hit = slot < self.capacity
            slot, src = slot[hit], torch.arange(fill, n)[hit]
            if slot.numel():  # a later row wins a slot drawn twice in this batch
                order = torch.argsort(slot * n + src)
                slot, src = slot[order], src[order]
                last = torch.ones_like(slot, dtype=torch.bool)
                last[:-1] = slot[1:] != slot[:-1]
                self._rows[slot[last]] = rows[src[last]]
        self.seen += n

    def rows(self) -> torch.Tensor:
        """(min(seen, capacity), C) float16 sampled rows."""
        return self._rows

    def batches(self, size: int = _FIT_BATCH) -> Iterator[torch.Tensor]:
        """The sample as float32 (size, C) batches (a fresh pass each call)."""
        for start in range(0, self._rows.shape[0], size):
            yield self._rows[start : start + size].float()


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


def _record(
    model: Any,
    tokenizer: Any,
    windows: torch.Tensor,
    corpus: Mapping[str, Any] | None,
    fit: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    tok_fp = tokenizer_fingerprint(tokenizer)
    corpus_fp = corpus_fingerprint(windows, tok_fp)
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "tokenizer_fingerprint": tok_fp,
        "teacher_fingerprint": teacher_fingerprint(model, tokenizer),
        "corpus_fingerprint": corpus_fp,
        "vocab_size": int(model.config.vocab_size),
        "num_sequences": int(windows.shape[0]),
        "seq_len": int(windows.shape[1]),
        "teacher_context": max_context(model),
        "corpus": _trim_documents(dict(corpus)) if corpus is not None else None,
        "fit": fit,
    }
    return corpus_fp, record


def _trim_documents(corpus: dict[str, Any]) -> dict[str, Any]:
    docs = corpus.get("documents")
    if isinstance(docs, list | tuple):
        corpus["num_documents"] = len(docs)
        corpus["documents"] = list(docs[:_MAX_LISTED_DOCUMENTS])
    return corpus


def _unfitted_codec(
    output: LMOutput,
    layout: Layout,
    num_classes: int,
    chunk_size: int,
    metadata: ArchiveMetadata,
) -> Codec:
    codec_class(output.codec)  # unknown names fail here, before the teacher runs
    if output.ratio is None and output.bits_per_label is None:
        return create_codec(output.codec, **output.options)
    return codec_for_target(
        output.codec,
        layout=layout,
        num_classes=num_classes,
        ratio=output.ratio,
        bits_per_label=output.bits_per_label,
        chunk_size=chunk_size,
        metadata=metadata,
        **output.options,
    )


def _fit(
    output: LMOutput,
    source: Callable[[], Iterator[torch.Tensor]] | list[torch.Tensor],
    layout: Layout,
    chunk_size: int,
    metadata: ArchiveMetadata,
    num_labels: int,
) -> Codec:
    num_classes = _num_classes(source)
    if output.ratio is None and output.bits_per_label is None:
        codec = create_codec(output.codec, **output.options)
        return codec.fit(source, num_labels=num_labels)
    return fit_for_target(
        output.codec,
        source,
        layout=layout,
        num_classes=num_classes,
        ratio=output.ratio,
        bits_per_label=output.bits_per_label,
        chunk_size=chunk_size,
        metadata=metadata,
        **output.options,
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
    probe_meta = _metadata(model, tokenizer, windows, corpus, teacher_id, {})
    probes = [
        _unfitted_codec(o, layout, vocab, chunk_size, probe_meta) for o in outputs
    ]
    two_pass = any(needs_fit_sample(p) for p in probes)
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
    metadata = _metadata(model, tokenizer, windows, corpus, teacher_id, fit_info)
    codecs, own = [], []
    for output in outputs:
        t0 = time.perf_counter()
        codecs.append(_fit(output, source, layout, chunk_size, metadata, n * t))
        own.append({"fit_codec": time.perf_counter() - t0, "encode_codec": 0.0})
    source = []  # drop the reservoir before the encoding pass
    accounts = _write(
        outputs, codecs, layout, chunk_size, metadata, own, encode_batches
    )
    seconds["total"] = time.perf_counter() - start
    results = []
    for output, codec, account, times in zip(
        outputs, codecs, accounts, own, strict=True
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
            )
        )
        logger.info("relabel-lm wrote %s: %s", output.path, account)
    return results


def _metadata(
    model: Any,
    tokenizer: Any,
    windows: torch.Tensor,
    corpus: Mapping[str, Any] | None,
    teacher_id: str | None,
    fit: dict[str, Any],
) -> ArchiveMetadata:
    corpus_fp, record = _record(model, tokenizer, windows, corpus, fit)
    return ArchiveMetadata(
        dataset_fingerprint=corpus_fp,
        teacher=teacher_id,
        user={LM_KEY: record},
    )


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
    metadata: ArchiveMetadata,
    seconds: list[dict[str, float]],
    batches: Iterator[torch.Tensor],
) -> list[StorageAccount]:
    vocab = codecs[0].num_classes
    assert vocab is not None
    with ExitStack() as stack:
        writers = [
            stack.enter_context(
                ArchiveWriter(
                    o.path, c, layout=layout, chunk_size=chunk_size, metadata=metadata
                )
            )
            for o, c in zip(outputs, codecs, strict=True)
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


def corpus_record(config: Any, corpus: Any) -> dict[str, Any]:
    """JSON-able recipe of a corpus's train windows, for :func:`relabel_lm`.

    Args:
        config: the :class:`~labelzip.lm.corpus.CorpusConfig` used.
        corpus: the :class:`~labelzip.lm.corpus.LMCorpus` it built.
    """
    return {
        "config": config.model_dump(mode="json"),
        "part": "train",
        "documents": list(corpus.train_documents),
        "validation_documents": list(corpus.validation_documents)[
            :_MAX_LISTED_DOCUMENTS
        ],
    }


def corpus_config_of(record: LMArchiveRecord) -> CorpusConfig:
    """The CorpusConfig an archive's windows were built with.

    Raises:
        CodecMismatchError: the archive does not record one (windows given directly).
    """
    raw = record.corpus.get("config") if isinstance(record.corpus, dict) else None
    if not isinstance(raw, dict):
        raise CodecMismatchError(
            "the archive does not record how its corpus was built; pass the corpus "
            "options (--corpus, --seq-len, ...) it was made with"
        )
    try:
        return CorpusConfig(**raw)
    except Exception as exc:
        raise CodecMismatchError(
            f"the archive's corpus recipe is not valid here: {exc}"
        ) from exc


def lm_archive_record(reader: ArchiveReader) -> LMArchiveRecord:
    """The LM provenance of an archive.

    Raises:
        CodecMismatchError: the archive was not written by :func:`relabel_lm`
            (no ``"lm"`` metadata) or its layout is not (sequence, position).
    """
    raw = reader.header.user.get(LM_KEY)
    if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
        raise CodecMismatchError(
            f"archive {str(reader.path)!r} holds no LM label metadata; create LM "
            "labels with `labelzip relabel-lm`"
        )
    if tuple(reader.layout.dims) != LAYOUT_DIMS:
        raise CodecMismatchError(
            f"archive {str(reader.path)!r} has layout {list(reader.layout.dims)}, "
            f"expected {list(LAYOUT_DIMS)}"
        )
    return LMArchiveRecord(
        teacher=reader.header.teacher,
        tokenizer_fingerprint=str(raw["tokenizer_fingerprint"]),
        teacher_fingerprint=str(raw["teacher_fingerprint"]),
        corpus_fingerprint=str(raw["corpus_fingerprint"]),
        vocab_size=int(raw["vocab_size"]),
        num_sequences=int(raw["num_sequences"]),
        seq_len=int(raw["seq_len"]),
        corpus=raw.get("corpus"),
    )


def check_lm_archive(
    reader: ArchiveReader,
    *,
    tokenizer: Any,
    windows: torch.Tensor,
    vocab_size: int,
) -> LMArchiveRecord:
    """Refuse an archive made with another tokenizer, vocabulary or corpus.

    Args:
        reader: the label archive.
        tokenizer: the tokenizer the student is trained with.
        windows: the (N, T) training windows the labels must belong to.
        vocab_size: the student's output width V.

    Raises:
        CodecMismatchError: any fingerprint, V or window shape differs; the message
            names both values and what to do.
    """
    record = lm_archive_record(reader)
    name = str(reader.path)
    tok_fp = tokenizer_fingerprint(tokenizer)
    if record.tokenizer_fingerprint != tok_fp:
        raise CodecMismatchError(
            f"archive {name!r} was made with another tokenizer (fingerprint "
            f"{record.tokenizer_fingerprint[:16]}, this one {tok_fp[:16]}); train with "
            f"the teacher's tokenizer ({record.teacher}) or relabel the corpus"
        )
    if reader.num_classes != vocab_size or record.vocab_size != vocab_size:
        raise CodecMismatchError(
            f"archive {name!r} holds distributions over {reader.num_classes} tokens "
            f"but the student's vocabulary has {vocab_size}; build the student with "
            "the teacher's vocab_size"
        )
    shape = (record.num_sequences, record.seq_len)
    if tuple(windows.shape) != shape:
        raise CodecMismatchError(
            f"archive {name!r} labels {shape[0]} windows of {shape[1]} tokens, the "
            f"corpus has {tuple(windows.shape)}; use the corpus options the archive "
            "was made with (or relabel)"
        )
    corpus_fp = corpus_fingerprint(windows, tok_fp)
    if record.corpus_fingerprint != corpus_fp:
        raise CodecMismatchError(
            f"archive {name!r} was made from another corpus (fingerprint "
            f"{record.corpus_fingerprint[:16]}, these windows {corpus_fp[:16]}); use "
            "the text and corpus options the archive was made with (or relabel)"
        )
    return record
