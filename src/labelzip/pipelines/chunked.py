"""One archive encoded in chunks: resumable, and split across torchrun ranks.

``compress``, ``import`` and ``relabel`` share these steps; each describes its
own input as a :class:`ChunkJob` (what the chunks are, how to fit the codec,
how to encode a range of chunks, the archive writer) and :func:`run_chunked`
does the rest. One process or N (``torchrun``) run the same steps:

1. every rank checks that all ranks see the same input (the job's
   fingerprint) and the same settings;
2. rank 0 fits the codec (exactly as a single process: same sample, same
   seed) and sends it to the others;
3. the archive's chunks (``chunk_size`` stored labels each) are split into
   contiguous ranges, one per rank (:func:`rank_chunks`); each rank encodes its
   range and appends the chunks to its partial file in the output folder
   (:mod:`labelzip.pipelines.partial`);
4. rank 0 waits for all ranks, links every chunk, in chunk order, into the
   job's :class:`~labelzip.archive.ArchiveWriter` and writes the archive
   atomically. The header, the model and every chunk are those of a
   single-process run, so the archive is byte-identical to it.

The ranks share nothing but the output folder: the chunks travel through the
partial files there, the codec and the status messages through the process
group.

Resuming (``--resume``): a run that was stopped (killed, interrupted, or a rank
that died or hangs) keeps its partial files; a rerun with ``--resume`` fits the
codec again (same seed, so the same codec: its digest must equal the one
recorded), keeps each rank's complete, intact chunks and encodes the rest.
Without ``--resume``, partial files of an earlier run are removed with a
notice. A run that fails with an error a rank reports (a full disk, a missing
partial file at merge, ranks that disagree) removes the partial files of the
run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import torch

from labelzip.accounting import StorageAccount
from labelzip.archive import ArchiveWriter
from labelzip.archive.chunks import EncodedChunk
from labelzip.codecs.base import Codec
from labelzip.distributed import (
    Ranks,
    all_gather_bytes,
    broadcast_object,
    check_alive,
    run_on_main,
)
from labelzip.errors import (
    DistributedError,
    InputError,
    LabelzipError,
    ReportedError,
)
from labelzip.pipelines.partial import (
    PartialFile,
    PartialMismatchError,
    check_header,
    find_partials,
    partial_path,
    read_partial,
    remove_partials,
)

__all__ = [
    "ChunkJob",
    "ChunkSink",
    "OnChunk",
    "Report",
    "codec_digest",
    "discard_partials",
    "json_digest",
    "rank_chunks",
    "run_chunked",
    "sigterm_as_interrupt",
]

logger = logging.getLogger(__name__)

_STATUS_BYTES = 1024  # one rank's status message: a flag and a UTF-8 line

ChunkSink = Callable[[EncodedChunk], None]
OnChunk = Callable[[int], None]
Report = Callable[[LabelzipError], None]


class ChunkJob(Protocol):
    """One archive to encode in chunks (what :func:`run_chunked` needs of it).

    Attributes:
        out: the archive to write (checked by the caller).
        chunk_size: stored labels per chunk.
        num_stored: labels the archive stores (chunk ``i`` holds stored labels
            ``[i * chunk_size, ...)``).
        fingerprint: 64 hex digits naming the input; every rank must see the
            same (it also names the partial files).
        settings_digest: 64 hex digits of everything else that decides the
            archive's bytes; every rank must have the same.
    """

    out: Path
    chunk_size: int
    num_stored: int
    fingerprint: str
    settings_digest: str

    def fit(self) -> Codec:
        """The fitted codec (called on rank 0 only)."""
        ...

    def encode(self, codec: Codec, chunks: range, sink: ChunkSink) -> None:
        """Encode chunks ``chunks`` (increasing, contiguous) into ``sink``, in order."""
        ...

    def writer(self, codec: Codec) -> ArchiveWriter:
        """Rank 0, after every rank encoded: the writer the chunks are linked into."""
        ...

    def release(self) -> None:
        """Drop what the job holds (called on every rank when the run ends)."""
        ...


def json_digest(doc: Any) -> str:
    """sha256 of a JSON document (keys sorted; other values by ``str``)."""
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def codec_digest(codec: Codec) -> str:
    """sha256 of a fitted codec's stored config and model tensors (what the archive
    records of it): equal for two fits that give the same archive header."""
    digest = hashlib.sha256(json.dumps(codec.to_config(), sort_keys=True).encode())
    for name, tensor in sorted(codec.model_tensors().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{list(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rank_chunks(num_chunks: int, rank: int, world: int) -> range:
    """The contiguous chunk range of ``rank``: ``num_chunks`` split as evenly as possible."""
    return range(num_chunks * rank // world, num_chunks * (rank + 1) // world)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, torchrun stopping a job) raises
    KeyboardInterrupt while the block runs, so temporary files are removed and
    partial files closed as on Ctrl-C, and kept for ``--resume``."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _agree(ranks: Ranks, fingerprint: str, settings: str) -> None:
    """Refuse ranks that see other input or settings than rank 0."""
    mine = bytes.fromhex(fingerprint) + bytes.fromhex(settings)
    seen = all_gather_bytes(ranks, mine, len(mine), "comparing the input of all ranks")
    for what, part in (("input", slice(0, 32)), ("settings", slice(32, 64))):
        first = seen[0][part]
        other = [r for r, got in enumerate(seen) if got[part] != first]
        if other:
            raise DistributedError(
                f"ranks disagree on the {what}: rank {other[0]} sees {what} "
                f"{seen[other[0]][part].hex()[:8]} but rank 0 sees {first.hex()[:8]}; "
                "every rank must read the same input with the same options"
            )


def discard_partials(out: Path) -> None:
    """Remove the partial files of earlier runs of ``out`` (one notice line when any
    existed): a run without ``--resume`` starts over, also one that writes the
    archive without partial files (the one-process ``import`` and ``relabel``)."""
    remove_partials(list(find_partials(out)), out, "not resumed: no --resume")


def _prepare_partials(
    out: Path, fingerprint: str, settings: str, world: int, resume: bool
) -> None:
    """Rank 0, before any rank writes: drop partial files a resumed run cannot use
    (or all of them without ``--resume``), refuse a resume of another input (it
    would drop that run's work), with another world size or with other settings
    (before the fit, which may be long; the codec is checked after it)."""
    if not resume:
        discard_partials(out)
        return
    found = find_partials(out)
    mine = fingerprint[:8]
    same_input = {p: w for p, (fp, _, w) in found.items() if fp == mine}
    if found and not same_input:
        other = min(found)
        raise PartialMismatchError(
            f"--resume: the partial run in {other.name} was made from other input "
            f"({found[other][0]}, now {mine}); rerun with its input, or drop "
            "--resume to start over"
        )
    worlds = sorted(set(same_input.values()))
    if worlds and world not in worlds:
        raise InputError(
            f"--resume: the partial run of {out.name} used {worlds[0]} process(es) and "
            f"this run has {world}; resume with the same number of processes, or drop "
            "--resume to start over"
        )
    stale = [p for p, (fp, _, w) in found.items() if fp != mine or w != world]
    remove_partials(stale, out, "made from other input")
    for path in sorted(same_input):
        header = _readable_header(path)
        if header is not None:
            check_header(path, header, {**header, "settings": settings})
    if not same_input:
        logger.warning(
            "labelzip: nothing to resume for %s; starting from the first chunk", out
        )


def _readable_header(path: Path) -> dict[str, Any] | None:
    """A partial file's header, or None when it cannot be read (the rank that
    resumes from it reports that)."""
    try:
        return read_partial(path)[0]
    except InputError:
        return None


# Status flags of a rank: done, failed, or failed in a way that keeps the
# partial files (a --resume that does not match them).
_OK, _FAILED, _FAILED_KEEP = b"o", b"f", b"k"


def _status_line(failure: LabelzipError | None) -> bytes:
    if failure is None:
        return _OK
    flag = _FAILED_KEEP if isinstance(failure, PartialMismatchError) else _FAILED
    return flag + str(failure).encode("utf-8")[: _STATUS_BYTES - 1]


def _parse_status(raw: bytes) -> tuple[bytes, str]:
    return raw[:1], raw[1:].rstrip(b"\0").decode("utf-8", "replace")


class _Run:
    """The state of one rank's chunked encode (see the module docstring)."""

    def __init__(self, job: ChunkJob, ranks: Ranks) -> None:
        self.job, self.ranks = job, ranks
        self.out = job.out
        self.num_chunks = math.ceil(job.num_stored / job.chunk_size)

    def path(self, rank: int) -> Path:
        return partial_path(self.out, self.job.fingerprint, rank, self.ranks.world)

    def header(self, rank: int, codec: str) -> dict[str, Any]:
        chunks = rank_chunks(self.num_chunks, rank, self.ranks.world)
        return {
            "format": 1,
            "input": self.job.fingerprint,
            "settings": self.job.settings_digest,
            "codec": codec,
            "rank": rank,
            "world": self.ranks.world,
            "chunks": [chunks.start, chunks.stop],
            "chunk_size": self.job.chunk_size,
        }

    def labels_of(self, index: int) -> int:
        size = self.job.chunk_size
        return min(size, self.job.num_stored - index * size)

    def unfinished(self) -> str:
        """Rank 0 after a failed wait: the ranks whose partial files are not complete
        (``rank 1 (2 of 5 chunks)``), judged from the files in the shared folder."""
        late = []
        for rank, path in enumerate(self.all_paths()):
            want = len(rank_chunks(self.num_chunks, rank, self.ranks.world))
            try:
                have = len(read_partial(path)[1])
            except InputError:
                have = 0
            if have < want:
                late.append(f"rank {rank} ({have} of {want} chunks)")
        return ", ".join(late)

    def all_paths(self) -> list[Path]:
        return [self.path(r) for r in range(self.ranks.world)]

    # -- steps -----------------------------------------------------------------------
    def fit(self, resume: bool) -> Codec:
        """Rank 0 fits; every rank returns the codec (or raises rank 0's failure)."""

        def prepare_and_fit() -> Codec:
            job = self.job
            _prepare_partials(
                self.out, job.fingerprint, job.settings_digest, self.ranks.world, resume
            )
            return self.job.fit()

        return run_on_main(self.ranks, prepare_and_fit, "fitting the codec")

    def encode(self, codec: Codec, resume: bool, on_chunk: OnChunk) -> None:
        """Encode this rank's chunks into its partial file (after those it has)."""
        rank = self.ranks.rank
        mine = rank_chunks(self.num_chunks, rank, self.ranks.world)
        header = self.header(rank, codec_digest(codec))
        partial = PartialFile(self.path(rank), header, rank=rank, resume=resume)

        def sink(chunk: EncodedChunk) -> None:
            partial.append(chunk)
            on_chunk(chunk.num_labels)

        try:
            self.job.encode(codec, mine[partial.num_chunks :], sink)
        finally:
            partial.close()

    def merge(self, codec: Codec) -> StorageAccount:
        """Rank 0: every rank's chunks, in order, into one archive."""
        expected = codec_digest(codec)
        writer = self.job.writer(codec)
        try:
            for rank, path in enumerate(self.all_paths()):
                self._link(writer, rank, path, expected)
            return writer.close()
        except BaseException:
            writer.abort()
            raise

    def _link(self, writer: ArchiveWriter, rank: int, path: Path, codec: str) -> None:
        if not path.exists():
            raise InputError(
                f"the partial file of rank {rank} is missing at merge: {str(path)!r}; "
                "every rank must write into the same output folder (on several "
                "machines, a folder they all share)"
            )
        header, records = read_partial(path)
        if header != self.header(rank, codec):
            raise InputError(
                f"{path.name} holds chunks of another run (its header differs); "
                "run again without --resume"
            )
        mine = rank_chunks(self.num_chunks, rank, self.ranks.world)
        if len(records) != len(mine):
            raise InputError(
                f"{path.name} holds {len(records)} of the {len(mine)} chunks of rank "
                f"{rank}; run again (with --resume to keep them)"
            )
        for index, record in zip(mine, records, strict=True):
            if record.num_labels != self.labels_of(index):
                raise InputError(
                    f"{path.name}: chunk {index} holds {record.num_labels} labels, "
                    f"expected {self.labels_of(index)}"
                )
            writer.link_chunk(
                path, record.offset, record.num_labels, record.nbytes, record.sha256
            )


