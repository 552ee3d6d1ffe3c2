"""The one policy for every file labelzip writes: safe targets, atomic writes, no leftovers.

- An output is checked before any work (:func:`check_output_path`): its folder
  must exist and accept new files, an existing output must be a regular file (a
  device, FIFO, socket or folder is refused, never replaced), and it must not be
  one of the command's inputs (compared by device and inode, so symlinks and hard
  links to an input are caught too).
- A symlink as output is followed: the file it points to is replaced atomically
  and the link itself stays a link (what a shell's ``>`` does, minus the
  half-written file).
- Writes are atomic (:func:`atomic_path`): data goes to a temporary file beside
  the real target, renamed over it only once complete. Any ``OSError`` while
  writing (no space left, read-only or pseudo filesystem, permission) becomes one
  :class:`~labelzip.errors.InputError` line and the temporary file is removed.
- Temporary files and folders carry a recognisable name,
  ``.<name>.labelzip-tmp-<host>-<pid>-<random>``. A run killed with ``SIGKILL``
  cannot remove its own; the next write to the same destination removes those of
  writers that are gone (same host and the pid no longer runs, or another host
  and nothing in it changed for :data:`STALE_AFTER_S`) and logs one warning line naming them.
  A writer that is still running keeps its temporary file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labelzip.errors import InputError

__all__ = [
    "STALE_AFTER_S",
    "TEMP_TAG",
    "atomic_folder",
    "atomic_path",
    "check_output_folder",
    "check_output_path",
    "host_tag",
    "pid_alive",
    "remove_stale_temps",
    "resolve_output",
    "scratch_folder",
    "temp_sibling",
    "write_text",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

TEMP_TAG = ".labelzip-tmp-"
# Temporary files of another host (a shared filesystem: its pids mean nothing
# here) and of labelzip versions before this naming count as stale once nothing
# in them changed for this long; a live writer touches its files far more often.
STALE_AFTER_S = 24 * 3600.0
# Leaves room for the tag, host, pid and random part under NAME_MAX (255).
_MAX_STEM = 150
_TEMP_RE = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)-(?P<rand>[0-9a-f]{8})")
# tempfile.mkstemp names of labelzip versions before the tag: ".<name>.<8 chars>.tmp".
_LEGACY_RE = re.compile(r"[a-z0-9_]{8}\.tmp")


def host_tag() -> str:
    """This host's name reduced to ``[A-Za-z0-9_]`` (at most 40 characters).

    Temporary names carry it beside the writer's pid, so that a process judges
    liveness only of pids of its own host (a shared filesystem's other hosts
    have pids that mean nothing here).
    """
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def _prefix(dest: Path) -> str:
    return f".{dest.name[:_MAX_STEM]}{TEMP_TAG}"


def temp_sibling(dest: PathLike) -> Path:
    """A fresh temporary name beside ``dest``: ``.<name>.labelzip-tmp-<host>-<pid>-<hex>``."""
    dest = Path(dest)
    token = secrets.token_hex(4)
    return dest.parent / f"{_prefix(dest)}{host_tag()}-{os.getpid()}-{token}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (True where that cannot be told)."""
    if os.name != "posix":  # os.kill(pid, 0) is no liveness probe elsewhere
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs under another user
        return True
    return True


def _last_change(entry: os.DirEntry[str]) -> float:
    """mtime of a file, or the newest mtime anywhere inside a folder."""
    newest = entry.stat(follow_symlinks=False).st_mtime
    if entry.is_dir(follow_symlinks=False):
        for root, _, files in os.walk(entry.path):
            for name in (".", *files):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _is_stale(entry: os.DirEntry[str], prefix: str, legacy: str) -> bool:
    """Whether ``entry`` is a temporary file or folder of a writer that is gone."""
    if entry.name.startswith(prefix):
        match = _TEMP_RE.fullmatch(entry.name[len(prefix) :])
        if match is None:
            return False
        if match["host"] == host_tag():
            return not pid_alive(int(match["pid"]))
    elif not (
        entry.name.startswith(legacy)
        and _LEGACY_RE.fullmatch(entry.name[len(legacy) :])
    ):
        return False
    try:  # another host's, or an earlier version's: judged by age
        return time.time() - _last_change(entry) > STALE_AFTER_S
    except OSError:
        return False


