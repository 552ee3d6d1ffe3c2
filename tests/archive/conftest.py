"""Fixtures for archive tests: small (N, E, C) view logits and fitted codecs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from labelzip.codecs.base import Codec
from labelzip.codecs.registry import create_codec


@pytest.fixture
def views(make_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    """(48, 4, 20) teacher logits: 48 samples x 4 views x 20 classes, seed 3."""
    return make_logits(48 * 4, 20, 3).reshape(48, 4, 20)


@pytest.fixture
def fitted() -> Callable[..., Codec]:
    """``fitted(name, logits_2d, **options)``: a codec fitted on (N, C) logits."""

    def build(name: str, logits: torch.Tensor, **options: Any) -> Codec:
        codec = create_codec(name, **options)
        return codec.fit([logits.reshape(-1, logits.shape[-1])])

    return build
