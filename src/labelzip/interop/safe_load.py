"""Load the pickled label files of other frameworks without running their code.

SRe2L, CDA, LPLD, LPQLD, G-VBSM, EDC and FKD save their labels with
``torch.save``: a zip of a pickle plus raw tensor storages. Unpickling an
untrusted pickle can run any code, so these files are read with
``torch.load(weights_only=True)``, whose unpickler builds only tensors,
containers and Python scalars, plus the few numpy reconstructors these formats
really need (numpy arrays in FKD files, ``numpy.int64`` boxes in SRe2L's
``mix_bbox``). Any other global a file asks for is refused, with the file and
the global named, before anything it names is imported or called.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelzip.errors import InputError

__all__ = ["ALLOWED_GLOBALS", "load_torch_file"]


def _numpy_globals() -> list[Any]:
    """numpy objects a pickled ndarray / numpy scalar refers to, under every name.

    Files written with numpy 1.x name ``numpy.core.multiarray``; numpy 2 names
    ``numpy._core.multiarray``. torch matches globals by their pickled name, so
    each object is listed under both (``(object, "module.name")`` pairs).
    """
    from numpy._core import multiarray

    out: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        func = getattr(multiarray, name)
        out.append((func, f"numpy._core.multiarray.{name}"))
        out.append((func, f"numpy.core.multiarray.{name}"))
    # numpy >= 1.25 pickles a dtype as its class (numpy.dtypes.Float16DType, ...).
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?"):
        out.append(type(np.dtype(code)))
    return out


ALLOWED_GLOBALS: list[Any] = _numpy_globals()

# How torch's weights-only unpickler names what it refused.
_REFUSED = (
    re.compile(r"GLOBAL ([\w.]+)"),
    re.compile(r"but got <class '([\w.]+)'>"),
)


def load_torch_file(path: Path, *, root: Path | None = None) -> Any:
    """``torch.load`` a label file safely (tensors, containers, numpy arrays only).

    Args:
        path: the file.
        root: the store's folder; errors name ``path`` relative to it.

    Raises:
        InputError: the file is missing, truncated or corrupt, or asks for a
            global outside :data:`ALLOWED_GLOBALS` (named in the message).
    """
    name = _display(path, root)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except FileNotFoundError as exc:
        raise InputError(f"label file {name} does not exist") from exc
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        text = str(exc)
        found = [m.group(1) for r in _REFUSED if (m := r.search(text))]
        if found or "WeightsUnpickler" in text:
            what = found[0] if found else "an object outside the allow-list"
            if what.endswith("ObjectDType"):
                what = "a numpy object array (arbitrary Python objects)"
            raise InputError(
                f"refusing to load {name}: it asks for {what}, which is not a tensor, "
                "container or numpy array (labelzip never unpickles arbitrary objects)"
            ) from exc
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise InputError(
            f"cannot read label file {name}: truncated or corrupt ({first[:160]})"
        ) from exc


def _display(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return repr(str(path.relative_to(root)))
        except ValueError:
            pass
    return repr(str(path))
