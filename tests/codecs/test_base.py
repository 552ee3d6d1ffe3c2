"""The codec contract: input validation, source iteration, shared accounting."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pytest
import torch

from labelzip.codecs.base import (
    Codec,
    CodecConfig,
    EncodedBlock,
    LogitSource,
    all_finite,
    check_logits,
    iterate_source,
)
from labelzip.errors import InputError, NotFittedError


class _SignConfig(CodecConfig):
    kind: Literal["sign"] = "sign"


class _SignCodec(Codec):
    """Minimal codec (one bit per value) exercising the base-class helpers."""

    kind: ClassVar[str] = "sign"
    codec_id: ClassVar[int] = 999
    config_class: ClassVar[type[CodecConfig]] = _SignConfig

    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> _SignCodec:
        self.num_classes = int(next(iter(iterate_source(source))).shape[1])
        return self

    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        check_logits(logits, self._require_fitted("encode"))
        return EncodedBlock(len(logits), (logits > 0).to(torch.uint8).reshape(-1))

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        c = self._require_fitted("decode")
        return block.data.to(device).float().reshape(block.num_labels, c)

    def model_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "table": torch.zeros(3, dtype=torch.float16),
            "ids": torch.zeros(2, dtype=torch.int32),
        }

    def to_config(self) -> dict[str, Any]:
        return {"kind": "sign", "num_classes": self.num_classes}

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> _SignCodec:
        codec = cls(_SignConfig())
        codec.num_classes = config["num_classes"]
        return codec


def test_check_logits_accepts_and_returns_same_tensor() -> None:
    x = torch.randn(3, 4)
    assert check_logits(x) is x
    assert check_logits(x.half(), 4) is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([[1.0, 2.0]], "must be a torch.Tensor, got list"),
        (torch.zeros(2, 3, 4), r"shape \(N, C\), got \(2, 3, 4\); flatten"),
        (
            torch.zeros(2, 3, dtype=torch.int64),
            "floating-point tensor, got torch.int64",
        ),
        (torch.zeros(2, 5), "fitted for 4 classes, logits have 5"),
        (torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), "NaN or Inf in 1 of 1 rows"),
        (
            torch.tensor([[0.0, 0, 0, 0], [float("-inf"), 0, 0, 0]]),
            "NaN or Inf in 1 of 2 rows",
        ),
    ],
)
def test_check_logits_errors(value: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_logits(value, 4)


def test_iterate_source_list_and_factory() -> None:
    batches = [torch.zeros(2, 3), torch.ones(1, 3)]
    assert list(iterate_source(batches)) == batches
    calls: list[int] = []

    def factory() -> list[torch.Tensor]:
        calls.append(1)
        return batches

    assert len(list(iterate_source(factory))) == 2
    assert len(list(iterate_source(factory))) == 2
    assert len(calls) == 2  # a fresh pass per call
    single = torch.zeros(2, 3)
    assert iterate_source(single) is single  # a tensor is iterable, not a factory


def test_encoded_block_nbytes() -> None:
    assert EncodedBlock(2, torch.zeros(7, dtype=torch.uint8)).nbytes == 7


def test_not_fitted_and_account() -> None:
    codec = _SignCodec(_SignConfig())
    assert not codec.is_fitted
    with pytest.raises(
        NotFittedError, match=r"_SignCodec.account called before fit\(\)"
    ):
        codec.account(1, 1)
    codec.fit([torch.zeros(2, 8)])
    assert codec.is_fitted and codec.expected_payload_bits() is None
    assert codec.model_bytes() == 3 * 2 + 2 * 4
    block = codec.encode(torch.randn(10, 8))
    account = codec.account(10, block.nbytes, side_bytes=6, header_bytes=20)
    assert account.codec == "sign" and account.num_classes == 8
    assert account.model_bytes == 14 and account.total_bytes == 80 + 14 + 6 + 20
    assert account.ratio == pytest.approx(160 / 120)
    assert codec.account(10, 80, reference="fp32").reference_bytes == 320


def test_for_target_is_opt_in() -> None:
    with pytest.raises(NotImplementedError, match="_SignCodec has no rate control"):
        _SignCodec.for_target(num_labels=1, num_classes=2, budget_bytes=10)


def test_config_is_frozen_and_strict() -> None:
    config = _SignConfig()
    with pytest.raises(Exception, match="frozen"):
        config.kind = "other"  # type: ignore[misc]
    with pytest.raises(Exception, match="extra"):
        _SignConfig(unknown=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
def test_all_finite_matches_isfinite(dtype: torch.dtype) -> None:
    base = torch.randn(64, 30).to(dtype)
    assert all_finite(base) and all_finite(base[:, ::3]) and all_finite(base[:0])
    big = torch.finfo(dtype).max
    overflow = torch.full((8, 8), big, dtype=dtype)  # finite, but its sum is not
    assert all_finite(overflow) and all_finite(-overflow)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for view in (lambda t: t, lambda t: t[:, ::3]):
            x = base.clone()
            x[5, 9] = bad
            assert not all_finite(view(x))
        y = overflow.clone()
        y[0, 0] = bad
        assert not all_finite(y)
