"""Stream LM teacher logits into a ``.safetensors`` file without holding them all.

One token's distribution is V values (V = 49,152 for SmolLM2: ~96 KiB in fp16), so a
label set of a few thousand tokens is hundreds of MB. A safetensors file's header
lists every tensor's shape and byte range up front; when the shapes are known in
advance (N tokens x V), the header can be written first and each batch's rows
appended as they are computed. The result is an ordinary safetensors file that
``safetensors.torch.load_file`` and ``labelzip.io.load_logits`` read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from contextlib import ExitStack
from typing import BinaryIO

import torch

from labelzip.closing import CommitOnExit
from labelzip.errors import InputError
from labelzip.io import atomic_path
from labelzip.logit_writer import SAFETENSORS_DTYPE_CODES

__all__ = ["SafetensorsStreamWriter"]


class SafetensorsStreamWriter(CommitOnExit):
    """Write declared tensors row block by row block, in declaration order.

    Example:
        >>> specs = {"token_ids": (torch.int64, (n,)), "logits": (torch.float16, (n, v))}
        >>> with SafetensorsStreamWriter(path, specs) as w:  # doctest: +SKIP
        ...     w.write("token_ids", ids)
        ...     for block in blocks:
        ...         w.write("logits", block)  # (b, v) float16 rows

    The file appears at ``path`` (atomically) only when every declared byte has been
    written and the ``with`` block exits without an exception.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        if not specs:
            raise InputError("SafetensorsStreamWriter needs at least one tensor spec")
        self._order = list(specs)
        self._specs = specs
        self._sizes: dict[str, int] = {}
        header: dict[str, object] = {}
        offset = 0
        for name, (dtype, shape) in specs.items():
            if dtype not in SAFETENSORS_DTYPE_CODES:
                raise InputError(f"tensor {name!r}: unsupported dtype {dtype}")
            if any(d < 0 for d in shape):
                raise InputError(f"tensor {name!r}: negative dimension in {shape}")
            size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            header[name] = {
                "dtype": SAFETENSORS_DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            self._sizes[name] = size
            offset += size
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors does
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(path))
        self._file: BinaryIO = self._stack.enter_context(self._tmp.open("wb"))
        # The temporary file is private (0600); the result gets the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._current = 0
        self._written = 0

    def write(self, name: str, block: torch.Tensor) -> None:
        """Append rows to tensor ``name`` (the current one, or the next if it is full).

        ``block`` has the tensor's dtype and trailing shape; its leading dimension is
        any number of rows (a 1-D tensor's block is a 1-D slice).
        """
        self._advance_past_full()
        if self._current >= len(self._order) or self._order[self._current] != name:
            expected = (
                self._order[self._current] if self._current < len(self._order) else None
            )
            raise InputError(
                f"wrote to tensor {name!r} but {expected!r} is being written; write "
                f"tensors completely and in declared order {self._order}"
            )
        dtype, shape = self._specs[name]
        if block.dtype != dtype or tuple(block.shape[1:]) != tuple(shape[1:]):
            raise InputError(
                f"tensor {name!r}: block {tuple(block.shape)} {block.dtype} does not fit "
                f"declared {tuple(shape)} {dtype} (rows of shape {tuple(shape[1:])})"
            )
        # via uint8: numpy has no bfloat16; bytes are little-endian like safetensors
        raw = block.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        if self._written + raw.numel() > self._sizes[name]:
            raise InputError(
                f"tensor {name!r}: block overflows the declared shape {tuple(shape)}"
            )
        self._file.write(raw.numpy().data)  # a memoryview: no bytes copy of the block
        self._written += raw.numel()

    def _advance_past_full(self) -> None:
        while (
            self._current < len(self._order)
            and self._written == self._sizes[self._order[self._current]]
        ):
            self._current += 1
            self._written = 0

    def close(self) -> None:
        """Check every declared byte was written, then move the file into place."""
        self._advance_past_full()
        if self._current < len(self._order):
            name = self._order[self._current]
            error = InputError(
                f"tensor {name!r} is incomplete: {self._written} of {self._sizes[name]} "
                "bytes written; the file was not created"
            )
            self._stack.__exit__(type(error), error, None)
            raise error
        self._stack.close()

    def abort(self) -> None:
        """Discard the partial file (called automatically on an exception)."""
        error = InputError("aborted")
        self._stack.__exit__(type(error), error, None)
