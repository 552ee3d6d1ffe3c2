"""Code the explicit class ids as ranks under a prior predicted from the VQ codes.

A label's VQ codes already say roughly which classes are high, so the stored
top ids are mostly among the first few classes of a ranking predicted from the
codes, and their ranks cost an entropy coder far fewer bits than raw ids
(docs/vqae-design.md, section 6, "Entropy coding").

The prior is a linear map from the dequantized latent to C class scores. Encoder
and decoder must rank classes *identically* on every device, so it is computed
in exact integer arithmetic: int8 copies of the codebooks, int8 weights and
integer biases, all small enough that every partial sum stays below 2**24, so a
float32 matmul returns exact integers whatever the summation order or device.
Ties are broken by class id (lower id ranks first).

The rank of slot i's id counts the classes with a larger key, not counting the
ids of earlier slots (they cannot repeat). Ranks at or beyond the alphabet's
last symbol are escaped and the id is then coded raw.
"""

from __future__ import annotations

import math

import torch

from labelzip.errors import ArchiveFormatError

__all__ = ["RANK_ALPHABET", "IdPrior"]

# Rank symbols per slot (the last one escapes to a raw id when C is larger).
RANK_ALPHABET = 128

# Integer partial sums must stay below this for float32 to represent them exactly.
_EXACT_LIMIT = 1 << 24

PRIOR_KEYS = ("prior_codebooks", "prior_weight", "prior_bias")

# Candidate depth of the first decoding pass, and extra candidates fetched to
# see ties at the cut.
_SHALLOW_DEPTH = 40
_TIE_MARGIN = 8


