"""Read a teacher-logits input in row ranges, without loading it whole.

A logits input is a ``.safetensors``, ``.npy`` or ``.pt`` file of shape (N, C)
or (N, E, C), or a directory of such files (shards) that concatenate along the
first dim. :class:`LogitStore` exposes it as ``num_labels`` flat label rows of
``num_classes`` values and reads any row range on demand:

- ``.safetensors`` and ``.npy``: the header is parsed here and rows are read
  with positional reads (``os.pread``) into fresh buffers. Memory stays at one
  batch whatever the file size, and no file pages stay mapped into the process
  (an ``mmap`` would count every page it touched in the resident size).
- ``.pt`` / ``.pth``: ``torch.load(mmap=True, weights_only=True)``, sliced;
  never unpickled beyond what ``weights_only`` allows.

Every read is checked for NaN/Inf (the error names the file and the first bad
label), so a consumer never sees a value :func:`labelzip.io.load_logits` would
have refused.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelzip.archive.jsonlimits import load_json
from labelzip.closing import ClosesOnExit
from labelzip.codecs.base import all_finite
from labelzip.errors import ArchiveFormatError, InputError

__all__ = ["DEFAULT_READ_BATCH", "LogitStore", "open_logits"]

SUPPORTED_SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")
# Rows per batch of LogitStore.batches(): 4096 x 1000 fp32 is 16 MB.
DEFAULT_READ_BATCH = 4096
# The largest safetensors header read (the format's own limit is 100 MB).
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Rows hashed at each end of every part for the fingerprint.
_FINGERPRINT_ROWS = 64

_SAFETENSORS_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


@dataclass
class _Part:
    """One file's rows: where its data starts and how to turn bytes into values."""

    path: Path
    shape: tuple[int, ...]  # (n, C) or (n, E, C)
    dtype: torch.dtype  # the dtype rows are returned in
    offset: int = 0  # byte offset of the data (pread backends)
    numpy_dtype: np.dtype[Any] | None = (
        None  # .npy: the stored (maybe big-endian) dtype
    )
    tensor: torch.Tensor | None = None  # .pt: the mmap-backed tensor

    @property
    def num_rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def row_values(self) -> int:
        return self.shape[-1]


