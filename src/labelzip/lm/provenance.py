"""Provenance of LM label archives: what they were made from, and the checks.

An archive written by :func:`labelzip.lm.relabel.relabel_lm` records the teacher
id (``teacher``), the corpus fingerprint of its windows (``dataset_fingerprint``)
and, under the user-metadata key ``"lm"``, the tokenizer and teacher fingerprints,
V, the window shape (N, T), the teacher's context, the corpus recipe (CorpusConfig
and document names) and the fitting pass. A trainer rebuilds the corpus from that
recipe and :func:`check_lm_archive` refuses labels made with another tokenizer,
vocabulary or corpus: ids only mean the same tokens under the same tokenizer, and
labels only belong to the windows they were computed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from labelzip.archive import ArchiveMetadata, ArchiveReader
from labelzip.errors import CodecMismatchError
from labelzip.lm.corpus import CorpusConfig, corpus_fingerprint
from labelzip.lm.teacher import max_context, teacher_fingerprint, tokenizer_fingerprint

__all__ = [
    "LAYOUT_DIMS",
    "LM_KEY",
    "LMArchiveRecord",
    "RECORD_FORMAT",
    "archive_metadata",
    "check_lm_archive",
    "corpus_config_of",
    "corpus_record",
    "lm_archive_record",
]

LAYOUT_DIMS = ("sequence", "position")
LM_KEY = "lm"  # the archive's user-metadata entry
RECORD_FORMAT = "labelzip-lm-labels-v1"
_MAX_LISTED_DOCUMENTS = 256  # document names recorded in the header at most


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


def archive_metadata(
    model: Any,
    tokenizer: Any,
    windows: torch.Tensor,
    corpus: Mapping[str, Any] | None,
    teacher_id: str | None,
    fit: dict[str, Any],
) -> ArchiveMetadata:
    """The metadata of an LM label archive (fingerprints, recipe, fitting pass)."""
    corpus_fp, record = _record(model, tokenizer, windows, corpus, fit)
    return ArchiveMetadata(
        dataset_fingerprint=corpus_fp,
        teacher=teacher_id,
        user={LM_KEY: record},
    )


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
