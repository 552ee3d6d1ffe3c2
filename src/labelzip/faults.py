"""Injected faults, for the tests of killed, failing and hung encode runs.

The kill, full-disk and dead-rank tests run ``labelzip compress`` in a
subprocess (under ``torchrun`` for several ranks), where monkeypatching cannot
reach. They set ``LABELZIP_TEST_FAULT=ACTION@RANK:CHUNKS``, and the resumable
encode calls :func:`chunk_written` after it has stored each chunk; once rank
``RANK`` has stored ``CHUNKS`` chunks in this run, ACTION happens:

- ``kill``: SIGKILL the process (a crash, the OOM killer, ``kill -9``);
- ``term``: SIGTERM the process (a scheduler's preemption, torchrun's stop);
- ``enospc``: raise ``OSError(ENOSPC)`` as a full disk would on the next write;
- ``exit``: ``os._exit(1)``, a rank that dies without any cleanup;
- ``hang``: sleep for an hour, a rank that stops answering.

Unset (always, outside tests), the hook does nothing.
"""

from __future__ import annotations

import errno
import os
import signal
import time

__all__ = ["FAULT_ENV", "chunk_written"]

FAULT_ENV = "LABELZIP_TEST_FAULT"
_ACTIONS = ("kill", "term", "enospc", "exit", "hang")


def chunk_written(rank: int, done: int) -> None:
    """Called after rank ``rank`` stored its ``done``-th chunk of this run."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    action, _, rest = spec.partition("@")
    where, _, count = rest.partition(":")
    if action not in _ACTIONS or not where.isdigit() or not count.isdigit():
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected ACTION@RANK:CHUNKS")
    if int(where) != rank or int(count) != done:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    elif action == "exit":
        os._exit(1)
    else:
        time.sleep(3600)
