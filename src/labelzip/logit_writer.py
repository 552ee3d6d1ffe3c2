"""Write large tensors to ``.safetensors`` or ``.npy`` files batch by batch.

The reading side is :mod:`labelzip.logit_store`; this is the writing side. The
shapes and dtypes are known up front, so the header is written first and every
tensor's bytes go to their final offset as batches arrive (``os.pwrite``): memory
stays at one batch whatever the file size, and several tensors of one file can be
filled in any interleaving.

- :class:`SafetensorsStreamWriter` lays the file out as
  ``safetensors.torch.save_file`` does (tensors ordered by dtype, widest first,
  then by name; no ``__metadata__`` entry when there is none; header padded with
  spaces to 8 bytes), so its output is byte-identical to ``save_file``'s whenever
  the metadata has at most one key. ``save_file`` orders several metadata keys
  as its hash map happens to; this writer sorts them, which is deterministic and
  reads the same.
- :class:`NpyStreamWriter` writes numpy's own version 1.0 header, so its output
  is byte-identical to ``np.save`` of the same array.

Both write through :func:`labelzip.outputs.atomic_path`: the data goes to a
temporary file beside the destination and is renamed over it only once every
row of every tensor is written; an exception, an unfinished tensor or a killed
run leave the destination untouched, and the temporary file is removed (a
``SIGKILL``-ed run's by the next write to the same destination). A full disk is
reported as one line naming the file and the space still needed, both up front
(when the filesystem reports less free space than the file needs) and mid-write
(``ENOSPC``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelzip.closing import CommitOnExit
from labelzip.errors import InputError
from labelzip.outputs import atomic_path, check_output_path

__all__ = [
    "SAFETENSORS_DTYPE_CODES",
    "NpyStreamWriter",
    "SafetensorsStreamWriter",
    "safetensors_prefix",
]

PathLike = str | os.PathLike[str]

# torch dtype -> safetensors dtype code, listed in safetensors' own dtype order
# (its writer puts tensors of a later code first).
SAFETENSORS_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}
_CODE_RANK = {code: rank for rank, code in enumerate(SAFETENSORS_DTYPE_CODES.values())}
_GB = 1e9


@dataclass
class _Slot:
    """One tensor's place in the file and how many of its values are written."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int  # absolute byte offset of its first value
    written: int = 0  # values, in C order

    @property
    def values(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.values * _itemsize(self.dtype)


def safetensors_prefix(
    tensors: Mapping[str, tuple[Sequence[int], torch.dtype]],
    metadata: Mapping[str, str] | None = None,
) -> tuple[bytes, dict[str, int]]:
    """The bytes before the data of a safetensors file holding ``tensors``.

    Returns:
        ``(prefix, offsets)``: the 8-byte length, the JSON header padded with
        spaces to a multiple of 8, and each tensor's data offset relative to the
        end of the prefix.

    Raises:
        InputError: a dtype safetensors cannot store, or a negative dim.
    """
    specs = []
    for name, (shape, dtype) in tensors.items():
        if dtype not in SAFETENSORS_DTYPE_CODES:
            raise InputError(f"tensor {name!r}: safetensors cannot store {dtype}")
        if any(int(s) < 0 for s in shape):
            raise InputError(f"tensor {name!r}: negative dim in shape {list(shape)}")
        specs.append((name, [int(s) for s in shape], SAFETENSORS_DTYPE_CODES[dtype]))
    specs.sort(key=lambda spec: (-_CODE_RANK[spec[2]], spec[0]))
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    offsets: dict[str, int] = {}
    position = 0
    for name, shape, code in specs:
        size = math.prod(shape) * _itemsize(_dtype_of(code))
        doc[name] = {
            "dtype": code,
            "shape": shape,
            "data_offsets": [position, position + size],
        }
        offsets[name] = position
        position += size
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header, offsets


class _StreamFile:
    """A file of known size written at known offsets through an atomic temp file."""

    def __init__(
        self,
        path: PathLike,
        total_bytes: int,
        prefix: bytes,
        inputs: Sequence[PathLike | None],
    ) -> None:
        self.path = Path(path)
        self.total_bytes = total_bytes
        self._bytes_written = 0
        check_output_path(path, inputs)
        self._check_space(total_bytes)
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(path))
        self._closed = False
        self._fd = -1
        try:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            self._fail(exc)
        self.pwrite(prefix, 0)

    def _check_space(self, needed: int) -> None:
        try:
            free = shutil.disk_usage(Path(os.path.realpath(self.path)).parent).free
        except OSError:
            return  # no statvfs here: the writes themselves will tell
        if needed > free:
            raise InputError(self._no_space(needed - free))

    def _no_space(self, missing: int) -> str:
        gb = max(missing, 1) / _GB
        amount = f"{gb:.1f}" if gb >= 0.1 else f"{gb:.2g}"
        return (
            f"no space left on device writing {str(self.path)!r}: free {amount} GB "
            "or choose another -o"
        )

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` of the temporary file (any error: one line)."""
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            self._fail(exc)
        self._bytes_written += done

    def _fail(self, exc: OSError) -> None:
        """Remove the temporary file and raise ``exc`` as one line."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            error = InputError(self._no_space(self.total_bytes - self._bytes_written))
        else:
            error = InputError(
                f"writing {str(self.path)!r} failed: {exc.strerror or exc}"
            )
        self.abort()
        raise error from exc

    def finish(self) -> None:
        """Sync the temporary file and rename it over the destination."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc)
        os.close(self._fd)
        self._closed = True
        self._stack.close()  # renames the temporary file over the destination

    def abort(self) -> None:
        """Drop the partial file: the destination stays as it was."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._stack.__exit__(InputError, InputError("aborted"), None)


class _StreamWriter(CommitOnExit):
    """Rows appended to the tensors of a :class:`_StreamFile`; complete on close."""

    _slots: dict[str, _Slot]
    _file: _StreamFile

    @property
    def path(self) -> Path:
        return self._file.path

    def _append(self, slot: _Slot, rows: torch.Tensor | np.ndarray) -> None:
        """Append ``rows`` after what ``slot`` holds so far.

        ``rows`` is a batch along any of the tensor's leading dims: its shape
        without the first dim must equal the tensor's last dims, so (B, C)
        label rows fill an (N, E, C) tensor as well as (B, E, C) samples do.
        """
        tensor = torch.from_numpy(rows) if isinstance(rows, np.ndarray) else rows
        if tensor.dtype != slot.dtype:
            raise TypeError(
                f"tensor {slot.name!r} is {slot.dtype}, got rows of {tensor.dtype}"
            )
        shape = slot.shape or (1,)  # a scalar is one row of one value
        rank = tensor.dim()
        if (
            not 1 <= rank <= len(shape)
            or tuple(tensor.shape[1:]) != shape[len(shape) - rank + 1 :]
        ):
            raise ValueError(
                f"tensor {slot.name!r}: rows of shape {tuple(tensor.shape)} do not "
                f"fit {slot.shape}"
            )
        count = tensor.numel()
        if slot.written + count > slot.values:
            raise ValueError(
                f"tensor {slot.name!r}: {slot.written} + {count} values exceed its "
                f"{slot.values}"
            )
        offset = slot.offset + slot.written * _itemsize(slot.dtype)
        self._file.pwrite(_raw(tensor), offset)
        slot.written += count

    def close(self) -> None:
        """Check every tensor is complete, sync, and rename over the destination.

        Raises:
            ValueError: a tensor got fewer values than declared (the partial
                file is removed, the destination left as it was).
        """
        short = [s for s in self._slots.values() if s.written != s.values]
        if short:
            self.abort()
            slot = short[0]
            raise ValueError(
                f"tensor {slot.name!r} got {slot.written} of its {slot.values} "
                f"values; {str(self.path)!r} was not written"
            )
        self._file.finish()

    def abort(self) -> None:
        """Drop the partial file; the destination stays as it was."""
        self._file.abort()


class SafetensorsStreamWriter(_StreamWriter):
    """A ``.safetensors`` file whose tensors are filled batch by batch.

    Example::

        spec = {"logits": ((n, c), torch.float32)}
        with SafetensorsStreamWriter(out, spec, {"source": "teacher"}) as writer:
            for batch in batches:
                writer.write("logits", batch)

    Args:
        path: the destination (replaced atomically on :meth:`close`).
        tensors: ``name -> (shape, dtype)``; rows are appended along dim 0.
        metadata: the ``__metadata__`` string map.
        inputs: the command's inputs; writing onto one of them is refused.

    Raises:
        InputError: an unwritable destination or not enough free space (up
            front), a write error (``ENOSPC`` as one line asking for the
            missing GB).
    """

    def __init__(
        self,
        path: PathLike,
        tensors: Mapping[str, tuple[Sequence[int], torch.dtype]],
        metadata: Mapping[str, str] | None = None,
        *,
        inputs: Sequence[PathLike | None] = (),
    ) -> None:
        if not tensors:
            raise InputError("a safetensors file needs at least one tensor")
        prefix, offsets = safetensors_prefix(tensors, metadata)
        self._slots = {
            name: _Slot(
                name, tuple(int(s) for s in shape), dtype, len(prefix) + offsets[name]
            )
            for name, (shape, dtype) in tensors.items()
        }
        data = sum(slot.nbytes for slot in self._slots.values())
        self._file = _StreamFile(path, len(prefix) + data, prefix, inputs)

    def write(self, name: str, rows: torch.Tensor | np.ndarray) -> None:
        """Append ``rows`` (``(n, *shape[1:])``, the declared dtype) to ``name``."""
        slot = self._slots.get(name)
        if slot is None:
            raise KeyError(f"no tensor {name!r} in this file: {sorted(self._slots)}")
        self._append(slot, rows)


class NpyStreamWriter(_StreamWriter):
    """A ``.npy`` file (numpy's version 1.0 format) filled batch by batch.

    Byte-identical to ``np.save`` of the whole array. Rows are appended along
    dim 0 with :meth:`write`; atomicity and errors as
    :class:`SafetensorsStreamWriter`.
    """

    def __init__(
        self,
        path: PathLike,
        shape: Sequence[int],
        dtype: torch.dtype,
        *,
        inputs: Sequence[PathLike | None] = (),
    ) -> None:
        if dtype == torch.bfloat16 or dtype not in SAFETENSORS_DTYPE_CODES:
            raise InputError(f".npy cannot store {dtype}; write .safetensors instead")
        dims = tuple(int(s) for s in shape)
        if not dims or min(dims) < 0:
            raise InputError(
                f"a .npy stream needs a shape of rank >= 1, got {list(shape)}"
            )
        header = {
            "descr": np.lib.format.dtype_to_descr(
                torch.empty(0, dtype=dtype).numpy().dtype
            ),
            "fortran_order": False,
            "shape": dims,
        }
        buffer = _Buffer()
        np.lib.format.write_array_header_1_0(buffer, header)
        prefix = buffer.data  # the magic string, header length and header
        self._slots = {"array": _Slot("array", dims, dtype, len(prefix))}
        data = self._slots["array"].nbytes
        self._file = _StreamFile(path, len(prefix) + data, prefix, inputs)

    def write(self, rows: torch.Tensor | np.ndarray) -> None:
        """Append ``rows`` (``(n, *shape[1:])``, the declared dtype)."""
        self._append(self._slots["array"], rows)


class _Buffer:
    """The ``write`` numpy's header writers need, collecting the bytes."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk


def _raw(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in C order (little-endian, as both formats store them)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    array: Any = flat.view(torch.uint8).numpy()
    return memoryview(array)


def _dtype_of(code: str) -> torch.dtype:
    return next(d for d, c in SAFETENSORS_DTYPE_CODES.items() if c == code)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