class IdPrior:
    """Exact integer linear class prior from VQ codes.

    Args:
        codebooks: (R, M, k, D) int8 copy of the codebooks.
        weight: (C, M*D) int8 weights.
        bias: (C,) int32 biases.
    """

    def __init__(
        self, codebooks: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> None:
        if codebooks.dtype != torch.int8 or weight.dtype != torch.int8:
            raise ArchiveFormatError("id prior codebooks and weight must be int8")
        if bias.dtype != torch.int32 or bias.shape != weight.shape[:1]:
            raise ArchiveFormatError(
                f"id prior bias must be int32 of shape ({weight.shape[0]},), got "
                f"{tuple(bias.shape)} {bias.dtype}"
            )
        latent = codebooks.shape[1] * codebooks.shape[3]
        if weight.shape[1] != latent:
            raise ArchiveFormatError(
                f"id prior weight has {weight.shape[1]} inputs, the codebooks give {latent}"
            )
        bound = _sum_bound(codebooks, weight, bias)
        if bound >= _EXACT_LIMIT:
            raise ArchiveFormatError(
                f"id prior sums reach {bound} >= 2**24: not exact in float32"
            )
        self.codebooks = codebooks
        self.weight = weight
        self.bias = bias
        self._cache: dict[str, tuple[torch.Tensor, ...]] = {}

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def fit(
        cls, codebooks: torch.Tensor, codes: torch.Tensor, logits: torch.Tensor
    ) -> IdPrior:
        """Least-squares fit of centred logits on the latent, then integer rounding.

        Args:
            codebooks: (R, M, k, D) float codebooks as the decoder stores them.
            codes: (n, R*M) code indices of the fit labels.
            logits: (n, C) their teacher logits.
        """
        stages, chunks, _, dim = codebooks.shape
        latent = chunks * dim
        # Largest integer magnitude q for inputs and weights that keeps sums exact.
        q = min(127, int(math.sqrt((_EXACT_LIMIT // 2) / (stages * latent))))
        in_scale = float(codebooks.abs().max().clamp(min=1e-12)) / q
        books_q = torch.round(codebooks.double() / in_scale).clamp(-q, q)
        u = _latent(books_q, codes).double()  # integer-valued inputs the decoder sees
        y = logits.double() - logits.double().mean(dim=1, keepdim=True)
        design = torch.cat([u, torch.ones(u.shape[0], 1, dtype=torch.float64)], dim=1)
        ridge = 1e-6 * (design * design).sum(0).mean() * torch.eye(latent + 1)
        solution = torch.linalg.solve(design.T @ design + ridge, design.T @ y)
        weight, bias = solution[:-1].T, solution[-1]  # (C, L), (C,)
        w_scale = float(weight.abs().max().clamp(min=1e-12)) / q
        weight_q = torch.round(weight / w_scale).clamp(-q, q)
        limit = _EXACT_LIMIT // 2 - 1
        bias_q = torch.round(bias / w_scale).clamp(-limit, limit)
        return cls(
            books_q.to(torch.int8), weight_q.to(torch.int8), bias_q.to(torch.int32)
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(
            zip(PRIOR_KEYS, (self.codebooks, self.weight, self.bias), strict=True)
        )

    @classmethod
    def from_stored(cls, tensors: dict[str, torch.Tensor]) -> IdPrior:
        missing = [k for k in PRIOR_KEYS if k not in tensors]
        if missing:
            raise ArchiveFormatError(f"vqae id prior lacks {', '.join(missing)}")
        return cls(*(tensors[k].cpu() for k in PRIOR_KEYS))

    def table_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def scores(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, R*M) codes -> (N, C) float32 class scores, exact integers.

        Classes rank by score, ties by lower class id first.
        """
        books, weight, bias = self._on(codes.device)
        return torch.addmm(bias, _latent(books, codes), weight.T)

    def ranks(self, scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(N, C) scores, (N, K) ids -> (N, K) ranks (earlier slots' ids skipped).

        Scores are exact integers, so one int64 key per class (score, then
        lower id first) orders classes as the decoder does, with one
        comparison per class and slot.
        """
        classes = torch.arange(scores.shape[1], device=scores.device)
        keys = _keys(scores, classes, scores.shape[1])
        own = keys.gather(1, ids)  # (N, K)
        ranks = torch.empty_like(ids)
        for slot in range(ids.shape[1]):
            value = own[:, slot : slot + 1]
            count = (keys > value).sum(dim=1)
            # Earlier slots' ids are never candidates for this one: do not count them.
            count -= (own[:, :slot] > value).sum(dim=1)
            ranks[:, slot] = count
        return ranks

    def ids(
        self, scores: torch.Tensor, ranks: torch.Tensor, raw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inverse of :meth:`ranks`: (N, C) scores, (N, K) ranks -> (N, K) ids.

        Args:
            raw: (N, K) ids already known (escaped slots), -1 elsewhere; a known
                slot's rank is ignored.
        """
        n, num_ids = ranks.shape
        if n == 0 or num_ids == 0:
            return torch.zeros_like(ranks)
        known = (
            raw >= 0 if raw is not None else torch.zeros_like(ranks, dtype=torch.bool)
        )
        free_ranks = ranks.masked_fill(known, 0)
        # Most labels need only a shallow candidate list: all rows get one, and
        # the few with deep ranks are redone with a deeper one.
        need = free_ranks.max(dim=1).values + num_ids  # candidates each row needs
        depth = min(_SHALLOW_DEPTH, scores.shape[1])
        out = _pick(_exact_top(scores, depth), free_ranks.clamp(max=depth - 1), raw)
        deep = (need > depth).nonzero().squeeze(1)
        if deep.numel():
            depth = min(int(need[deep].max()), scores.shape[1])
            order = _exact_top(scores[deep], depth)
            out[deep] = _pick(
                order, free_ranks[deep], None if raw is None else raw[deep]
            )
        return out

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._cache:
            self._cache[key] = (
                self.codebooks.to(device=device, dtype=torch.float32),
                self.weight.to(device=device, dtype=torch.float32),
                self.bias.to(device=device, dtype=torch.float32),
            )
        return self._cache[key]


def _exact_top(scores: torch.Tensor, depth: int) -> torch.Tensor:
    """(N, C) exact-integer scores -> (N, depth) class ids in exact rank order.

    ``topk`` on floats does not promise an order among ties, so it fetches a
    few extra candidates; these are then sorted by the exact int64 key
    (score, then lower id first). A row whose tie run reaches past the fetched
    candidates is redone on the full row.
    """
    num_classes = scores.shape[1]
    fetch = min(num_classes, depth + _TIE_MARGIN)
    values, index = scores.topk(fetch, dim=1, sorted=False)
    order = _sort_exact(values, index, num_classes)[:, :depth]
    if fetch < num_classes:
        # Sure only if the depth-th best beats every class left out.
        kth = scores.gather(1, order[:, -1:]).squeeze(1)
        unsure = values.min(dim=1).values >= kth
        if bool(unsure.any()):
            rows = unsure.nonzero().squeeze(1)
            full = torch.arange(num_classes, device=scores.device).expand(len(rows), -1)
            order[rows] = _sort_exact(scores[rows], full, num_classes)[:, :depth]
    return order


def _sort_exact(
    values: torch.Tensor, index: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Sort (N, F) candidates by score desc, then id asc; returns their ids."""
    keys = _keys(values, index, num_classes)
    return index.gather(1, keys.argsort(dim=1, descending=True))


def _keys(values: torch.Tensor, index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 rank keys of exact-integer scores of classes ``index``: larger ranks first.

    ``score * C + (C - 1 - class)``: a higher score first, then the lower id.
    """
    return values.to(torch.int64) * num_classes + (num_classes - 1 - index)


def _pick(
    order: torch.Tensor, ranks: torch.Tensor, raw: torch.Tensor | None
) -> torch.Tensor:
    """Slot by slot: the class at position ``rank`` among the not-yet-taken ones.

    Works on positions in ``order`` rather than masks: slot i's position p is
    its rank plus the number of earlier slots' positions at or before p, a
    fixed point reached in at most i steps. (N, F) order, (N, K) -> (N, K) ids.
    """
    n, num_ids = ranks.shape
    depth = order.shape[1]
    out = torch.zeros_like(ranks)
    taken = torch.full_like(ranks, depth)  # positions of earlier slots' ids (F = none)
    for slot in range(num_ids):
        rank = ranks[:, slot]
        position = rank
        before = taken[:, :slot]
        for _ in range(slot):
            position = rank + (before <= position.unsqueeze(1)).sum(dim=1)
        position = position.clamp(max=depth - 1)
        chosen = order.gather(1, position.unsqueeze(1)).squeeze(1)
        if raw is not None:
            known = raw[:, slot] >= 0
            if bool(known.any()):
                chosen = torch.where(known, raw[:, slot], chosen)
                # A raw id inside the candidates still takes its position.
                match = order == chosen.unsqueeze(1)
                inside = match.any(dim=1)
                where = match.to(torch.int8).argmax(dim=1)
                position = torch.where(
                    known, torch.where(inside, where, depth), position
                )
        out[:, slot] = chosen
        taken[:, slot] = position
    return out


def _latent(books: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(R, M, k, D) books, (N, R*M) codes -> (N, M*D) summed codewords."""
    stages, chunks = books.shape[0], books.shape[1]
    staged = codes.view(codes.shape[0], stages, chunks)
    chunk = torch.arange(chunks, device=codes.device)
    u = books[0][chunk, staged[:, 0]]
    for stage in range(1, stages):
        u = u + books[stage][chunk, staged[:, stage]]
    return u.reshape(codes.shape[0], -1)


def _sum_bound(
    codebooks: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> int:
    """Largest |partial sum| the integer prior can produce."""
    stages = codebooks.shape[0]

    def peak(t: torch.Tensor) -> int:
        return int(t.to(torch.int64).abs().max()) if t.numel() else 0

    max_in, max_w, max_b = stages * peak(codebooks), peak(weight), peak(bias)
    return weight.shape[1] * max_in * max_w + max_b
