"""The ``with`` rules of objects that hold a file until closed.

Readers release their descriptors whenever their block ends
(:class:`ClosesOnExit`); writers commit only a block that ends normally and
discard the partial output of one that raised (:class:`CommitOnExit`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["ClosesOnExit", "CommitOnExit"]


class ClosesOnExit(ABC):
    """Usable in a ``with`` block, which calls :meth:`close` however it ends."""

    @abstractmethod
    def close(self) -> object:
        """Release what the object holds; a writer may return a summary."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CommitOnExit(ClosesOnExit):
    """A writer whose ``with`` block commits on success and discards on an exception.

    Leaving the block normally calls :meth:`close` (complete and move the file
    into place); leaving it with an exception calls :meth:`abort`, so a failed
    run never leaves a half-written output behind.
    """

    @abstractmethod
    def abort(self) -> None:
        """Drop everything written; the destination stays as it was."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
