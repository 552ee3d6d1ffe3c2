"""Fidelity of decoded soft labels against the teacher's, at a KD temperature.

What a student sees is ``softmax(logits / T)``, so every metric takes the
temperature it is measured at. Decoded logits may hold ``-inf`` (a top-k decoder
that puts no mass outside the kept ids); KL then uses a floor on the decoded
probability (:data:`LOG_PROB_FLOOR`) so the number stays finite but still
charges for the mass the decoder dropped.
"""

from __future__ import annotations

import torch

from labelzip.errors import InputError

__all__ = [
    "LOG_PROB_FLOOR",
    "kl_divergence",
    "top1_agreement",
    "top2_agreement",
    "topk_overlap",
]

# log(1e-8): decoded probabilities below this count as this in KL(teacher || decoded).
LOG_PROB_FLOOR = -18.420680743952367


def _check_pair(teacher: torch.Tensor, decoded: torch.Tensor) -> None:
    if teacher.shape != decoded.shape or teacher.dim() != 2:
        raise InputError(
            "teacher and decoded logits must both have shape (N, C); got "
            f"{tuple(teacher.shape)} and {tuple(decoded.shape)}"
        )


def kl_divergence(
    teacher_logits: torch.Tensor,
    decoded_logits: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-label KL(teacher_T || decoded_T) in nats.

    Args:
        teacher_logits: (N, C) reference logits.
        decoded_logits: (N, C) logits (or log-probabilities) after a codec round trip.
        temperature: the KD temperature T both sides are softened with.

    Returns:
        (N,) float32 tensor.
    """
    _check_pair(teacher_logits, decoded_logits)
    t = float(temperature)
    log_p = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    log_q = torch.log_softmax(decoded_logits.float() / t, dim=-1)
    log_q = log_q.clamp(min=LOG_PROB_FLOOR)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def top1_agreement(teacher_logits: torch.Tensor, decoded_logits: torch.Tensor) -> float:
    """Fraction of labels whose decoded argmax equals the teacher's."""
    _check_pair(teacher_logits, decoded_logits)
    same = teacher_logits.argmax(dim=-1) == decoded_logits.argmax(dim=-1)
    return float(same.float().mean())


def top2_agreement(teacher_logits: torch.Tensor, decoded_logits: torch.Tensor) -> float:
    """Fraction of labels whose decoded two largest classes are the teacher's two
    (in either order). A decoded second place shared with a third class (a flat
    tail, as top-k keeps at K = 1) does not count: it names no second class."""
    _check_pair(teacher_logits, decoded_logits)
    if teacher_logits.shape[-1] < 2:
        return 1.0
    k = min(3, teacher_logits.shape[-1])
    own = teacher_logits.topk(2, dim=-1).indices.sort(dim=-1).values
    values, indices = decoded_logits.topk(k, dim=-1)
    same = (indices[:, :2].sort(dim=-1).values == own).all(dim=-1)
    if k == 3:
        same &= values[:, 1] > values[:, 2]
    return float(same.float().mean())


def topk_overlap(
    teacher_logits: torch.Tensor, decoded_logits: torch.Tensor, k: int = 5
) -> float:
    """Mean |top-k(teacher) ∩ top-k(decoded)| / k."""
    _check_pair(teacher_logits, decoded_logits)
    k = min(k, teacher_logits.shape[-1])
    t_idx = teacher_logits.topk(k, dim=-1).indices
    d_idx = decoded_logits.topk(k, dim=-1).indices
    hits = (t_idx.unsqueeze(-1) == d_idx.unsqueeze(-2)).any(dim=-1).float().sum(-1)
    return float((hits / k).mean())
