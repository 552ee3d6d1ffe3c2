"""Fidelity metrics: KL at a temperature, -inf handling, top-1 and top-k agreement."""

from __future__ import annotations

import math

import pytest
import torch

from labelzip.errors import InputError
from labelzip.ops.metrics import (
    LOG_PROB_FLOOR,
    kl_divergence,
    top1_agreement,
    top2_agreement,
    topk_overlap,
)


def test_kl_is_zero_for_identical_and_shifted_logits(
    teacher_logits: torch.Tensor,
) -> None:
    for t in (1.0, 4.0, 20.0):
        kl = kl_divergence(teacher_logits, teacher_logits, temperature=t)
        assert kl.shape == (512,) and kl.dtype == torch.float32
        assert float(kl.abs().max()) < 1e-5
        shifted = teacher_logits + torch.arange(512.0)[:, None]  # per-row constant
        assert float(kl_divergence(teacher_logits, shifted, t).abs().max()) < 1e-4


def test_kl_matches_hand_computation() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    decoded = torch.zeros(1, 2)  # q = (1/2, 1/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(kl_divergence(teacher, decoded)) == pytest.approx(expected, rel=1e-6)


def test_kl_positive_and_smaller_at_high_temperature(
    teacher_logits: torch.Tensor,
) -> None:
    g = torch.Generator().manual_seed(0)
    noisy = teacher_logits + torch.randn(teacher_logits.shape, generator=g)
    kl1 = kl_divergence(teacher_logits, noisy, 1.0)
    kl20 = kl_divergence(teacher_logits, noisy, 20.0)
    assert bool((kl1 > 0).all()) and bool((kl20 > 0).all())
    assert float(kl20.mean()) < float(kl1.mean())


def test_kl_with_minus_inf_is_finite_and_charges_dropped_mass() -> None:
    teacher = torch.zeros(1, 2)  # p = (1/2, 1/2)
    decoded = torch.tensor([[0.0, float("-inf")]])  # q = (1, 0)
    kl = kl_divergence(teacher, decoded)
    assert bool(torch.isfinite(kl).all())
    assert float(kl) == pytest.approx(math.log(0.5) - LOG_PROB_FLOOR / 2, rel=1e-6)


def test_top1_and_topk_overlap() -> None:
    teacher = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    decoded = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    assert top1_agreement(teacher, decoded) == 0.5
    assert topk_overlap(teacher, decoded, k=1) == 0.5
    assert topk_overlap(teacher, decoded, k=2) == 0.25  # row 0: 1 of 2; row 1: 0
    assert topk_overlap(teacher, decoded, k=10) == 1.0  # k clipped to C


def test_shape_errors() -> None:
    with pytest.raises(
        InputError, match=r"both have shape \(N, C\); got \(2, 3\) and \(2, 4\)"
    ):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(InputError, match="got \\(3,\\) and \\(3,\\)"):
        top1_agreement(torch.zeros(3), torch.zeros(3))
    with pytest.raises(InputError, match="shape"):
        topk_overlap(torch.zeros(2, 3), torch.zeros(3, 3))


def test_top2_agreement_counts_the_two_leading_classes_in_either_order() -> None:
    teacher = torch.tensor([[5.0, 4.0, 1.0, 0.0], [0.0, 3.0, 2.0, 1.0]])
    assert top2_agreement(teacher, teacher) == 1.0
    swapped = torch.tensor([[4.0, 5.0, 1.0, 0.0], [0.0, 2.0, 3.0, 1.0]])
    assert top2_agreement(teacher, swapped) == 1.0
    wrong_second = torch.tensor([[5.0, 1.0, 4.0, 0.0], [0.0, 3.0, 2.0, 1.0]])
    assert top2_agreement(teacher, wrong_second) == 0.5
    # a flat tail (top-k at K = 1) names no second class, whatever topk returns
    flat_tail = torch.tensor([[5.0, 1.0, 1.0, 1.0], [0.0, 3.0, 2.0, 2.0]])
    assert top2_agreement(teacher, flat_tail) == 0.0
    two = torch.tensor([[1.0, 0.0]])
    assert top2_agreement(two, -two) == 1.0  # two classes: always both
    with pytest.raises(InputError, match="shape"):
        top2_agreement(teacher, teacher[:, :3])
