"""The prior-shaped tail of vqae-sparse: the best exponent a of ``q_v ∝ prior_v ** a``.

A label's decoded tail mass is spread over the tokens it does not keep in
proportion to the unigram prior raised to a per-label exponent; these functions
score every exponent of a grid at once, in O(K) per exponent.
"""

from __future__ import annotations

import torch

__all__ = ["tail_scores", "tail_terms", "wide_dtype"]


def wide_dtype(device: torch.device | str | None) -> torch.dtype:
    return (
        torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    )


def tail_scores(
    log_p: torch.Tensor, ids: torch.Tensor, prior: torch.Tensor, grid: torch.Tensor
) -> torch.Tensor:
    """(n, G) tail part of ``sum_v p_v log q_v`` per exponent a (up to a constant).

    ``a * sum_tail p_v lp_v - P log Z_n(a)``, ``Z_n(a) = sum_{v not kept} e^{a lp_v}``.
    """
    prior = prior.to(log_p.device, torch.float64)
    p = log_p.exp()
    p_kept = p.gather(1, ids).double()
    a = (p @ prior.float()).double() - (p_kept * prior[ids]).sum(dim=1)
    mass = (1.0 - p_kept.sum(dim=1)).clamp_min(0.0)
    g = grid.to(log_p.device, torch.float64)
    log_z = torch.stack([torch.logsumexp(s * prior, dim=0) for s in g])
    kept = torch.exp(prior[ids][:, :, None] * g[None, None]).sum(dim=1)
    z = (log_z.exp()[None] - kept).clamp_min(torch.finfo(torch.float64).tiny)
    return (g[None] * a[:, None] - mass[:, None] * z.log()).cpu()


def tail_terms(
    p_prior: torch.Tensor,
    top: torch.Tensor,
    ids: torch.Tensor,
    prior: torch.Tensor,
    grid: torch.Tensor,
    log_z: torch.Tensor,
) -> torch.Tensor:
    """(n, G) ``a A - P log Z_n(a)`` from (n,) ``sum_v p_v lp_v``, (n, K) kept log-probs.

    ``A = sum_tail p_v lp_v`` (lp: the log prior), ``P`` the tail mass and
    ``Z_n(a) = Z(a) - sum_kept e^{a lp_v}`` with ``log Z(a)`` precomputed: O(K G).
    """
    dtype = wide_dtype(top.device)
    prior = prior.to(top.device, dtype)
    pk = top.to(dtype).exp()
    a = p_prior.to(dtype) - (pk * prior[ids]).sum(dim=1)
    mass = (1.0 - pk.sum(dim=1)).clamp_min(0.0)
    g = grid.to(top.device, dtype)
    kept = torch.exp(prior[ids][:, :, None] * g[None, None]).sum(dim=1)
    z = (log_z.to(top.device, dtype).exp()[None] - kept).clamp_min(
        torch.finfo(dtype).tiny
    )
    return g[None] * a[:, None] - mass[:, None] * z.log()
