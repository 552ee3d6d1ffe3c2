"""TopKCodec's sparse path: stored (values, ids) in, the same out, bit for bit."""

from __future__ import annotations

import pytest
import torch

from labelzip.codecs.baseline.topk import TopKCodec
from labelzip.codecs.registry import create_codec
from labelzip.errors import ConfigError, InputError


def _codec(k: int, value_dtype: str = "fp16", num_classes: int = 50) -> TopKCodec:
    codec = create_codec(
        "topk", k=k, decoder="mr", relative=False, value_dtype=value_dtype
    )
    assert isinstance(codec, TopKCodec)
    return codec.fit([torch.zeros(1, num_classes)])


@pytest.mark.parametrize("value_dtype", ["fp16", "fp32"])
def test_encode_topk_keeps_order_dtype_and_ties(value_dtype: str) -> None:
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16 if value_dtype == "fp16" else torch.float32
    values = torch.randn(33, 4, generator=gen).to(dtype)
    values[0] = values[0, 0]  # ties
    ids = torch.stack([torch.randperm(50, generator=gen)[:4] for _ in range(33)])
    codec = _codec(4, value_dtype)
    got_values, got_ids = codec.decode_topk(codec.encode_topk(values, ids))
    assert got_values.dtype == dtype and torch.equal(got_values, values)
    assert torch.equal(got_ids, ids)  # unsorted order kept
    dense = codec.decode(codec.encode_topk(values, ids))
    assert torch.equal(dense.gather(1, ids), values.float())


def test_encode_topk_matches_encode_on_sorted_topk() -> None:
    """Same block bytes as the dense path when given what encode() keeps."""
    logits = torch.randn(20, 50, generator=torch.Generator().manual_seed(1))
    codec = _codec(5, "fp32")
    values, ids = logits.topk(5, dim=1)
    assert torch.equal(codec.encode(logits).data, codec.encode_topk(values, ids).data)


def test_encode_topk_rejects_bad_input() -> None:
    codec = _codec(3)
    with pytest.raises(InputError, match="needs \\(N, 3\\) torch.float16"):
        codec.encode_topk(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="outside"):
        codec.encode_topk(torch.zeros(2, 3).half(), torch.full((2, 3), 50))
    relative = create_codec("topk", k=3, decoder="mr").fit([torch.zeros(1, 9)])
    assert isinstance(relative, TopKCodec)
    with pytest.raises(ConfigError, match="relative=False"):
        relative.encode_topk(
            torch.zeros(2, 3).half(), torch.zeros(2, 3, dtype=torch.long)
        )
