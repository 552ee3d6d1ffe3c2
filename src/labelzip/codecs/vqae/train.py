"""Training the VQ autoencoder on the KD objective it serves.

The fit streams: :func:`reservoir_sample` keeps a uniform random subset of at
most ``capacity`` labels from a single pass over any iterable of batches, so
memory is bounded whatever the label count, and training then runs several
epochs over that subset.

The loss is the sum over KD temperatures T of ``w_T * KL(teacher_T || decoded_T)``
(mean over labels) plus a commitment term, so one code serves students trained
at T=1 as well as at SRe2L's T=20.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from labelzip.codecs.base import LogitSource, check_logits, iterate_source
from labelzip.codecs.vqae.autoencoder import VQAutoencoder, normalize_logits
from labelzip.codecs.vqae.head import HeadQuantizer, apply_head_values
from labelzip.errors import InputError
from labelzip.ops.topk import row_topk

__all__ = [
    "TrainReport",
    "TrainSchedule",
    "kd_loss",
    "reservoir_sample",
    "top_ids",
    "top_ids_and_next",
    "train_autoencoder",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSchedule:
    """How long and how hard to train (all fields come from the codec config)."""

    steps: int
    batch_size: int
    learning_rate: float
    temperatures: tuple[float, ...]
    temperature_weights: tuple[float, ...]
    commit_weight: float
    seed: int


@dataclass(frozen=True)
class TrainReport:
    """What a fit did: labels seen and kept, steps, seconds, final loss."""

    labels_seen: int
    labels_kept: int
    steps: int
    seconds: float
    final_loss: float


def reservoir_sample(
    source: LogitSource,
    capacity: int,
    generator: torch.Generator,
    num_classes: int | None = None,
    max_bytes: int | None = None,
) -> tuple[torch.Tensor, int]:
    """A uniform random subset of at most ``capacity`` labels from one pass.

    Args:
        source: iterable of (B, C) logit batches, or a factory of one.
        capacity: the most labels kept (memory: capacity * C * 4 bytes).
        max_bytes: also keep at most this many bytes (caps capacity for large C).
        generator: seeded CPU generator (same stream + seed => same subset).
        num_classes: expected C, checked on every batch when given.

    Returns:
        ((n, C) float32 kept labels, total labels seen), n = min(capacity, seen).

    Raises:
        InputError: empty source, or a batch of the wrong shape or with NaN/Inf.
    """
    kept: torch.Tensor | None = None
    seen = 0
    for batch in _batches(iterate_source(source)):
        check_logits(batch, num_classes)
        if num_classes is None:
            num_classes = int(batch.shape[1])
        # Only the rows kept are widened to float32 (most of a long stream is not).
        batch = batch.detach()
        if kept is None:
            if max_bytes is not None:
                capacity = max(1, min(capacity, max_bytes // (4 * num_classes)))
            kept = torch.empty(capacity, num_classes)
        n = batch.shape[0]
        fill = max(0, min(capacity - seen, n))
        if fill:
            kept[seen : seen + fill] = batch[:fill].to("cpu", torch.float32)
        if fill < n:
            # Algorithm R, vectorised: item t replaces slot j ~ U[0, t] if j < capacity.
            t = torch.arange(seen + fill, seen + n, dtype=torch.float64) + 1.0
            slots = torch.floor(
                torch.rand(n - fill, generator=generator, dtype=torch.float64) * t
            ).long()
            take = slots < capacity
            rows = torch.nonzero(take).squeeze(1) + fill
            slots = slots[take]
            # Later items win on a repeated slot, as in the sequential algorithm.
            last = _last_occurrence(slots)
            kept[slots[last]] = batch[rows[last].to(batch.device)].to(
                "cpu", torch.float32
            )
        seen += n
    if kept is None or seen == 0:
        raise InputError("fit() got no labels: the source yielded no batches")
    if seen >= capacity:
        return kept, seen  # full: returned as is, no copy
    return kept[:seen].clone(), seen


def _batches(stream: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    for batch in stream:
        if isinstance(batch, torch.Tensor) and batch.dim() == 1:
            batch = batch.unsqueeze(0)
        yield batch


def _last_occurrence(values: torch.Tensor) -> torch.Tensor:
    """Positions of the last occurrence of each distinct value of a 1-D tensor."""
    if values.numel() == 0:
        return values
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    is_last = torch.ones_like(sorted_vals, dtype=torch.bool)
    is_last[:-1] = sorted_vals[1:] != sorted_vals[:-1]
    return order[is_last]


def top_ids(logits: torch.Tensor, num_ids: int) -> torch.Tensor:
    """(N, C) -> (N, K) int64 ids of the K largest logits, largest first.

    Ties break toward the lower class id, so the choice is deterministic.
    """
    return top_ids_and_next(logits, num_ids)[0]


def top_ids_and_next(
    logits: torch.Tensor, num_ids: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`top_ids`, and the largest logit outside those ids: (N, K), (N,).

    The second is the (K+1)-th largest value of each row, which the search
    finds anyway (:meth:`HeadQuantizer.quantize_logits` takes it to skip a
    pass over the rows); None when no class is left out or K is 0.
    """
    if num_ids == 0:
        ids = torch.zeros(logits.shape[0], 0, dtype=torch.int64, device=logits.device)
        return ids, None
    if num_ids >= logits.shape[1] or logits.shape[0] == 0:
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices
        return order[:, :num_ids], None
    # A partial top-k is far cheaper than the full sort (docs/vqae-design.md,
    # "Fast encode path") but promises no order among equal values, so the K candidates are re-sorted exactly
    # (by id, then stably by value). One more candidate shows whether a value
    # equal to the K-th was left out: then the fetched ones among the equal
    # values may not be the lowest ids, and those rows are completed exactly.
    values, index = row_topk(logits, num_ids + 1)
    following = values[:, num_ids]
    tied_at_cut = following == values[:, num_ids - 1]
    values, index = values[:, :num_ids], index[:, :num_ids]
    by_id = index.argsort(dim=1)
    values, index = values.gather(1, by_id), index.gather(1, by_id)
    by_value = values.argsort(dim=1, descending=True, stable=True)
    values, index = values.gather(1, by_value), index.gather(1, by_value)
    if bool(tied_at_cut.any()):
        rows = tied_at_cut.nonzero().squeeze(1)
        index[rows] = _fill_cut_ties(logits[rows], values[rows], index[rows])
    return index, following


