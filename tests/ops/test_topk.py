"""Row-wise top-k: the values of ``torch.topk``, ids that hold them, on both paths."""

from __future__ import annotations

import pytest
import torch

from labelzip.ops.topk import row_topk


def _check(values: torch.Tensor, k: int) -> None:
    top, index = row_topk(values, k)
    assert index.dtype == torch.int64
    assert torch.equal(top, values.topk(k, dim=1).values)
    assert torch.equal(values.gather(1, index), top)
    assert bool((index.sort(dim=1).values.diff(dim=1) > 0).all())  # distinct ids


@pytest.mark.parametrize("k", [1, 5, 15, 16, 17, 24, 40])
@pytest.mark.parametrize("width", [1000, 997, 64, 100])
def test_values_and_ids_match_torch_topk(k: int, width: int) -> None:
    g = torch.Generator().manual_seed(k * 10_000 + width)
    dense = torch.randn(300, width, generator=g)
    ties = torch.randint(-4, 5, (300, width), generator=g).float()
    for values in (dense, ties, dense.half().float(), torch.zeros(3, width)):
        _check(values, min(k, width))


def test_infinite_values_never_name_a_padding_column() -> None:
    values = torch.full((4, 997), -torch.inf)  # 997 columns: padded blocks
    values[:, :5] = torch.arange(5.0)  # fewer than k finite entries
    _check(values, 17)
    values[1] = torch.randn(997)
    _check(values, 17)


def test_strided_input() -> None:
    values = torch.randn(1000, 200).t()  # (200, 1000), not contiguous
    _check(values, 17)
