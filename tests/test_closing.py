"""The with-block rules of readers and writers (labelzip.closing)."""

from __future__ import annotations

import pytest

from labelzip.closing import ClosesOnExit, CommitOnExit


class _Reader(ClosesOnExit):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def close(self) -> None:
        self.calls.append("close")


class _Writer(CommitOnExit):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def close(self) -> int:
        self.calls.append("close")
        return 7

    def abort(self) -> None:
        self.calls.append("abort")


def test_a_reader_closes_however_its_block_ends() -> None:
    with _Reader() as ok:
        pass
    failed = _Reader()
    with pytest.raises(RuntimeError), failed:
        raise RuntimeError("boom")
    assert ok.calls == failed.calls == ["close"]


def test_a_writer_commits_on_success_and_aborts_on_an_exception() -> None:
    with _Writer() as ok:
        assert isinstance(ok, _Writer)  # __enter__ returns the writer itself
    failed = _Writer()
    with pytest.raises(RuntimeError), failed:
        raise RuntimeError("boom")
    assert (ok.calls, failed.calls) == (["close"], ["abort"])


def test_both_are_abstract_until_close_and_abort_exist() -> None:
    with pytest.raises(TypeError):
        ClosesOnExit()

    class _NoAbort(CommitOnExit):
        def close(self) -> None:
            pass

    with pytest.raises(TypeError):
        _NoAbort()
