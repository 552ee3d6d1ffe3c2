"""Fixtures of the interop tests: running the ``labelzip`` CLI as a user would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labelzip.cli import main as cli_main

from .helpers import CliRun


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """``cli("import", store, "--format", "lpqld", ...)``: run labelzip, capture."""

    def run(*args: str | Path | int) -> CliRun:
        code = cli_main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err.strip())

    return run
