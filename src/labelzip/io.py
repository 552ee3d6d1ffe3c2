"""Read and write the logit files users already have (.safetensors, .npy, .pt).

Writes go through :mod:`labelzip.outputs` (re-exported here): atomic, never onto
an input or a non-regular file, with recognisable temporary names that the next
run cleans up after a killed one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from labelzip.errors import InputError
from labelzip.outputs import atomic_path, check_output_path

__all__ = ["atomic_path", "check_output_path", "load_logits", "save_logits"]

SUPPORTED_SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")


def load_logits(path: str | os.PathLike[str], key: str | None = None) -> torch.Tensor:
    """Load a float tensor of shape (N, C) or (N, E, C) from a user's file.

    Args:
        path: a ``.safetensors``, ``.npy`` or ``.pt`` file.
        key: tensor name inside a multi-tensor ``.safetensors``/``.pt`` file;
            optional when the file holds exactly one tensor.

    Raises:
        InputError: missing or unreadable file, unknown suffix, no or ambiguous
            tensor, wrong rank or dtype, NaN or Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"logits file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"unsupported logits file {path.name!r}; use one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    reader: Callable[[Path, str | None], torch.Tensor] = {
        ".safetensors": _load_safetensors,
        ".npy": _load_npy,
        ".pt": _load_torch,
        ".pth": _load_torch,
    }[suffix]
    try:
        tensor = reader(path, key)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc}") from exc
    return _validate(tensor, path)


def _pick(
    tensors: dict[str, torch.Tensor], key: str | None, path: Path
) -> torch.Tensor:
    if key is not None:
        if key not in tensors:
            raise InputError(
                f"{path.name} has no tensor {key!r}; it holds {sorted(tensors)}"
            )
        return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if "logits" in tensors:
        return tensors["logits"]
    raise InputError(
        f"{path.name} holds {len(tensors)} tensors {sorted(tensors)[:8]}; "
        "name one with --key"
    )


def _load_safetensors(path: Path, key: str | None) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        if not names:
            raise InputError(f"{path.name} holds no tensors")
        if key is None and len(names) > 1 and "logits" not in names:
            raise InputError(
                f"{path.name} holds {len(names)} tensors {sorted(names)[:8]}; "
                "name one with --key"
            )
        name = key if key is not None else ("logits" if "logits" in names else names[0])
        if name not in names:
            raise InputError(f"{path.name} has no tensor {name!r}; it holds {names}")
        tensor: torch.Tensor = handle.get_tensor(name)
        return tensor


def _load_npy(path: Path, key: str | None) -> torch.Tensor:
    array = np.load(path, allow_pickle=False)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"{path.name} holds {array.dtype} values; logits must be floating point"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def _load_torch(path: Path, key: str | None) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise InputError(f"{path.name} holds a dict without tensors")
        return _pick(tensors, key, path)
    raise InputError(
        f"{path.name} holds a {type(obj).__name__}; expected a tensor or a dict of tensors"
    )


def _validate(tensor: torch.Tensor, path: Path) -> torch.Tensor:
    if tensor.dim() not in (2, 3):
        raise InputError(
            f"{path.name}: logits must have shape (N, C) or (N, E, C), "
            f"got {tuple(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise InputError(
            f"{path.name}: logits must be floating point, got {tensor.dtype}"
        )
    if tensor.shape[-1] < 2:
        raise InputError(
            f"{path.name}: need at least 2 classes, got {tensor.shape[-1]}"
        )
    if 0 in tensor.shape:
        raise InputError(f"{path.name}: empty tensor of shape {tuple(tensor.shape)}")
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(
            f"{path.name}: {bad} logits are NaN or Inf; fix the teacher outputs first"
        )
    return tensor


def save_logits(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor]) -> None:
    """Atomically write tensors to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
