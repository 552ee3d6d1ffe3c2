"""Storage accounting: totals, ratio against each reference, bits per label."""

from __future__ import annotations

import pytest

from labelzip.accounting import StorageAccount, reference_bytes
from labelzip.errors import ConfigError


def test_reference_bytes() -> None:
    assert reference_bytes(10, 1000) == 20_000
    assert reference_bytes(10, 1000, "bf16") == 20_000
    assert reference_bytes(10, 1000, "fp32") == 40_000
    with pytest.raises(
        ConfigError, match="unknown reference 'int8'; choose one of bf16, fp16, fp32"
    ):
        reference_bytes(1, 1, "int8")


def test_account_math() -> None:
    account = StorageAccount(
        codec="topk",
        num_labels=1000,
        num_classes=1000,
        payload_bytes=40_000,
        model_bytes=5_000,
        side_bytes=3_000,
        header_bytes=2_000,
    )
    assert account.total_bytes == 50_000
    assert account.reference_bytes == 2_000_000
    assert account.ratio == 40.0
    assert account.bits_per_label == 400.0
    fp32 = StorageAccount("topk", 1000, 1000, 40_000, 5_000, 3_000, 2_000, "fp32")
    assert fp32.ratio == 80.0
    out = account.to_dict()
    assert out["total_bytes"] == 50_000 and out["ratio"] == 40.0
    assert out["bits_per_label"] == 400.0 and out["reference"] == "fp16"
    assert out["codec"] == "topk" and out["model_bytes"] == 5_000


def test_account_degenerate_sizes_do_not_divide_by_zero() -> None:
    empty = StorageAccount("dense", 0, 10, 0, 0)
    assert empty.total_bytes == 0 and empty.ratio == 0.0 and empty.bits_per_label == 0.0
    free = StorageAccount("dense", 5, 10, 0, 0)
    assert free.ratio == 100.0  # 100 reference bytes over max(total, 1)


def test_account_is_frozen() -> None:
    account = StorageAccount("dense", 1, 2, 4, 0)
    with pytest.raises(AttributeError):
        account.payload_bytes = 5  # type: ignore[misc]
