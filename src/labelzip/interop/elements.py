"""One stored file's Python structure <-> side tensors and a JSON description.

The FKD-family files are pickled lists whose elements are tensors, numpy
arrays, numpy scalars, Python scalars, ``None`` and nested lists of those. An
element is either per label (every leaf has one row per label of the file:
crop coords, flip, mix index, RandAugment parameters ...) or per file (mix
lambda, cutmix box ...). :func:`flatten` turns one element into named side rows
plus a JSON ``spec`` that records every type, dtype, shape and ``None``;
:func:`rebuild` turns the spec and the rows back into an equal Python object
(same container types, same tensor / ndarray dtypes, same scalar types).

Two files of one store must give the same spec: a different one is a mixed
variant, named in the error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from labelzip.archive.format import dtype_to_code
from labelzip.errors import ConfigError, InputError

__all__ = ["Flat", "flatten", "rebuild", "torch_dtype", "dtype_name"]

_SCALARS: dict[type, torch.dtype] = {
    bool: torch.bool,
    int: torch.int64,
    float: torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"unknown dtype {name!r} in an imported archive")
    return dtype


@dataclass
class Flat:
    """One element flattened: its spec and the side rows it adds."""

    spec: dict[str, Any]
    label_rows: dict[str, torch.Tensor] = field(default_factory=dict)
    file_rows: dict[str, torch.Tensor] = field(default_factory=dict)


def flatten(obj: Any, name: str, *, per_label: bool, rows: int, source: str) -> Flat:
    """Flatten one element of a stored file.

    Args:
        obj: the element as loaded.
        name: side-tensor name of the element (nested leaves get ``name.i``).
        per_label: leaves are per label (first dim ``rows``) or per file.
        rows: labels in the file.
        source: the file, for errors.

    Raises:
        InputError: an object array, a dtype an archive cannot hold, a
            per-label leaf with the wrong row count, or an unknown type.
    """
    out = Flat(spec={})
    out.spec = _flatten(obj, name, per_label, rows, source, out)
    return out


def _check_dtype(dtype: torch.dtype, name: str, source: str) -> None:
    try:
        dtype_to_code(dtype)
    except ConfigError as exc:
        raise InputError(f"{source}: {name} holds {dtype} values ({exc})") from exc


def _flatten(
    obj: Any, name: str, per_label: bool, rows: int, source: str, out: Flat
) -> dict[str, Any]:
    if obj is None:
        return {"t": "none"}
    if isinstance(obj, list | tuple):
        items = [
            _flatten(item, f"{name}.{i}", per_label, rows, source, out)
            for i, item in enumerate(obj)
        ]
        return {"t": "list" if isinstance(obj, list) else "tuple", "items": items}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise InputError(
                f"{source}: {name} is a numpy object array; labelzip refuses arbitrary "
                "Python objects"
            )
        return _leaf(
            torch.from_numpy(np.ascontiguousarray(obj)),
            "ndarray",
            name,
            per_label,
            rows,
            source,
            out,
        )
    if isinstance(obj, torch.Tensor):
        return _leaf(obj.detach().cpu(), "tensor", name, per_label, rows, source, out)
    if isinstance(obj, np.generic):
        value = torch.from_numpy(np.asarray(obj).reshape(1))
        _check_dtype(value.dtype, name, source)
        out.file_rows[name] = value
        return {"t": "np", "dtype": dtype_name(value.dtype), "side": name}
    if type(obj) in _SCALARS:
        out.file_rows[name] = torch.tensor([obj], dtype=_SCALARS[type(obj)])
        return {"t": type(obj).__name__, "side": name}
    raise InputError(
        f"{source}: {name} is a {type(obj).__name__}, which no known variant stores"
    )


def _leaf(
    tensor: torch.Tensor,
    kind: str,
    name: str,
    per_label: bool,
    rows: int,
    source: str,
    out: Flat,
) -> dict[str, Any]:
    _check_dtype(tensor.dtype, name, source)
    spec: dict[str, Any] = {"t": kind, "dtype": dtype_name(tensor.dtype), "side": name}
    if per_label and tensor.dim() >= 1:
        if tensor.shape[0] != rows:
            raise InputError(
                f"{source}: {name} has {tensor.shape[0]} rows but the file holds "
                f"{rows} labels"
            )
        spec.update(per="label", shape=list(tensor.shape[1:]))
        out.label_rows[name] = tensor.contiguous()
    else:
        spec.update(per="file", shape=list(tensor.shape))
        out.file_rows[name] = tensor.contiguous().unsqueeze(0)
    return spec


# Reads side rows: (name, start, stop) -> tensor.
SideReader = Callable[[str, int, int], torch.Tensor]


def rebuild(
    spec: dict[str, Any],
    side: SideReader,
    *,
    label_start: int,
    label_stop: int,
    file_index: int,
) -> Any:
    """The Python object a spec describes, from the archive's side rows.

    Args:
        spec: from :func:`flatten` (as recorded in the archive).
        side: reads rows of a side tensor.
        label_start, label_stop: the file's labels (rows of per-label sides).
        file_index: the file's row in per-file sides.
    """
    kind = spec["t"]
    if kind == "none":
        return None
    if kind in ("list", "tuple"):
        items = [
            rebuild(
                item,
                side,
                label_start=label_start,
                label_stop=label_stop,
                file_index=file_index,
            )
            for item in spec["items"]
        ]
        return items if kind == "list" else tuple(items)
    if kind in ("tensor", "ndarray"):
        if spec["per"] == "label":
            value = side(spec["side"], label_start, label_stop)
        else:
            value = side(spec["side"], file_index, file_index + 1)[0]
        value = value.clone()
        return value.numpy() if kind == "ndarray" else value
    row = side(spec["side"], file_index, file_index + 1)
    if kind == "np":
        return row.numpy()[0]
    if kind in ("bool", "int", "float"):
        return {"bool": bool, "int": int, "float": float}[kind](row[0].item())
    raise ConfigError(f"imported archive has an unknown element type {kind!r}")
