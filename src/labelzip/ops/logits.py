"""Teacher logits as codecs receive them: validation and re-iterable sources.

Below the codecs so that tensor operations (:mod:`labelzip.ops.reservoir`) can
check and stream logits without importing the codec contract;
:mod:`labelzip.codecs.base` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from labelzip.errors import InputError

__all__ = ["LogitSource", "all_finite", "check_logits", "iterate_source"]

# A re-iterable stream of (B, C) float logit batches: a list, a DataLoader-like
# object, or a zero-argument callable returning a fresh iterator (for multi-pass fits).
LogitSource = Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]]


# Largest magnitude bit pattern of a finite 16-bit float: exponent bits not all set.
_FINITE_BELOW = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def all_finite(values: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds no NaN or Inf, in one cheap pass.

    ``torch.isfinite(x).all()`` makes a bool tensor and is slow on the CPU.
    16-bit floats are tested on their bits (finite iff the exponent is not all
    ones); wider ones by one sum, finite exactly when every entry is, unless
    finite entries overflow it: only then are they checked one by one.
    """
    if values.numel() == 0:
        return True
    limit = _FINITE_BELOW.get(values.dtype)
    if limit is not None and values.is_contiguous():
        return int((values.view(torch.int16) & 0x7FFF).max()) < limit
    if values.dtype in (torch.float32, torch.float64) and bool(
        torch.isfinite(values.sum())
    ):
        return True
    return bool(torch.isfinite(values).all())


def check_logits(logits: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Validate a (N, C) batch of teacher logits; returns it unchanged.

    Raises:
        InputError: wrong type, rank or dtype, class count mismatch, NaN or Inf.
    """
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise InputError(
            f"logits must have shape (N, C), got {tuple(logits.shape)}; "
            "flatten leading dimensions first"
        )
    if not logits.is_floating_point():
        raise InputError(
            f"logits must be a floating-point tensor, got {logits.dtype}; "
            "store raw teacher logits (fp32, fp16 or bf16)"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise InputError(
            f"codec was fitted for {num_classes} classes, logits have {logits.shape[1]}"
        )
    if not all_finite(logits):
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise InputError(
            f"logits contain NaN or Inf in {bad} of {logits.shape[0]} rows"
        )
    return logits


def iterate_source(source: LogitSource) -> Iterable[torch.Tensor]:
    """A fresh pass over ``source`` (calls it if it is a factory)."""
    if callable(source) and not isinstance(source, torch.Tensor):
        return source()
    return source