def run_chunked(
    job: ChunkJob,
    *,
    ranks: Ranks | None = None,
    resume: bool = False,
    on_chunk: OnChunk | None = None,
    report: Report | None = None,
) -> tuple[Codec, StorageAccount | None]:
    """Fit (rank 0) and encode ``job`` into its archive, chunk by chunk.

    Args:
        job: the archive's input, codec fit, chunk encoder and writer.
        ranks: this process's rank (default: a single process).
        resume: continue from the partial files of a killed run.
        on_chunk: called with the labels of each chunk this rank encodes.
        report: prints a failure's one-line message. When one rank fails, every
            rank reports its error while all are still alive and then raises
            :class:`ReportedError`: torchrun stops the other ranks as soon as
            the first exits, which could cut their lines.

    Returns:
        The codec and, on rank 0, the archive's storage account (None on the
        other ranks).

    Raises:
        DistributedError: ranks that disagree on the input, or another rank
            that failed, died or hung (naming it).
        InputError: a full disk, a missing partial file, a resume that does
            not match; the partial files of the run are removed.
    """
    ranks = ranks or Ranks()
    try:
        return _run(_Run(job, ranks), resume, on_chunk, report)
    finally:
        job.release()


def _run(
    run: _Run, resume: bool, on_chunk: OnChunk | None, report: Report | None
) -> tuple[Codec, StorageAccount | None]:
    ranks = run.ranks
    _agree(ranks, run.job.fingerprint, run.job.settings_digest)
    codec = run.fit(resume)
    failure: LabelzipError | None = None
    try:
        run.encode(codec, resume, on_chunk or (lambda n: None))
    except LabelzipError as exc:
        if not ranks.is_distributed:
            if not isinstance(exc, PartialMismatchError):
                _remove(run, everyone=True)
            raise
        failure = exc
    try:
        check_alive(ranks, "waiting for every rank to finish encoding")
        line = _status_line(failure)
        seen = all_gather_bytes(
            ranks, line, _STATUS_BYTES, "collecting the ranks' status"
        )
    except DistributedError as exc:
        # A rank that vanished was killed, crashed or hangs: the chunks done are
        # kept for --resume (preempting a job stops its ranks one by one).
        missing = run.unfinished() if ranks.is_main else ""
        if missing:
            raise DistributedError(
                f"{missing} died or stopped answering while encoding (waited up to "
                f"{ranks.timeout_s:g} s, --dist-timeout); the chunks done are kept: "
                "rerun with --resume to continue, or without it to start over"
            ) from exc
        raise
    status = [_parse_status(raw) for raw in seen]
    failed = [(r, msg) for r, (flag, msg) in enumerate(status) if flag != _OK]
    if failed:
        if all(flag != _FAILED_KEEP for flag, _ in status):
            _remove(run, everyone=ranks.is_main)
        rank, message = failed[0]
        error = (
            failure
            if failure is not None
            else DistributedError(f"rank {rank} of {ranks.world} failed: {message}")
        )
        if report is None:
            raise error
        report(error)
        with contextlib.suppress(DistributedError):  # a rank gone since: no wait
            check_alive(ranks, "reporting the failure")
        raise ReportedError(str(error)) from error
    account = None
    merge_error = ""
    if ranks.is_main:
        try:
            account = run.merge(codec)
        except LabelzipError as exc:
            merge_error = str(exc)
            if not ranks.is_distributed:
                raise
            broadcast_object(ranks, merge_error, "reporting the merge")
            raise
        finally:
            _remove(run, everyone=True)
    merge_error = broadcast_object(ranks, merge_error, "reporting the merge")
    if merge_error:
        _remove(run, everyone=False)  # in a folder rank 0 does not see, if any
        raise DistributedError(f"rank 0 failed to write the archive: {merge_error}")
    return codec, account


def _remove(run: _Run, *, everyone: bool) -> None:
    """Delete this rank's partial file, or (rank 0) those of every rank."""
    paths = run.all_paths() if everyone else [run.path(run.ranks.rank)]
    for path in paths:
        path.unlink(missing_ok=True)
