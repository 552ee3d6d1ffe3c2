"""Evaluate LM students: validation perplexity and mean KL to the teacher.

Both numbers come from one pass over the validation windows: each batch runs the
teacher once and every student once, so comparing several students (labels from
an archive, CE only, online KD) costs one teacher pass. Perplexity is
``exp(mean NLL)`` of the next token over positions 0..T-2 of every window (the
last position's target lies outside the window); KL is
``KL(teacher || student)`` at temperature 1, in nats, averaged over all T
positions (every position has a teacher distribution).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from labelzip.errors import InputError

__all__ = ["LMScores", "distribution_kl", "evaluate_students", "next_token_nll"]


@dataclass(frozen=True)
class LMScores:
    """Validation scores of one student."""

    perplexity: float
    nll: float  # mean next-token negative log-likelihood, nats
    kl_to_teacher: float | None  # mean KL(teacher || student) per position, nats
    top1_agreement: float | None  # student argmax == teacher argmax, all positions
    tokens: int  # positions scored for the NLL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1) next-token NLL of (B, T, V) logits on (B, T) ids, in nats."""
    log_q = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -log_q.gather(-1, ids[:, 1:, None]).squeeze(-1)


def distribution_kl(
    teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """(...,) KL(softmax(teacher / T) || softmax(student / T)) over the last axis.

    ``teacher`` may hold ``-inf`` (a decoder that gives no mass there): those
    entries contribute 0, as the distribution has no mass on them.
    """
    log_p = torch.log_softmax(teacher.float() / temperature, dim=-1)
    log_q = torch.log_softmax(student.float() / temperature, dim=-1)
    p = log_p.exp()
    return torch.special.xlogy(p, p).sum(-1) - (p * log_q).sum(-1)


@torch.no_grad()
def evaluate_students(
    students: Mapping[str, Any],
    windows: torch.Tensor,
    *,
    teacher: Any | None = None,
    batch_size: int = 4,
    device: torch.device | str | None = None,
) -> dict[str, LMScores]:
    """Perplexity (and KL/top-1 agreement to ``teacher``) of each student.

    Args:
        students: name -> causal LM (``model(input_ids).logits`` (B, T, V)).
        windows: (M, T) int64 validation token windows.
        teacher: the causal-LM teacher; None skips KL and agreement.
        batch_size: windows per forward pass.
        device: where the models run (default: the first student's device).

    Returns:
        name -> :class:`LMScores`.

    Raises:
        InputError: no validation windows, or a model's vocabulary differs.
    """
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise InputError(
            f"validation needs (M, T) windows with M >= 1 and T >= 2, got "
            f"{tuple(windows.shape)}; lower validation seq_len or add documents"
        )
    if device is None:
        device = next(next(iter(students.values())).parameters()).device
    device = torch.device(device)
    for model in students.values():
        model.eval()
    nll = dict.fromkeys(students, 0.0)
    kl = dict.fromkeys(students, 0.0)
    agree = dict.fromkeys(students, 0.0)
    count = positions = 0
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start : start + batch_size].to(device)
        ref = teacher(input_ids=ids).logits.float() if teacher is not None else None
        for name, model in students.items():
            logits = model(input_ids=ids).logits.float()
            if ref is not None and ref.shape != logits.shape:
                raise InputError(
                    f"student {name!r} outputs {tuple(logits.shape)} but the teacher "
                    f"{tuple(ref.shape)}; they must share the vocabulary"
                )
            nll[name] += float(next_token_nll(logits, ids).sum())
            if ref is not None:
                kl[name] += float(distribution_kl(ref, logits).sum())
                same = logits.argmax(-1) == ref.argmax(-1)
                agree[name] += float(same.sum())
        count += ids.shape[0] * (ids.shape[1] - 1)
        positions += ids.numel()
    out = {}
    for name in students:
        mean_nll = nll[name] / count
        out[name] = LMScores(
            perplexity=math.exp(mean_nll),
            nll=mean_nll,
            kl_to_teacher=kl[name] / positions if teacher is not None else None,
            top1_agreement=agree[name] / positions if teacher is not None else None,
            tokens=count,
        )
    return out