class LogitStore(ClosesOnExit):
    """Flat (num_labels, C) label rows of a logits file or a directory of shards.

    Attributes:
        path: the file or directory given.
        shape: the full label shape, ``(N, C)`` or ``(N, E, C)``; for shards N is
            the sum of the shards' first dims.
        dtype: the dtype rows are returned in (the stored float dtype; big-endian
            ``.npy`` data is returned in native order).
    """

    def __init__(self, path: Path, parts: list[_Part]) -> None:
        self.path = path
        self._parts = parts
        first = parts[0]
        self.shape: tuple[int, ...] = (
            sum(p.shape[0] for p in parts),
            *first.shape[1:],
        )
        self.dtype = first.dtype
        self._starts = np.cumsum([0] + [p.num_rows for p in parts])
        self._handles: dict[int, int] = {}

    # -- shape ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.shape[-1])

    @property
    def num_labels(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored values (what a full load would hold)."""
        return sum(p.num_rows * p.row_values * _itemsize(p.dtype) for p in self._parts)

    @property
    def files(self) -> list[Path]:
        return [p.path for p in self._parts]

    def __len__(self) -> int:
        return self.num_labels

    # -- reading -------------------------------------------------------------------
    def read(self, start: int, stop: int) -> torch.Tensor:
        """Flat label rows ``[start, stop)`` as a fresh (n, C) tensor, checked finite.

        Raises:
            InputError: a range outside ``[0, num_labels]``, an unreadable or
                truncated file, or NaN/Inf values (naming the file and label).
        """
        if not 0 <= start <= stop <= self.num_labels:
            raise InputError(
                f"label rows [{start}, {stop}) outside [0, {self.num_labels}) "
                f"of {self.path}"
            )
        pieces = []
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        index = max(first, 0)
        while start < stop:
            part = self._parts[index]
            base = int(self._starts[index])
            lo, hi = start - base, min(stop, base + part.num_rows) - base
            if hi > lo:
                pieces.append(self._read_part(index, lo, hi))
            start = base + hi
            index += 1
        if not pieces:
            return torch.empty(0, self.num_classes, dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def batches(
        self, size: int = DEFAULT_READ_BATCH, start: int = 0, stop: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Rows ``[start, stop)`` as consecutive (<= size, C) batches."""
        if size < 1:
            raise InputError(f"batch size must be >= 1, got {size}")
        end = self.num_labels if stop is None else stop
        for lo in range(start, end, size):
            yield self.read(lo, min(lo + size, end))

    def _read_part(self, index: int, lo: int, hi: int) -> torch.Tensor:
        part = self._parts[index]
        count = hi - lo
        if part.tensor is not None:
            rows = part.tensor.reshape(part.num_rows, part.row_values)[lo:hi].clone()
        else:
            rows = self._pread_rows(index, part, lo, count)
        _check_finite(rows, part.path, int(self._starts[index]) + lo)
        return rows

    def _pread_rows(self, index: int, part: _Part, lo: int, count: int) -> torch.Tensor:
        stored = part.numpy_dtype
        itemsize = stored.itemsize if stored is not None else _itemsize(part.dtype)
        row_bytes = part.row_values * itemsize
        nbytes = count * row_bytes
        buf = bytearray(nbytes)
        fd = self._fd(index)
        view = memoryview(buf)
        got = 0
        offset = part.offset + lo * row_bytes
        try:
            while got < nbytes:
                n = os.preadv(fd, [view[got:]], offset + got)
                if n == 0:
                    break
                got += n
        except OSError as exc:
            raise InputError(f"cannot read {str(part.path)!r}: {exc}") from exc
        if got < nbytes:
            raise InputError(
                f"{str(part.path)!r} is truncated: its header promises "
                f"{part.num_rows} rows but the file ends before row {lo + got // row_bytes}"
            )
        if stored is not None:
            array = np.frombuffer(buf, dtype=stored)
            if not stored.isnative:
                array = array.astype(stored.newbyteorder("="))
            tensor = torch.from_numpy(array)
        else:
            tensor = torch.frombuffer(buf, dtype=part.dtype)
        return tensor.reshape(count, part.row_values)

    def _fd(self, index: int) -> int:
        fd = self._handles.get(index)
        if fd is None:
            path = self._parts[index].path
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise InputError(f"cannot open {str(path)!r}: {exc}") from exc
            self._handles[index] = fd
        return fd

    # -- identity ------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A sha256 of the shape, dtype, file names and sizes and the first and
        last rows of every file: equal on every machine that holds the same input
        (paths may differ), different for a different or truncated input, and
        cheap (it reads 2 x 64 rows per file, not the whole input)."""
        digest = hashlib.sha256()
        digest.update(repr((self.shape, str(self.dtype))).encode())
        for index, part in enumerate(self._parts):
            size = part.path.stat().st_size
            digest.update(repr((part.path.name, size, part.shape)).encode())
            ends = {(0, min(_FINGERPRINT_ROWS, part.num_rows))}
            ends.add((max(0, part.num_rows - _FINGERPRINT_ROWS), part.num_rows))
            for lo, hi in sorted(ends):
                rows = self._read_part(index, lo, hi)
                digest.update(rows.contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # -- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without its open file descriptors (DataLoader workers reopen)."""
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def open_logits(path: str | os.PathLike[str], key: str | None = None) -> LogitStore:
    """Open a logits file, or a directory of logit shards, for row-range reads.

    Args:
        path: a ``.safetensors``, ``.npy`` or ``.pt`` file of shape (N, C) or
            (N, E, C), or a directory of such files (read in sorted name order,
            concatenated along the first dim; every file must agree on the
            other dims and the dtype).
        key: tensor name inside multi-tensor ``.safetensors``/``.pt`` files.

    Raises:
        InputError: missing path, unsupported suffix, no or ambiguous tensor,
            wrong rank or dtype, shards that disagree, a truncated file.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(
            p
            for p in root.iterdir()
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
        )
        if not files:
            raise InputError(
                f"directory {str(root)!r} holds no logits shards "
                f"({', '.join(SUPPORTED_SUFFIXES)})"
            )
    elif root.is_file():
        files = [root]
    else:
        raise InputError(f"logits file {str(root)!r} does not exist")
    parts = [_open_part(f, key) for f in files]
    first = parts[0]
    for part in parts[1:]:
        if part.shape[1:] != first.shape[1:] or part.dtype != first.dtype:
            raise InputError(
                f"shard {part.path.name!r} holds {tuple(part.shape)} {part.dtype} but "
                f"{first.path.name!r} holds {tuple(first.shape)} {first.dtype}; every "
                "shard must agree on every dim but the first, and on the dtype"
            )
    return LogitStore(root, parts)


def _open_part(path: Path, key: str | None) -> _Part:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"unsupported logits file {path.name!r}; use one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        if suffix == ".safetensors":
            part = _safetensors_part(path, key)
        elif suffix == ".npy":
            part = _npy_part(path)
        else:
            part = _torch_part(path, key)
    except InputError:
        raise
    except Exception as exc:  # a library's own parse error: name the file
        raise InputError(f"cannot read {str(path)!r}: {exc}") from exc
    _check_shape(part)
    return part


def _check_shape(part: _Part) -> None:
    name = part.path.name
    if len(part.shape) not in (2, 3):
        raise InputError(
            f"{name}: logits must have shape (N, C) or (N, E, C), got {part.shape}"
        )
    if part.shape[-1] < 2:
        raise InputError(f"{name}: need at least 2 classes, got {part.shape[-1]}")
    if 0 in part.shape:
        raise InputError(f"{name}: empty tensor of shape {part.shape}")


def _safetensors_part(path: Path, key: str | None) -> _Part:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise InputError(f"{path.name} is not a safetensors file: too short")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_SAFETENSORS_HEADER, size - 8):
            raise InputError(
                f"{path.name} is not a safetensors file (or is truncated): its header "
                f"claims {length} bytes but the file has {size}"
            )
        raw = handle.read(length)
    try:
        doc = load_json(raw, f"{path.name}: invalid safetensors header")
    except ArchiveFormatError as exc:
        raise InputError(str(exc)) from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path.name}: safetensors header is not a JSON object")
    doc.pop("__metadata__", None)
    names = sorted(doc)
    if not names:
        raise InputError(f"{path.name} holds no tensors")
    name = _pick_name(names, key, path)
    entry = doc[name]
    if not isinstance(entry, dict):
        raise InputError(f"{path.name}: header entry {name!r} is not an object")
    code, shape, offsets = (
        entry.get("dtype"),
        entry.get("shape"),
        entry.get("data_offsets"),
    )
    if code not in _SAFETENSORS_DTYPES:
        raise InputError(
            f"{path.name}: tensor {name!r} is {code}; logits must be floating point "
            f"({', '.join(_SAFETENSORS_DTYPES)})"
        )
    if (
        not isinstance(shape, list)
        or not all(isinstance(s, int) and s >= 0 for s in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
    ):
        raise InputError(f"{path.name}: header entry {name!r} is malformed")
    dtype = _SAFETENSORS_DTYPES[code]
    start, end = offsets
    if end - start != math.prod(shape) * _itemsize(dtype):
        raise InputError(
            f"{path.name}: tensor {name!r} has shape {shape} but {end - start} bytes"
        )
    data_start = 8 + length
    if data_start + end > size:
        raise InputError(
            f"{path.name} is truncated: tensor {name!r} ends at byte "
            f"{data_start + end} but the file has {size}"
        )
    return _Part(path, tuple(shape), dtype, offset=data_start + start)


def _npy_part(path: Path) -> _Part:
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, stored = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, stored = np.lib.format.read_array_header_2_0(handle)
        except ValueError as exc:
            raise InputError(f"{path.name} is not a valid .npy file: {exc}") from exc
        offset = handle.tell()
    if stored.hasobject:
        raise InputError(
            f"{path.name} holds Python objects; logits must be a float array"
        )
    if not np.issubdtype(stored, np.floating) or stored.itemsize not in (2, 4, 8):
        raise InputError(
            f"{path.name} holds {stored} values; logits must be floating point"
        )
    if fortran and len(shape) > 1:
        raise InputError(
            f"{path.name} is stored in Fortran (column-major) order; save it with "
            "np.save(np.ascontiguousarray(a)) to read it in rows"
        )
    dtype = torch.from_numpy(np.empty(0, stored.newbyteorder("="))).dtype
    needed = offset + math.prod(shape) * stored.itemsize
    if path.stat().st_size < needed:
        raise InputError(
            f"{path.name} is truncated: its header promises {tuple(shape)} {stored} "
            f"({needed} bytes) but the file has {path.stat().st_size}"
        )
    return _Part(path, tuple(int(s) for s in shape), dtype, offset, numpy_dtype=stored)


def _torch_part(path: Path, key: str | None) -> _Part:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be mapped: small ones
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise InputError(f"{path.name} holds a dict without tensors")
        obj = tensors[_pick_name(sorted(tensors), key, path)]
    if not isinstance(obj, torch.Tensor):
        raise InputError(
            f"{path.name} holds a {type(obj).__name__}; expected a tensor or a dict "
            "of tensors"
        )
    if not obj.is_floating_point():
        raise InputError(f"{path.name}: logits must be floating point, got {obj.dtype}")
    tensor = obj if obj.is_contiguous() else obj.contiguous()
    return _Part(path, tuple(tensor.shape), tensor.dtype, tensor=tensor)


def _pick_name(names: list[str], key: str | None, path: Path) -> str:
    if key is not None:
        if key not in names:
            raise InputError(f"{path.name} has no tensor {key!r}; it holds {names[:8]}")
        return key
    if len(names) == 1:
        return names[0]
    if "logits" in names:
        return "logits"
    raise InputError(
        f"{path.name} holds {len(names)} tensors {names[:8]}; name one with --key"
    )


def _check_finite(rows: torch.Tensor, path: Path, first_label: int) -> None:
    if all_finite(rows):
        return
    finite = torch.isfinite(rows).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise InputError(
            f"{path.name}: label {first_label + bad} (and maybe others) holds NaN or "
            "Inf logits; fix the teacher outputs first"
        )


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
