"""Text corpora for LM distillation: a split by document, token windows, fingerprints.

A corpus is a list of :class:`~labelzip.lm.documents.Document` (Shakespeare's works,
the books of the King James Bible, or the user's ``.txt`` / ``.jsonl`` files). It is
split into train and validation *by document*, so no validation window shares text
with a training window, then each split is tokenised into one stream (documents joined by a separator token)
and cut into non-overlapping windows of ``seq_len`` tokens, shape (N, T) int64.
Everything is deterministic: the same files, tokenizer and seed give the same ids and
the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.errors import ConfigError, InputError
from labelzip.lm.documents import Document, load_documents
from labelzip.lm.teacher import tokenizer_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CorpusConfig",
    "LMCorpus",
    "build_corpus",
    "corpus_fingerprint",
    "split_documents",
    "tokenize_windows",
]


def split_documents(
    documents: Sequence[Document], *, validation_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Split into (train, validation) by whole documents, seeded.

    ``round(n * validation_fraction)`` documents (at least 1, at most n - 1) are drawn
    with a seeded permutation; both parts keep the input order.

    Raises:
        ConfigError: fraction outside [0, 1).
        InputError: fewer than 2 documents while a validation part is asked for.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(
            f"validation_fraction must be in [0, 1), got {validation_fraction}"
        )
    n = len(documents)
    if validation_fraction == 0.0:
        return list(documents), []
    if n < 2:
        raise InputError(
            f"splitting by document needs at least 2 documents, got {n}; split the "
            "text into several files (or JSONL lines) or set validation_fraction=0"
        )
    num_val = min(n - 1, max(1, round(n * validation_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    is_val = set(perm[:num_val].tolist())
    train = [d for i, d in enumerate(documents) if i not in is_val]
    val = [d for i, d in enumerate(documents) if i in is_val]
    return train, val


def _separator_id(
    tokenizer: PreTrainedTokenizerBase, separator: str | None
) -> int | None:
    if separator is None:
        eos = tokenizer.eos_token_id
        return int(eos) if isinstance(eos, int) else None
    vocab = tokenizer.get_vocab()
    if separator not in vocab:
        raise ConfigError(
            f"separator token {separator!r} is not in the tokenizer's vocabulary; "
            "pass one of its special tokens or None for its EOS token"
        )
    return int(vocab[separator])


def tokenize_windows(
    documents: Sequence[Document],
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    max_context: int | None = None,
    separator: str | None = None,
) -> torch.Tensor:
    """Tokenise documents into one stream and cut it into windows.

    Each document's ids are followed by the separator token (``separator``, default
    the tokenizer's EOS token; nothing when it has none). The tail that does not fill
    a last window is dropped.

    Args:
        documents: in order.
        tokenizer: a Hugging Face tokenizer; no BOS/EOS is added per document.
        seq_len: T, tokens per window.
        max_context: the teacher's maximum context; ``seq_len`` may not exceed it.
        separator: token string placed after every document.

    Returns:
        (N, T) int64 token ids, N = stream length // T.

    Raises:
        ConfigError: seq_len < 2 or above max_context; unknown separator.
        InputError: the text is shorter than one window.
    """
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2 tokens, got {seq_len}")
    if max_context is not None and seq_len > max_context:
        raise ConfigError(
            f"seq_len {seq_len} exceeds the teacher's maximum context of {max_context} "
            f"tokens; use seq_len <= {max_context}"
        )
    sep = _separator_id(tokenizer, separator)
    stream: list[int] = []
    for doc in documents:
        # verbose=False: whole documents are longer than the model's context on
        # purpose; they are cut into windows below.
        stream.extend(
            tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]
        )
        if sep is not None:
            stream.append(sep)
    num_windows = len(stream) // seq_len
    if num_windows == 0:
        raise InputError(
            f"the text of {len(documents)} document(s) is {len(stream)} tokens, shorter "
            f"than one window of seq_len={seq_len}; add text or lower seq_len"
        )
    return torch.tensor(stream[: num_windows * seq_len], dtype=torch.long).view(
        num_windows, seq_len
    )


def corpus_fingerprint(windows: torch.Tensor, tokenizer_fp: str) -> str:
    """sha256 (hex) of the window shape, the token ids (int64 LE) and the tokenizer."""
    if windows.dtype != torch.long or windows.dim() != 2:
        raise InputError(
            f"windows must be a (N, T) int64 tensor, got {tuple(windows.shape)} {windows.dtype}"
        )
    h = hashlib.sha256(b"labelzip-corpus-v1\0")
    h.update(json.dumps([list(windows.shape), tokenizer_fp]).encode())
    h.update(windows.contiguous().cpu().numpy().astype("<i8").tobytes())
    return h.hexdigest()


class CorpusConfig(BaseModel):
    """Which text to use and how to cut it into train/validation windows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | list[str] = Field(
        default="shakespeare",
        description="'shakespeare', 'kjv', or .txt/.jsonl files or folders",
    )
    seq_len: int = Field(
        default=256, ge=2, le=1 << 20, description="tokens per window (T)"
    )
    validation_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="share of documents held out"
    )
    seed: int = Field(
        default=0, ge=0, description="seed of the split and the window sample"
    )
    max_train_windows: int | None = Field(
        default=None,
        ge=1,
        description="keep a seeded sample of this many train windows",
    )
    max_validation_windows: int | None = Field(
        default=None,
        ge=1,
        description="keep a seeded sample of this many validation windows",
    )
    separator: str | None = Field(
        default=None, description="token after each document; None = the EOS token"
    )


@dataclass(frozen=True)
class LMCorpus:
    """Train and validation windows, (N, T) int64 each, with their provenance."""

    train: torch.Tensor
    validation: torch.Tensor
    train_documents: tuple[str, ...]
    validation_documents: tuple[str, ...]
    train_fingerprint: str
    validation_fingerprint: str
    tokenizer_fingerprint: str


def _sample_windows(
    windows: torch.Tensor, limit: int | None, seed: int
) -> torch.Tensor:
    if limit is None or limit >= windows.shape[0]:
        return windows
    perm = torch.randperm(
        windows.shape[0], generator=torch.Generator().manual_seed(seed)
    )
    return windows[perm[:limit].sort().values]  # spread over the corpus, in order


def build_corpus(
    config: CorpusConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_context: int | None = None,
) -> LMCorpus:
    """Load, split by document, tokenise and (optionally) sample windows.

    Raises:
        ConfigError, InputError: as :func:`split_documents` and :func:`tokenize_windows`.
    """
    train_docs, val_docs = split_documents(
        load_documents(config.source),
        validation_fraction=config.validation_fraction,
        seed=config.seed,
    )

    def windows(docs: list[Document]) -> torch.Tensor:
        return tokenize_windows(
            docs,
            tokenizer,
            seq_len=config.seq_len,
            max_context=max_context,
            separator=config.separator,
        )

    train = _sample_windows(windows(train_docs), config.max_train_windows, config.seed)
    if val_docs:
        val = windows(val_docs)
        val = _sample_windows(val, config.max_validation_windows, config.seed + 1)
    else:
        val = torch.empty(0, config.seq_len, dtype=torch.long)
    tok_fp = tokenizer_fingerprint(tokenizer)
    return LMCorpus(
        train=train,
        validation=val,
        train_documents=tuple(d.name for d in train_docs),
        validation_documents=tuple(d.name for d in val_docs),
        train_fingerprint=corpus_fingerprint(train, tok_fp),
        validation_fingerprint=corpus_fingerprint(val, tok_fp),
        tokenizer_fingerprint=tok_fp,
    )
