"""Parsed chunks spilled to memory-mapped files: row-addressable labels larger than memory.

A chunk's payload is entropy coded, so one label cannot be read without
parsing its whole chunk (4096 labels by default). A reader keeps parsed chunks
in a byte-bounded cache; a shuffle over more chunks than that cache holds (a
plain ``shuffle=True`` over millions of labels) parses a whole chunk for almost
every label it uses. A :class:`SpillStore` parses the chunks once, in file
order, and writes each part of the parsed rows (:class:`ParsedBlock`) into its
own file, mapped with ``torch.from_file``. Any label is then one row of each
file: a batch is a gather from the page cache plus the codec's expensive step,
whatever the archive's size, and the memory it takes is the kernel's page
cache (reclaimable, and shared by every process that maps the same files),
not the reader's heap.

The files live in a private directory ``labelzip-parsed-<host>-<pid>-<random>``
under the directory the caller names. The process that built it owns it and
removes it when the store is closed or garbage collected, or the process exits;
a store opened from a pickled reader (a DataLoader worker) maps the files
read-only and never removes them. A later build removes directories left by
processes of its own host that no longer run (a killed owner); another host's
directories on a shared filesystem are never touched, since its pids mean
nothing here. Space for every file is reserved before anything is written
(``posix_fallocate``), so a full disk is a clear error up front, not a bus error
in the middle of writing a mapped page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from labelzip.codecs.base import ParsedBlock
from labelzip.errors import InputError
from labelzip.outputs import host_tag, pid_alive

__all__ = ["SPILL_PREFIX", "PartSpec", "SpillStore", "remove_stale_spills"]

# Directory names of spill stores: the prefix, then "<host>-<pid>-<random>".
SPILL_PREFIX = "labelzip-parsed-"
_OWNER_RE = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)-[A-Za-z0-9_]+")
_MANIFEST = "manifest.json"
# Space left free on the spill directory's filesystem after reserving a store.
SPILL_FREE_MARGIN = 1 << 30


@dataclass(frozen=True)
class PartSpec:
    """One parsed part: its name, dtype and the shape of one row."""

    name: str
    dtype: torch.dtype
    row_shape: tuple[int, ...]

    @property
    def row_numel(self) -> int:
        size = 1
        for dim in self.row_shape:
            size *= dim
        return size

    @property
    def row_bytes(self) -> int:
        return self.row_numel * torch.empty((), dtype=self.dtype).element_size()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "row_shape": list(self.row_shape),
        }

    @staticmethod
    def from_json(data: dict[str, object]) -> PartSpec:
        dtype = getattr(torch, str(data["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise InputError(f"spill store: unknown dtype {data['dtype']!r}")
        shape = data["row_shape"]
        if not isinstance(shape, list):
            raise InputError("spill store: row_shape must be a list")
        return PartSpec(str(data["name"]), dtype, tuple(int(d) for d in shape))


def specs_of(block: ParsedBlock) -> list[PartSpec]:
    """The part specs of a parsed block (its parts' dtypes and row shapes)."""
    return [
        PartSpec(name, part.dtype, tuple(part.shape[1:]))
        for name, part in block.parts.items()
    ]


class SpillStore:
    """Parsed rows of an archive's chunks in one memory-mapped file per part.

    Build one with :meth:`build` (the owner), or map an existing one with
    :meth:`open` (read-only, for other processes). :attr:`block` is a
    :class:`ParsedBlock` whose parts are views of the mapped files, so
    ``store.block.take(rows)`` gathers rows from the page cache.
    """

    def __init__(
        self,
        directory: Path,
        fingerprint: str,
        num_rows: int,
        specs: list[PartSpec],
        *,
        writable: bool,
        owner_pid: int | None,
    ) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.num_rows = num_rows
        self.specs = specs
        self.owner_pid = owner_pid
        parts: dict[str, torch.Tensor] = {}
        for spec in specs:
            path = directory / f"{spec.name}.bin"
            flat = torch.from_file(
                str(path),
                shared=writable,
                size=num_rows * spec.row_numel,
                dtype=spec.dtype,
            )
            parts[spec.name] = flat.view(num_rows, *spec.row_shape)
        self.block = ParsedBlock(num_rows, parts)
        # Whether other processes can map the files (see build's ``shared``).
        self.shared = True
        # The owner's directory goes when the store is collected or at exit.
        self._finalizer = weakref.finalize(
            self, _remove_owned, str(directory), owner_pid
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the mapped files."""
        return self.num_rows * sum(spec.row_bytes for spec in self.specs)

    @classmethod
    def build(
        cls,
        parent: str | os.PathLike[str],
        fingerprint: str,
        num_rows: int,
        first: ParsedBlock,
        blocks: Iterable[ParsedBlock],
        *,
        shared: bool = True,
    ) -> SpillStore:
        """Write ``first`` and then ``blocks`` (parsed chunks, in order) into a new store.

        ``num_rows`` is the rows they hold together; every block must have
        ``first``'s parts, dtypes and row shapes. On any error the new
        directory is removed before the error propagates. With ``shared``
        False the files are unlinked as soon as they are mapped: no other
        process can open them (:attr:`shared` is False), and the kernel frees
        their space when this process ends, however it ends.

        Raises:
            InputError: ``parent`` is not a writable directory, or its
                filesystem lacks the space (plus a 1 GiB margin), or a block
                does not match ``first``.
        """
        parent_path = Path(parent)
        if not parent_path.is_dir():
            raise InputError(
                f"spill directory {str(parent_path)!r} does not exist: create it or "
                "pass another spill_dir"
            )
        specs = specs_of(first)
        need = num_rows * sum(spec.row_bytes for spec in specs)
        free = shutil.disk_usage(parent_path).free
        if need + SPILL_FREE_MARGIN > free:
            raise InputError(
                f"spill directory {str(parent_path)!r} has {free >> 20} MiB free; the "
                f"parsed labels need {need >> 20} MiB plus a 1 GiB margin: pass a "
                "spill_dir on a larger disk, or read in epoch windows "
                "(WindowShuffleSampler)"
            )
        remove_stale_spills(parent_path)
        try:
            directory = Path(
                tempfile.mkdtemp(
                    prefix=f"{SPILL_PREFIX}{host_tag()}-{os.getpid()}-",
                    dir=parent_path,
                )
            )
        except OSError as err:
            raise InputError(
                f"cannot create a spill store in {str(parent_path)!r} ({err.strerror}): "
                "pass a writable spill_dir"
            ) from None
        try:
            for spec in specs:
                _reserve(directory / f"{spec.name}.bin", num_rows * spec.row_bytes)
            store = cls(
                directory,
                fingerprint,
                num_rows,
                specs,
                writable=True,
                owner_pid=os.getpid(),
            )
            row = 0
            for block in _chain(first, blocks):
                if specs_of(block) != specs or row + block.num_labels > num_rows:
                    raise InputError(
                        "spill store: a parsed chunk does not match the first one's "
                        "parts, or the chunks hold more rows than announced"
                    )
                for name, part in block.parts.items():
                    store.block.parts[name][row : row + block.num_labels] = part.cpu()
                row += block.num_labels
            if row != num_rows:
                raise InputError(
                    f"spill store: the chunks held {row} rows, expected {num_rows}"
                )
            manifest = {
                "fingerprint": fingerprint,
                "num_rows": num_rows,
                "parts": [spec.to_json() for spec in specs],
            }
            (directory / _MANIFEST).write_text(json.dumps(manifest))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if not shared:
            shutil.rmtree(directory, ignore_errors=True)  # the mappings stay valid
            store.shared = False
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike[str], fingerprint: str) -> SpillStore:
        """Map an existing store read-only (copy-on-write); never removes it.

        Raises:
            InputError: the directory, its manifest or a file is missing or
                does not match, or it was built from another archive.
        """
        path = Path(directory)
        try:
            manifest = json.loads((path / _MANIFEST).read_text())
            specs = [PartSpec.from_json(item) for item in manifest["parts"]]
            num_rows = int(manifest["num_rows"])
            found = manifest["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"spill store {str(path)!r} is unreadable: {err}"
            ) from None
        if found != fingerprint:
            raise InputError(f"spill store {str(path)!r} belongs to another archive")
        for spec in specs:
            file = path / f"{spec.name}.bin"
            if not file.is_file() or file.stat().st_size != num_rows * spec.row_bytes:
                raise InputError(
                    f"spill store {str(path)!r}: {file.name} is incomplete"
                )
        return cls(path, fingerprint, num_rows, specs, writable=False, owner_pid=None)

    def close(self) -> None:
        """Drop the mapping; the owner also removes the directory."""
        self.block = ParsedBlock(0, {})
        self._finalizer()


def remove_stale_spills(parent: str | os.PathLike[str]) -> list[Path]:
    """Remove spill directories under ``parent`` whose owner process is gone.

    Returns the directories removed. Only directories of this host whose owner
    pid no longer runs go; another host's, a running owner's, or a name that
    does not parse is left alone.
    """
    removed: list[Path] = []
    try:
        entries = sorted(Path(parent).iterdir())
    except OSError:
        return removed
    here = host_tag()
    for entry in entries:
        if not entry.name.startswith(SPILL_PREFIX) or not entry.is_dir():
            continue
        owner = _OWNER_RE.fullmatch(entry.name[len(SPILL_PREFIX) :])
        if owner is None or owner["host"] != here or pid_alive(int(owner["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _reserve(path: Path, nbytes: int) -> None:
    """Create ``path`` with ``nbytes`` of disk space reserved (ENOSPC now, not later)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if nbytes:
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as err:
                raise InputError(
                    f"cannot reserve {nbytes >> 20} MiB for the spill store in "
                    f"{str(path.parent.parent)!r} ({err.strerror}): pass a spill_dir "
                    "with more free space"
                ) from None
    finally:
        os.close(fd)


def _chain(first: ParsedBlock, rest: Iterable[ParsedBlock]) -> Iterable[ParsedBlock]:
    yield first
    yield from rest


def _remove_owned(directory: str, owner_pid: int | None) -> None:
    """Remove ``directory`` if this process built it (never in a forked child)."""
    if owner_pid is not None and owner_pid == os.getpid():
        shutil.rmtree(directory, ignore_errors=True)
