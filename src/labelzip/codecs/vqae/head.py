"""Explicit values for the stored top ids: a few bits that pin down the head.

A VQ latent describes the overall shape of a label well (what KL at T=4 and
T=20 measure) but the exact probability of the top classes only roughly, and
at T=1 those few probabilities are most of the KL. So each stored id may also
carry a uniformly quantized *conditional log-odds*::

    v_i = z[id_i] - logsumexp(z[c] for c not in {id_1, ..., id_i})

i.e. ``log p_i - log(1 - p_1 - ... - p_i)`` at T=1. Decoding sets the head
logits from the v_i on top of whatever the decoder gives the other classes,
last slot first, so that every v_i holds exactly (up to quantization): the
teacher's top probabilities come back to within half a quantization step, and
the rest of the mass keeps the decoder's shape.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "HeadQuantizer",
    "apply_head_values",
    "head_values",
    "lse_error_bound",
    "outside_logsumexp",
]


def head_values(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Conditional log-odds of the (B, K) ``ids`` in (B, C) ``logits`` -> (B, K)."""
    num_ids = ids.shape[1]
    masked = logits.clone()
    out = []
    for slot in range(num_ids):
        masked = masked.scatter(1, ids[:, slot : slot + 1], float("-inf"))
        rest = torch.logsumexp(masked, dim=1)
        out.append(logits.gather(1, ids[:, slot : slot + 1]).squeeze(1) - rest)
    if not out:
        return logits.new_zeros(logits.shape[0], 0)
    return torch.stack(out, dim=1)


def apply_head_values(
    logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, inplace: bool = False
) -> torch.Tensor:
    """Set the logits of (B, K) ``ids`` so their conditional log-odds equal ``values``.

    The other classes keep their (B, C) ``logits``. Differentiable in ``logits``;
    with ``inplace=True`` (no autograd) it overwrites and returns ``logits``.
    """
    num_ids = ids.shape[1]
    if num_ids == 0:
        return logits
    if inplace:
        rest = logits.scatter_(1, ids, float("-inf"))
    else:
        rest = logits.scatter(1, ids, float("-inf"))
    lse = torch.logsumexp(rest, dim=1)  # mass outside all stored ids
    head = []
    for slot in range(num_ids - 1, -1, -1):
        z = values[:, slot] + lse
        head.append(z)
        lse = torch.logaddexp(lse, z)
    head_logits = torch.stack(head[::-1], dim=1)  # (B, K)
    if inplace:
        return rest.scatter_(1, ids, head_logits)
    return rest.scatter(1, ids, head_logits)


