"""The by-document split, token windows, corpus fingerprints and build_corpus."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.errors import ConfigError, InputError
from labelzip.lm.corpus import (
    CorpusConfig,
    build_corpus,
    corpus_fingerprint,
    split_documents,
    tokenize_windows,
)
from labelzip.lm.documents import Document
from labelzip.lm.teacher import tokenizer_fingerprint

from .conftest import TINY_CONTEXT


def _docs(n: int) -> list[Document]:
    return [
        Document(name=f"d{i}", text=f"the text of document {i}. " * (i + 1))
        for i in range(n)
    ]


def test_split_is_deterministic_disjoint_and_ordered() -> None:
    docs = _docs(20)
    train, val = split_documents(docs, validation_fraction=0.2, seed=3)
    assert (train, val) == split_documents(docs, validation_fraction=0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert sorted(d.name for d in train + val) == sorted(d.name for d in docs)
    assert [docs.index(d) for d in val] == sorted(docs.index(d) for d in val)
    others = {
        tuple(d.name for d in split_documents(docs, validation_fraction=0.2, seed=s)[1])
        for s in range(4, 8)
    }
    assert len(others | {tuple(d.name for d in val)}) > 1  # the seed matters


def test_split_edge_cases() -> None:
    assert split_documents(_docs(1), validation_fraction=0.0) == (_docs(1), [])
    assert (
        len(split_documents(_docs(2), validation_fraction=0.01)[1]) == 1
    )  # at least one
    assert len(split_documents(_docs(3), validation_fraction=0.9)[0]) == 1  # one stays
    with pytest.raises(InputError, match="needs at least 2 documents, got 1"):
        split_documents(_docs(1), validation_fraction=0.1)
    with pytest.raises(
        ConfigError, match=r"validation_fraction must be in \[0, 1\), got 1.0"
    ):
        split_documents(_docs(3), validation_fraction=1.0)


def test_windows_are_the_token_stream_cut_into_rows(tiny_tokenizer: Any) -> None:
    docs = _docs(3)
    windows = tokenize_windows(
        docs, tiny_tokenizer, seq_len=16, max_context=TINY_CONTEXT
    )
    stream: list[int] = []
    for d in docs:
        stream += tiny_tokenizer(d.text, add_special_tokens=False)["input_ids"]
        stream.append(tiny_tokenizer.eos_token_id)
    assert windows.dtype == torch.long
    assert windows.shape == (len(stream) // 16, 16)
    assert windows.flatten().tolist() == stream[: windows.numel()]
    sep = tokenize_windows(docs, tiny_tokenizer, seq_len=16, separator="<|endoftext|>")
    assert int((sep == 0).sum()) == int((windows == tiny_tokenizer.eos_token_id).sum())


def test_window_errors(tiny_tokenizer: Any) -> None:
    docs = _docs(2)
    with pytest.raises(
        ConfigError, match="seq_len 65 exceeds the teacher's maximum context of 64"
    ):
        tokenize_windows(
            docs, tiny_tokenizer, seq_len=TINY_CONTEXT + 1, max_context=TINY_CONTEXT
        )
    with pytest.raises(ConfigError, match="seq_len must be at least 2"):
        tokenize_windows(docs, tiny_tokenizer, seq_len=1)
    with pytest.raises(InputError, match="shorter than one window of seq_len=10000"):
        tokenize_windows(docs, tiny_tokenizer, seq_len=10_000)
    with pytest.raises(
        ConfigError, match="separator token '<eos>' is not in the tokenizer"
    ):
        tokenize_windows(docs, tiny_tokenizer, seq_len=8, separator="<eos>")


def test_corpus_fingerprint_is_pinned_and_sensitive() -> None:
    windows = torch.arange(8, dtype=torch.long).view(2, 4)
    fp = corpus_fingerprint(windows, "tok")
    expected = hashlib.sha256(b"labelzip-corpus-v1\0")
    expected.update(json.dumps([[2, 4], "tok"]).encode())
    expected.update(b"".join(i.to_bytes(8, "little") for i in range(8)))
    assert fp == expected.hexdigest()
    assert corpus_fingerprint(windows.view(4, 2), "tok") != fp
    assert corpus_fingerprint(windows, "other") != fp
    changed = windows.clone()
    changed[1, 3] = 99
    assert corpus_fingerprint(changed, "tok") != fp
    with pytest.raises(InputError, match="windows must be a \\(N, T\\) int64 tensor"):
        corpus_fingerprint(windows.float(), "tok")


def test_build_corpus_is_deterministic(tmp_path: Path, tiny_tokenizer: Any) -> None:
    for i, d in enumerate(_docs(10)):
        (tmp_path / f"{i:02d}.txt").write_text(d.text)
    config = CorpusConfig(
        source=[str(tmp_path)],
        seq_len=8,
        validation_fraction=0.3,
        seed=1,
        max_train_windows=5,
    )
    first = build_corpus(config, tiny_tokenizer, max_context=TINY_CONTEXT)
    second = build_corpus(config, tiny_tokenizer, max_context=TINY_CONTEXT)
    assert first.train_fingerprint == second.train_fingerprint
    assert torch.equal(first.train, second.train) and torch.equal(
        first.validation, second.validation
    )
    assert first.train.shape == (5, 8) and first.validation.shape[1] == 8
    assert len(first.validation_documents) == 3
    assert not set(first.train_documents) & set(first.validation_documents)
    assert first.tokenizer_fingerprint == tokenizer_fingerprint(tiny_tokenizer)
    assert first.validation_fingerprint == corpus_fingerprint(
        first.validation, first.tokenizer_fingerprint
    )
    reseeded = build_corpus(config.model_copy(update={"seed": 2}), tiny_tokenizer)
    assert reseeded.train_fingerprint != first.train_fingerprint
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        CorpusConfig(seq_len=1)
