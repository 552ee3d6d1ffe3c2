"""Shared checks of the interop tests: element-by-element store equality, import
errors that must name the file and leave no archive behind, CLI results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labelzip.errors import InputError
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import import_store
from labelzip.interop.safe_load import load_torch_file

__all__ = ["CliRun", "assert_same_store", "expect_import_error", "files_of", "same"]


@dataclass(frozen=True)
class CliRun:
    """Exit code and captured output of one ``labelzip`` command."""

    code: int
    out: str
    err: str

    def refused(self, text: str) -> bool:
        """Exit 2 with a one-line error containing ``text``."""
        return self.code == 2 and "\n" not in self.err and text in self.err


def same(a: Any, b: Any) -> bool:
    """Equal element by element, with the same Python / tensor / numpy types."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a == b
    return bool(a == b)


def files_of(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
    )


def assert_same_store(src: Path, out: Path) -> None:
    """Same files and folders; ``.tar`` batch files equal element by element (and
    of the same size: nothing extra saved), every other file byte for byte."""
    assert files_of(src) == files_of(out)
    assert sorted(p.name for p in src.rglob("*") if p.is_dir()) == sorted(
        p.name for p in out.rglob("*") if p.is_dir()
    )
    for name in files_of(src):
        if not name.endswith(".tar"):
            assert (src / name).read_bytes() == (out / name).read_bytes(), name
        else:
            a, b = load_torch_file(src / name), load_torch_file(out / name)
            assert same(a, b), name
            size_a, size_b = (src / name).stat().st_size, (out / name).stat().st_size
            assert size_a == size_b, name


def expect_import_error(
    store: Path, fmt: str, match: str, options: ImportOptions | None = None
) -> None:
    """Importing ``store`` fails with an InputError matching ``match`` and
    writes no archive."""
    archive = store.parent / f"{store.name}-refused.lz"
    with pytest.raises(InputError, match=match):
        import_store(store, fmt, archive, options=options or ImportOptions())
    assert not archive.exists()
