"""Run one command as several processes started by ``torchrun``: join, agree, report.

``torchrun --nproc_per_node N -m labelzip compress ...`` (or
``python -m torch.distributed.run``) starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` set.
:func:`join` turns them into a torch process group: gloo on CPU; with a CUDA
device, nccl for the default group (each rank on ``cuda:LOCAL_RANK``) and a
gloo group beside it for the small control messages here, which are CPU
tensors. labelzip starts no processes itself.

Everything here exchanges fixed-size byte strings, never pickles, except
:func:`broadcast_object`: a fitted codec goes from rank 0 to the others with
``torch.distributed.broadcast_object_list``. That pickles between the
processes of one job, which trust each other as one program does; nothing read
from a file is ever unpickled.

Every collective has the group's timeout (``--dist-timeout``). A rank that
died, hangs, or fails is reported by rank and as a
:class:`~labelzip.errors.DistributedError`, never a hang or a traceback.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch

from labelzip.errors import ConfigError, DistributedError, LabelzipError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Ranks",
    "all_gather_bytes",
    "broadcast_object",
    "run_on_main",
    "check_alive",
    "join",
    "leave",
    "ranks_from_env",
    "refuse_several_ranks",
]

# Default of --dist-timeout: longer than a codec fit, which the other ranks wait for.
DEFAULT_TIMEOUT_S = 1800.0

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run.

    Attributes:
        rank: 0 .. world - 1; rank 0 fits the codec and writes the archive.
        world: number of processes (1 without torchrun).
        local_rank: index on this machine (its GPU with ``--device cuda``).
        timeout_s: how long any rank waits for the others.
        group: the process group of the control messages: None for the default
            group (a single process, or a gloo job), a separate gloo group when
            the default group is nccl.
        owned: whether :func:`join` created the process group (and
            :func:`leave` destroys it).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    group: Any = None
    owned: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world > 1

    @property
    def timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout_s)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={text!r} is not an integer"
        ) from None


def ranks_from_env() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's variables; (0, 1, 0) without them.

    Raises:
        ConfigError: values that are not integers or out of range, or a
            ``WORLD_SIZE`` > 1 without ``MASTER_ADDR`` (not started by torchrun).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local}"
        )
    if world > 1 and not os.environ.get("MASTER_ADDR"):
        raise ConfigError(
            f"WORLD_SIZE={world} but MASTER_ADDR is not set; start several processes "
            "with torchrun (torchrun --nproc_per_node N -m labelzip ...)"
        )
    return rank, world, local


def refuse_several_ranks(command: str) -> None:
    """Stop a command that does not split its work across ranks, when torchrun
    started several copies of it (they would all do the whole job, N times over).

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1.
    """
    world = ranks_from_env()[1]
    if world > 1:
        raise ConfigError(
            f"labelzip {command} does not split its work across processes yet; "
            f"torchrun started {world}: run it as one process (torchrun splits "
            "`labelzip compress`, `import` and `relabel`)"
        )


def join(
    device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes; the rank and its device.

    Without torchrun (``WORLD_SIZE`` unset or 1) this is a single process and
    nothing is initialised. A process group that is already initialised (a
    program that calls labelzip inside its own job) is used as it is. With a
    CUDA device each rank uses ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: a bad timeout or environment, or no ``torch.distributed``.
        DistributedError: the group could not be formed in time.
    """
    if not timeout_s > 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    rank, world, local = ranks_from_env()
    if world == 1:
        return Ranks(timeout_s=timeout_s), device
    dist = torch.distributed
    if not dist.is_available():
        raise ConfigError(
            "torchrun started several processes but this torch has no torch.distributed"
        )
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"rank {rank} has LOCAL_RANK {local} but this machine has "
                f"{torch.cuda.device_count()} GPU(s); start at most one process per GPU"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(
                f"rank {rank} of {world} could not join the process group: {_first_line(exc)}"
            ) from exc
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise DistributedError(
            f"the process group has rank {dist.get_rank()} of {dist.get_world_size()} "
            f"but the environment says rank {rank} of {world}"
        )
    group = (
        None
        if dist.get_backend() == "gloo"
        else dist.new_group(backend="gloo", timeout=timeout)
    )
    # a gloo job keeps no reference to its default group (None names it in every
    # collective), so leave() can tear it down while Python is still running
    ranks = Ranks(rank, world, local, timeout_s, group, owned)
    return ranks, device


