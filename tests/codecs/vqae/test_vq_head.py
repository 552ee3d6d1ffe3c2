from __future__ import annotations

import torch

from labelzip.codecs.vqae.head import HeadQuantizer, apply_head_values, head_values
from labelzip.codecs.vqae.train import top_ids


def _logits(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 12, generator=g) * 3


def test_values_are_conditional_log_odds() -> None:
    logits = _logits().double()
    ids = top_ids(logits, 2)
    values = head_values(logits, ids)
    p = torch.softmax(logits, dim=1)
    p1, p2 = p.gather(1, ids).unbind(1)
    assert torch.allclose(values[:, 0], torch.log(p1 / (1 - p1)), atol=1e-9)
    assert torch.allclose(values[:, 1], torch.log(p2 / (1 - p1 - p2)), atol=1e-9)


def test_apply_restores_the_head_on_any_tail() -> None:
    logits = _logits(1)
    ids = top_ids(logits, 3)
    values = head_values(logits, ids)
    other = _logits(2)  # a decoder's wrong guess
    fixed = apply_head_values(other, ids, values)
    # The head probabilities are the teacher's, exactly.
    p_true = torch.softmax(logits, 1).gather(1, ids)
    p_fixed = torch.softmax(fixed, 1).gather(1, ids)
    assert torch.allclose(p_fixed, p_true, atol=1e-5)
    # The other classes keep the decoder's relative shape.
    mask = torch.ones_like(logits, dtype=torch.bool).scatter(1, ids, False)
    diff = (fixed - other)[mask].view(64, -1)
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-5)
    # Teacher logits come back exactly when the tail is the teacher's.
    again = apply_head_values(logits, ids, values)
    assert torch.allclose(
        torch.log_softmax(again, 1), torch.log_softmax(logits, 1), atol=1e-4
    )


def test_quantizer_error_is_half_a_step() -> None:
    logits = _logits(3)
    ids = top_ids(logits, 2)
    quant = HeadQuantizer.fit(logits, ids, bits=5, tail=0.0)
    levels = quant.quantize(head_values(logits, ids))
    assert int(levels.min()) >= 0 and int(levels.max()) < 32
    step = (quant.high - quant.low) / 31
    err = (quant.round_trip(logits, ids) - head_values(logits, ids)).abs()
    assert bool((err <= step / 2 + 1e-5).all())
    # Values outside the fitted range are clamped, not wrapped.
    assert quant.quantize(torch.tensor([[1e6, -1e6]])).tolist() == [[31, 0]]
