"""What the FKD-mix batch lists hold: the element table, the writers' variants.

Every element a writer puts in a batch list has a role (per-label side data,
per-file side data, dense labels, top-k values or ids) and a check of its type
and shape; a :class:`Variant` is one writer's list layout, detected from a
loaded file. LPQLD's RandAugment magnitudes change dtype from file to file
(:func:`rand_params_casts` reconciles them on import, :func:`restore_dtypes`
casts them back on export).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from labelzip.interop.elements import dtype_name, torch_dtype

__all__ = [
    "ELEMENTS",
    "MIX_ELEMENTS",
    "RAND_PARAMS_DTYPES",
    "Variant",
    "describe_list",
    "first_difference",
    "mix_name",
    "rand_params_casts",
    "restore_dtypes",
]

Role = Literal["label", "file", "dense", "values", "ids"]
Check = Callable[[Any], bool]


def _tensor(dims: int, kind: str, width: int | None = None) -> Check:
    def check(x: Any) -> bool:
        if not isinstance(x, torch.Tensor) or x.dim() != dims:
            return False
        if kind == "float" and not x.is_floating_point():
            return False
        if kind == "bool" and x.dtype != torch.bool:
            return False
        if kind == "int" and (x.is_floating_point() or x.dtype == torch.bool):
            return False
        return width is None or x.shape[-1] == width

    return check


def _optional(check: Check) -> Check:
    return lambda x: x is None or check(x)


def _scalar(x: Any) -> bool:
    return isinstance(x, float | int | np.generic) or (
        isinstance(x, torch.Tensor) and x.dim() == 0
    )


def _sequence(x: Any) -> bool:
    return isinstance(x, list | tuple)


# name -> (role, check) of every element the writers put in a batch list.
ELEMENTS: dict[str, tuple[Role, Check]] = {
    "coords": ("label", _tensor(2, "float", 4)),
    "flip": ("label", _tensor(1, "bool")),
    "coords_cutout": ("label", _tensor(2, "float", 7)),
    "rand_params": ("label", _sequence),
    "mix_index": ("label", _optional(_tensor(1, "int"))),
    "mix_lam": ("file", _optional(_scalar)),
    "mix_bbox": ("file", _optional(_sequence)),
    "output": ("dense", _tensor(2, "float")),
    "topk_values": ("values", _tensor(2, "float")),
    "topk_indices": ("ids", _tensor(2, "int")),
    "image_index": ("label", _tensor(1, "int")),
    "indices_status": ("label", lambda x: x is not None),
}

MIX_ELEMENTS = ("mix_index", "mix_lam", "mix_bbox")


@dataclass(frozen=True)
class Variant:
    """One list layout a writer produces: its name and element names in order."""

    name: str
    elements: tuple[str, ...]

    def matches(self, obj: Any) -> bool:
        return (
            isinstance(obj, list)
            and len(obj) == len(self.elements)
            and all(ELEMENTS[n][1](x) for n, x in zip(self.elements, obj, strict=True))
        )


def describe_list(obj: Any) -> str:
    """A short description of what a file holds, for 'unknown variant' errors."""

    def one(x: Any) -> str:
        if isinstance(x, torch.Tensor):
            return f"tensor{tuple(x.shape)} {dtype_name(x.dtype)}"
        if isinstance(x, np.ndarray):
            return f"ndarray{x.shape} {x.dtype}"
        if isinstance(x, list | tuple):
            return f"{type(x).__name__}[{len(x)}]"
        return type(x).__name__

    if isinstance(obj, list | tuple):
        return (
            f"a {len(obj)}-{type(obj).__name__} ["
            + ", ".join(one(x) for x in obj)
            + "]"
        )
    return f"a {type(obj).__name__}"


# Per-file exceptions to the first file's RandAugment dtypes (side blob, JSON
# {file index: {side name: dtype}}), written only when a store has any.
RAND_PARAMS_DTYPES = "rand_params_dtypes"
_RAND_PARAMS_DTYPES_SWAP = {"int64", "float16"}


def rand_params_casts(
    got: list[dict[str, Any]],
    want: list[dict[str, Any]],
    per_label: dict[str, torch.Tensor],
) -> dict[str, str] | None:
    """Reconcile a file whose RandAugment leaves have another dtype than the
    first file's, or None when it differs otherwise.

    LPQLD default-collates each op's magnitudes: a batch whose magnitudes are all
    Python ints (-99 for "not applied", Posterize / Solarize levels) gives an
    int64 column, any float among them a float32 one that the writer halves. The
    column is stored in the first file's dtype when that is exact (cast in place
    in ``per_label``); returns {side name: the file's own dtype} to restore.
    """
    casts: dict[str, str] = {}

    def walk(a: dict[str, Any], b: dict[str, Any]) -> bool:
        if a.keys() != b.keys() or a["t"] != b["t"]:
            return False
        if a["t"] in ("list", "tuple"):
            return len(a["items"]) == len(b["items"]) and all(
                walk(x, y) for x, y in zip(a["items"], b["items"], strict=True)
            )
        if a == b:
            return True
        side = a.get("side", "")
        if (
            {k: v for k, v in a.items() if k != "dtype"}
            != {k: v for k, v in b.items() if k != "dtype"}
            or not side.startswith("rand_params.")
            or {a["dtype"], b["dtype"]} != _RAND_PARAMS_DTYPES_SWAP
            or a.get("per") != "label"
        ):
            return False
        rows = per_label[side]
        stored = rows.to(torch_dtype(b["dtype"]))
        if not torch.equal(stored.to(rows.dtype), rows):
            return False
        per_label[side] = stored
        casts[side] = a["dtype"]
        return True

    if len(got) != len(want):
        return None
    for a, b in zip(got, want, strict=True):
        if a != b and not walk(a, b):
            return None
    return casts


def restore_dtypes(obj: Any, spec: dict[str, Any], casts: dict[str, str]) -> Any:
    """``obj`` (rebuilt from ``spec``) with the leaves named in ``casts`` cast back."""
    if spec["t"] in ("list", "tuple"):
        items = [
            restore_dtypes(x, s, casts) for x, s in zip(obj, spec["items"], strict=True)
        ]
        return items if spec["t"] == "list" else tuple(items)
    if spec.get("side") in casts:
        return obj.to(torch_dtype(casts[spec["side"]]))
    return obj


def mix_name(obj: list[Any], names: tuple[str, ...]) -> str:
    found = {n: x for n, x in zip(names, obj, strict=True) if n in MIX_ELEMENTS}
    if found.get("mix_bbox") is not None:
        return "+cutmix"
    if found.get("mix_lam") is not None:
        return "+mixup"
    return ""


def first_difference(
    names: tuple[str, ...], got: list[dict[str, Any]], want: list[dict[str, Any]]
) -> str:
    for name, a, b in zip(names, got, want, strict=True):
        if a != b:
            return f"{name}: {json.dumps(a)[:80]} vs {json.dumps(b)[:80]}"
    return "?"