def remove_stale_temps(dest: PathLike) -> list[Path]:
    """Remove temporary files and folders that killed writers left beside ``dest``.

    Only names this module gives (see :func:`temp_sibling`, plus the
    ``.<name>.<8 chars>.tmp`` files of earlier labelzip versions) are considered,
    and only those of writers that are gone. Logs one warning line when it
    removes any.

    Returns:
        The removed paths.
    """
    dest = Path(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    prefix, legacy = _prefix(dest), f".{dest.name}."
    removed: list[Path] = []
    freed = 0
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return removed
    for entry in entries:
        if not _is_stale(entry, prefix, legacy):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            else:
                freed += entry.stat(follow_symlinks=False).st_size
                path.unlink()
        except OSError:
            continue  # removed by someone else meanwhile, or not ours to remove
        removed.append(path)
    if removed:
        names = ", ".join(p.name for p in removed)
        logger.warning(
            "labelzip: removed %d stale temporary file(s) of killed runs beside %s "
            "(%d bytes): %s",
            len(removed),
            dest,
            freed,
            names,
        )
    return removed


def resolve_output(output: PathLike) -> Path:
    """The file an output path writes to, after checking it may be written.

    Symlinks are followed (the link's target is what gets replaced).

    Raises:
        InputError: the folder does not exist, or the target exists and is a
            folder, a device, a FIFO or a socket.
    """
    shown = str(output)
    target = Path(os.path.realpath(output))
    if not target.parent.is_dir():
        folder = Path(output).parent if str(Path(output).parent) else Path(".")
        raise InputError(
            f"output folder {str(folder)!r} does not exist; create it first"
        )
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise InputError(f"cannot use output {shown!r}: {_reason(exc)}") from exc
    if stat.S_ISDIR(mode):
        raise InputError(f"output {shown!r} is a folder; give a file name")
    if not stat.S_ISREG(mode):
        raise InputError(
            f"output {shown!r} exists and is not a regular file (a device, FIFO or "
            "socket); labelzip only replaces regular files"
        )
    return target


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOENT:
        text += " (a read-only or pseudo filesystem?)"
    return text


def _identity(path: PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _create_temp(target: Path, shown: str) -> Path:
    tmp = temp_sibling(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        folder = Path(shown).parent if str(Path(shown).parent) else Path(".")
        raise InputError(
            f"cannot write output {shown!r}: folder {str(folder)!r} does not accept "
            f"new files: {_reason(exc)}"
        ) from exc
    os.close(fd)
    return tmp


def check_output_path(output: PathLike, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Check an output before any work: fail now rather than after hours of it.

    Resolves the target (:func:`resolve_output`), refuses one that is the same
    file as any of ``inputs`` (same device and inode: symlinks and hard links
    count), creates and removes a probe file to prove the folder accepts new files
    (a read-only or pseudo filesystem such as ``/proc`` fails here), and removes
    stale temporary files of killed runs on the same destination.

    Args:
        output: the path the user gave.
        inputs: the command's input files; ``None`` entries are skipped.

    Returns:
        ``output`` as a Path, spelled as given (messages show the user's path).

    Raises:
        InputError: with the reason, on one line.
    """
    shown = str(output)
    target = resolve_output(output)
    out_id = _identity(target)
    if out_id is not None:
        for item in inputs:
            if item is not None and _identity(item) == out_id:
                raise InputError(
                    f"output {shown!r} is the input {str(item)!r}; writing it would "
                    "destroy the input; choose another output name"
                )
    remove_stale_temps(target)
    _create_temp(target, shown).unlink()
    return Path(output)


@contextmanager
def atomic_path(dest: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``'s target; rename it over on success.

    The target is ``dest`` with symlinks followed; an existing target that is not
    a regular file is refused. On any exception the temporary file is removed and
    the target is untouched; an ``OSError`` (no space left, read-only filesystem,
    permission) is raised as a one-line :class:`InputError`.
    """
    shown = str(dest)
    target = resolve_output(dest)
    remove_stale_temps(target)
    tmp = _create_temp(target, shown)
    try:
        try:
            yield tmp
            os.replace(tmp, target)
        except OSError as exc:
            raise InputError(f"writing {shown!r} failed: {_reason(exc)}") from exc
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def check_output_folder(output: PathLike) -> Path:
    """Check a folder a command will write into (created if missing), before work.

    Raises:
        InputError: it exists and is not a folder, or it exists and does not
            accept new files.
    """
    shown = str(output)
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {shown!r} is a file; give a folder")
    if folder.is_dir():
        _create_temp(folder / "probe", shown).unlink()
    return folder


@contextmanager
def atomic_folder(dest: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; it becomes ``dest`` on success.

    An existing ``dest`` folder is replaced (moved aside under a temporary name,
    then removed); a ``dest`` that is not a folder is refused. On any exception
    the temporary folder is removed and ``dest`` is untouched.
    """
    shown = str(dest)
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise InputError(f"output folder {shown!r} exists and is not a folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest)
        tmp = temp_sibling(dest)
        tmp.mkdir()
    except OSError as exc:
        raise InputError(f"cannot create {shown!r}: {_reason(exc)}") from exc
    try:
        try:
            yield tmp
            if dest.exists():
                old = temp_sibling(dest)  # a killed run leaves it to the cleanup
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        except OSError as exc:
            raise InputError(f"writing {shown!r} failed: {_reason(exc)}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(dest: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` through :func:`atomic_path`; returns ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


@contextmanager
def scratch_folder(parent: PathLike, name: str = "scratch") -> Iterator[Path]:
    """A temporary folder inside ``parent``, removed on exit, stale ones cleaned.

    Named like :func:`temp_sibling` (``.<name>.labelzip-tmp-...``) so that the
    folders of killed runs are recognised and removed by the next run.
    """
    anchor = Path(parent) / name
    remove_stale_temps(anchor)
    folder = temp_sibling(anchor)
    try:
        folder.mkdir()
    except OSError as exc:
        raise InputError(
            f"cannot create a work folder in {str(parent)!r}: {_reason(exc)}"
        ) from exc
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
