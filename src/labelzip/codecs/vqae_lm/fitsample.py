"""The fit sample of the LM codecs: log-probs of the first labels of a source."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from labelzip.errors import InputError
from labelzip.ops.logits import LogitSource, check_logits, iterate_source

__all__ = ["ROW_BLOCK", "collect_log_probs", "first_labels"]

ROW_BLOCK = 256  # rows of (rows, C) temporaries at once


def collect_log_probs(source: LogitSource, limit: int) -> torch.Tensor:
    """(n, C) float32 log-probs of the first ``limit`` labels of ``source``."""
    rows: list[torch.Tensor] = []
    seen = 0
    num_classes: int | None = None
    for batch in first_labels(source, limit):
        check_logits(batch, num_classes)
        num_classes = int(batch.shape[1])
        for part in batch.detach().split(ROW_BLOCK):
            rows.append(torch.log_softmax(part.float().cpu(), dim=1))
        seen += int(batch.shape[0])
    if not rows:
        raise InputError("fit() got an empty source; pass at least one (B, C) batch")
    return torch.cat(rows)


def first_labels(source: LogitSource, limit: int) -> Iterator[torch.Tensor]:
    seen = 0
    for batch in iterate_source(source):
        if seen >= limit:
            return
        take = batch[: limit - seen]
        seen += int(take.shape[0])
        yield take