def _fill_cut_ties(
    logits: torch.Tensor, values: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """Exact top ids of rows whose K-th value ties with a class left out.

    (B, C) logits and their (B, K) exactly sorted top-k candidates. The
    candidates above the K-th value are all of the row's (and in order); the
    remaining slots take the lowest ids among all classes equal to the K-th
    value, in ascending order.
    """
    num_ids, num_classes = index.shape[1], logits.shape[1]
    cut = values[:, -1:]
    above = (values > cut).sum(dim=1, keepdim=True)  # (B, 1), < K
    classes = torch.arange(num_classes, device=logits.device)
    # Larger key = lower id among the equal classes; 0 for the others.
    keys = torch.where(logits == cut, num_classes - classes, 0)
    equal = keys.topk(num_ids, dim=1).indices  # ascending ids of equal classes
    slot = torch.arange(num_ids, device=logits.device).unsqueeze(0)
    fill = equal.gather(1, (slot - above).clamp(min=0))
    return torch.where(slot < above, index, fill)


def kd_loss(
    teacher: torch.Tensor,
    decoded: torch.Tensor,
    temperatures: Sequence[float],
    weights: Sequence[float],
) -> torch.Tensor:
    """sum_T w_T * mean_n KL(softmax(teacher/T) || softmax(decoded/T)); (B, C) each."""
    total = decoded.new_zeros(())
    for t, w in zip(temperatures, weights, strict=True):
        log_p = F.log_softmax(teacher / t, dim=1)
        log_q = F.log_softmax(decoded / t, dim=1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
        total = total + w * kl
    return total


def train_autoencoder(
    model: VQAutoencoder,
    data: torch.Tensor,
    scale: float,
    schedule: TrainSchedule,
    labels_seen: int,
    head: HeadQuantizer | None = None,
) -> TrainReport:
    """Train ``model`` on (n, C) teacher logits ``data`` in place; CPU, seeded.

    Adam with a short warm-up and cosine decay; batches are sampled with a
    seeded generator, so the same data and seed give the same weights. With a
    ``head`` quantizer the stored ids' values are pinned as at decode time, so
    the decoder learns the tail given an exact head.
    """
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(schedule.seed)
    optim = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=schedule.learning_rate
    )
    warmup = max(1, schedule.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, schedule.steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    n = data.shape[0]
    batch_size = min(schedule.batch_size, n)
    model.train()
    loss_value = float("nan")
    for step in range(schedule.steps):
        for group in optim.param_groups:
            group["lr"] = schedule.learning_rate * lr_at(step)
        rows = torch.randint(0, n, (batch_size,), generator=gen)
        teacher = data[rows]
        ids = top_ids(teacher, model.num_ids)
        decoded, q = model(normalize_logits(teacher, scale), ids, gen)
        if head is not None:
            decoded = apply_head_values(decoded, ids, head.round_trip(teacher, ids))
        loss = kd_loss(
            teacher, decoded, schedule.temperatures, schedule.temperature_weights
        )
        loss = loss + schedule.commit_weight * q.commit_loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        loss_value = float(loss.detach())
        if step % 500 == 0 or step == schedule.steps - 1:
            logger.info(
                "vqae step %d/%d loss %.5f", step + 1, schedule.steps, loss_value
            )
    model.eval()
    seconds = time.perf_counter() - start
    return TrainReport(labels_seen, n, schedule.steps, seconds, loss_value)