def outside_logsumexp(
    logits: torch.Tensor, ids: torch.Tensor, outside_max: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-sum-exp of each row's logits outside its (B, K) ``ids`` -> (B,).

    ``torch.logsumexp`` of the row with the ids set to -inf. Given
    ``outside_max``, the largest of those logits (B,), it skips the masked
    copy and the pass that finds that maximum, and does the rest of
    ``torch.logsumexp``'s arithmetic (subtract the maximum, exp, sum, log, add
    it back) in one scratch tensor: the same float32 operations on the same
    values.
    """
    if outside_max is None or not bool(torch.isfinite(outside_max).all()):
        return torch.logsumexp(logits.scatter(1, ids, float("-inf")), dim=1)
    peak = outside_max.to(logits.dtype)
    shifted = logits - peak.unsqueeze(1)
    shifted.scatter_(1, ids, float("-inf"))
    return shifted.exp_().sum(dim=1).log_().add_(peak)


def lse_error_bound(
    num_classes: int, logit: torch.Tensor, rest: torch.Tensor
) -> torch.Tensor:
    """Bound on how far two float32 evaluations of a conditional log-odds can differ.

    The value is ``logit - rest``, ``rest = m + log(sum exp(x - m))`` over at most
    ``num_classes`` logits with ``m`` their max. The sum's terms are at most 1
    and their arguments' rounding moves each by at most ``u/e`` relative, and
    the summation adds at most ``num_classes`` units ``u`` of relative error in
    any order: about ``2 * num_classes * u`` absolute after the log. The final
    additions round at the magnitude of ``logit``, ``rest`` and ``m`` (``|m| <=
    |rest| + log C``). Doubled for the two evaluations compared, and doubled
    again as a margin.
    """
    unit = 2.0**-24
    magnitude = 1.0 + logit + 2.0 * rest + math.log(num_classes)
    return 4.0 * unit * (2.0 * num_classes + 4.0 * magnitude)


def _slot_value(logits: torch.Tensor, ids: torch.Tensor, slot: int) -> torch.Tensor:
    """Column ``slot`` of :func:`head_values` as it computes it, (B, C) -> (B,)."""
    masked = logits.scatter(1, ids[:, : slot + 1], float("-inf"))
    rest = torch.logsumexp(masked, dim=1)
    return logits.gather(1, ids[:, slot : slot + 1]).squeeze(1) - rest


class HeadQuantizer:
    """Uniform scalar quantizer of each slot's conditional log-odds.

    Args:
        low, high: per-slot range (K,) each, fitted on training labels.
        bits: bits per value (levels = 2**bits, the ends included).
    """

    def __init__(self, low: list[float], high: list[float], bits: int) -> None:
        self.low = torch.tensor(low, dtype=torch.float32)
        self.high = torch.tensor(high, dtype=torch.float32)
        self.bits = bits

    @classmethod
    def fit(
        cls, logits: torch.Tensor, ids: torch.Tensor, bits: int, tail: float = 1e-3
    ) -> HeadQuantizer:
        """Range = the [tail, 1 - tail] quantiles of each slot's values (clamped beyond)."""
        values = head_values(logits, ids).to(torch.float64)
        low = torch.quantile(values, tail, dim=0)
        high = torch.quantile(values, 1.0 - tail, dim=0)
        high = torch.maximum(high, low + 1e-3)
        return cls([float(v) for v in low], [float(v) for v in high], bits)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        """(B, K) float values -> (B, K) int64 levels in [0, 2**bits)."""
        low, high = self.low.to(values.device), self.high.to(values.device)
        unit = (values.float().clamp(min=low, max=high) - low) / (high - low)
        return torch.round(unit * (self.levels - 1)).to(torch.int64)

    def quantize_logits(
        self,
        logits: torch.Tensor,
        ids: torch.Tensor,
        outside_max: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``quantize(head_values(logits, ids))`` bit for bit, in one pass over C.

        :func:`head_values` takes one masked log-sum-exp over all C classes per
        slot. Here one log-sum-exp gives the mass outside all K ids, and each
        slot's mass adds the later ids' logits in float64 (K terms). That value
        can differ from :func:`head_values`' own float32 rounding by a bound
        (:func:`lse_error_bound`), so an element whose level position lies
        within that bound of a rounding boundary could round the other way:
        those elements are recomputed the reference way. The levels, and so
        the bytes, equal the reference's. (B, C) logits, (B, K) ids -> (B, K);
        ``outside_max``: the largest logit outside the ids, (B,), if known
        (:func:`outside_logsumexp`).
        """
        num_ids = ids.shape[1]
        if num_ids == 0 or logits.shape[0] == 0:
            return self.quantize(head_values(logits, ids))
        logits = logits.float()
        top = logits.gather(1, ids)  # (B, K)
        outside = outside_logsumexp(logits, ids, outside_max)
        rest = torch.empty_like(top, dtype=torch.float64)
        acc = outside.double()
        wide = top.double()
        for slot in range(num_ids - 1, -1, -1):
            rest[:, slot] = acc
            acc = torch.logaddexp(acc, wide[:, slot])
        values = (wide - rest).float()
        levels = self.quantize(values)
        # Position of each value on the level grid, and how far the reference
        # value could be from it there.
        low, high = self.low.to(values.device), self.high.to(values.device)
        step = (self.levels - 1) / (high - low).double()
        position = (values.double().clamp(min=low, max=high) - low) * step
        slack = lse_error_bound(logits.shape[1], wide.abs(), rest.abs())
        slack = slack * step + 1e-5 * self.levels
        near = (position - position.floor() - 0.5).abs() <= slack
        for slot in near.any(dim=0).nonzero().flatten().tolist():
            rows = near[:, slot].nonzero().flatten()
            exact = values[rows].clone()
            exact[:, slot] = _slot_value(logits[rows], ids[rows], slot)
            levels[rows, slot] = self.quantize(exact)[:, slot]
        return levels

    def dequantize(self, levels: torch.Tensor) -> torch.Tensor:
        """(B, K) int levels -> (B, K) float32 values."""
        low, high = self.low.to(levels.device), self.high.to(levels.device)
        return low + levels.to(torch.float32) * ((high - low) / (self.levels - 1))

    def round_trip(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """What the decoder sees for these labels: dequantize(quantize(values))."""
        return self.dequantize(self.quantize(head_values(logits, ids)))