def leave(ranks: Ranks) -> None:
    """Destroy the process groups if :func:`join` created them.

    The groups' native threads are stopped here, with the interpreter alive: a
    group still referenced at interpreter exit is torn down during the final
    garbage collection, where a gloo worker thread can abort the process after
    the run succeeded.
    """
    if not (ranks.owned and torch.distributed.is_initialized()):
        return
    if ranks.group is not None:
        torch.distributed.destroy_process_group(ranks.group)
    torch.distributed.destroy_process_group()
    gc.collect()  # groups held by reference cycles (tracebacks, closures) go now


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _collective(ranks: Ranks, what: str, call: Callable[[], T]) -> T:
    """Run a collective; a peer's failure or the timeout becomes a DistributedError."""
    try:
        return call()
    except RuntimeError as exc:  # gloo/nccl errors, DistBackendError included
        raise DistributedError(
            f"rank {ranks.rank} of {ranks.world}: {what} failed (another rank died or "
            f"did not answer within {ranks.timeout_s:g} s): {_first_line(exc)}"
        ) from exc


def check_alive(ranks: Ranks, what: str) -> None:
    """Wait until every rank arrives; name the ranks that died or hang.

    Uses gloo's monitored barrier: rank 0 learns which ranks did not arrive
    within the timeout and says so.

    Raises:
        DistributedError: naming the missing ranks (on rank 0).
    """
    if not ranks.is_distributed:
        return
    dist = torch.distributed
    _collective(
        ranks,
        what,
        lambda: dist.monitored_barrier(
            ranks.group, timeout=ranks.timeout, wait_all_ranks=True
        ),
    )


def all_gather_bytes(ranks: Ranks, data: bytes, size: int, what: str) -> list[bytes]:
    """Every rank's ``data`` (at most ``size`` bytes, zero-padded), in rank order."""
    if len(data) > size:
        raise ValueError(f"{len(data)} bytes do not fit a {size}-byte message")
    if not ranks.is_distributed:
        return [data.ljust(size, b"\0")]
    mine = torch.zeros(size, dtype=torch.uint8)
    if data:
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    parts = [torch.zeros(size, dtype=torch.uint8) for _ in range(ranks.world)]
    dist = torch.distributed
    _collective(ranks, what, lambda: dist.all_gather(parts, mine, group=ranks.group))
    return [bytes(p.numpy().tobytes()) for p in parts]


def broadcast_object(ranks: Ranks, obj: Any, what: str) -> Any:
    """Rank 0's ``obj`` on every rank (pickled between the job's own processes)."""
    if not ranks.is_distributed:
        return obj
    box = [obj if ranks.is_main else None]
    dist = torch.distributed
    _collective(
        ranks, what, lambda: dist.broadcast_object_list(box, src=0, group=ranks.group)
    )
    return box[0]


def run_on_main(ranks: Ranks, call: Callable[[], T], what: str) -> T:
    # ``what`` names the step for both the collective and the peers' error
    """``call()`` on rank 0, its result broadcast to every rank.

    A :class:`LabelzipError` on rank 0 is re-raised there and reaches the
    other ranks as a :class:`DistributedError` naming it, so no rank waits on a
    result that will never come.
    """
    result: T | None = None
    if ranks.is_main:
        try:
            result = call()
        except LabelzipError as exc:
            if ranks.is_distributed:
                broadcast_object(ranks, (None, str(exc)), what)
            raise
    sent, failure = broadcast_object(ranks, (result, ""), what)
    if sent is None:
        raise DistributedError(f"rank 0 failed before encoding ({what}): {failure}")
    return cast(T, sent)
