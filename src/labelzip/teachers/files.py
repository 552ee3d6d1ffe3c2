"""Teachers from files: TorchScript by default, pickled modules only when trusted.

A teacher file is loaded with ``torch.jit.load``: the file holds TorchScript
code and tensors, and TorchScript's own loader does not run Python code from
the file. A whole ``nn.Module`` saved with ``torch.save`` is a Python pickle:
unpickling it can run any code the file names (a malicious ``.pt`` can delete
or create files before anyone learns it is not a model). Such a file is loaded
only with ``trust_pickle=True`` (``--trust-pickle``); without it, it is refused
before it is unpickled, with a line on how to convert it.

Convert a model you trust to TorchScript once::

    model = torch.load("teacher.pt", weights_only=False).eval()  # your own file
    torch.jit.save(torch.jit.script(model), "teacher.ts")          # or
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 3, 32, 32) * 255), "teacher.ts")
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from labelzip.errors import InputError

__all__ = ["CONVERT_HINT", "TRUST_PICKLE_HELP", "load_teacher_file"]

CONVERT_HINT = (
    "convert it once with torch.jit.save(torch.jit.script(model), 'teacher.ts') "
    "(or torch.jit.trace(model, example_images)), or pass --trust-pickle if you "
    "trust the file"
)
TRUST_PICKLE_HELP = (
    "also load a teacher file that is a pickled nn.Module (torch.save(model)). "
    "WARNING: unpickling runs code from the file; use only files you made or "
    "fully trust. Default: TorchScript files only"
)


def load_teacher_file(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    *,
    trust_pickle: bool = False,
) -> nn.Module:
    """A teacher model from ``path``, in eval mode on ``device``.

    Args:
        path: a TorchScript file (``torch.jit.save`` of a scripted or traced
            model) taking (B, C, H, W) images in 0..255 and returning logits.
        device: where the model is loaded.
        trust_pickle: also accept a pickled ``nn.Module`` (``torch.save(model)``),
            unpickled with ``weights_only=False``: this runs code from the file.

    Raises:
        InputError: missing file; a file that is not TorchScript (without
            ``trust_pickle``: before anything in it is unpickled); with
            ``trust_pickle``, a file that is neither TorchScript nor a module.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(f"teacher file {str(src)!r} does not exist")
    kind = _file_kind(src)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():  # deprecated in torch, but still loads
                warnings.simplefilter("ignore", DeprecationWarning)
                model: nn.Module = torch.jit.load(str(src), map_location=device)
        except (RuntimeError, ValueError) as exc:
            raise InputError(
                f"cannot load TorchScript teacher {str(src)!r}: {_first_line(exc)}"
            ) from exc
        return model.eval()
    if not trust_pickle:
        raise InputError(
            f"teacher file {str(src)!r} is {kind}, not TorchScript, and labelzip "
            f"does not unpickle teacher files by default (pickles run code): "
            f"{CONVERT_HINT}"
        )
    try:
        loaded = torch.load(str(src), map_location=device, weights_only=False)
    except Exception as exc:  # unpickling raises anything the file's code raises
        raise InputError(
            f"cannot load teacher {str(src)!r} as TorchScript or a pickled "
            f"nn.Module: {_first_line(exc)}"
        ) from exc
    if not isinstance(loaded, nn.Module):
        raise InputError(
            f"{str(src)!r} holds a {type(loaded).__name__}, not an nn.Module; save "
            "the whole model as TorchScript (torch.jit.save(torch.jit.script(model), "
            "path))"
        )
    return loaded.eval()


def _file_kind(path: Path) -> str:
    """``"torchscript"``, or what the file is instead (for the refusal message).

    Only the zip directory is read: TorchScript archives hold ``constants.pkl``
    and ``code/``; ``torch.save`` writes a zip with ``data.pkl`` alone (or, in
    its legacy format, a bare pickle).
    """
    if not zipfile.is_zipfile(path):
        return "not a zip archive (a legacy torch.save pickle or another file)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"an unreadable zip archive ({exc})"
    tails = {name.split("/", 1)[-1] for name in names}
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "a torch.save pickle"
    return "a zip archive without TorchScript code"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
