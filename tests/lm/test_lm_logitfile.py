"""Streaming safetensors writer: byte-exact files, order and size checks, atomicity."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from labelzip.errors import InputError
from labelzip.io import load_logits
from labelzip.lm.logitfile import SafetensorsStreamWriter
from labelzip.logit_writer import SAFETENSORS_DTYPE_CODES


def _specs(n: int, v: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {"token_ids": (torch.int64, (n,)), "logits": (torch.float16, (n, v))}


def test_every_safetensors_dtype_of_the_shared_table_streams(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {
        str(dtype): (100 * torch.randn(3, 2, generator=g)).to(dtype)
        for dtype in SAFETENSORS_DTYPE_CODES
    }
    specs = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    path = tmp_path / "all.safetensors"
    with SafetensorsStreamWriter(path, specs) as w:
        for name, t in tensors.items():
            w.write(name, t)
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[name], t) for name, t in tensors.items())


def test_streamed_file_reads_back(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    logits = (10 * torch.randn(10, 7, generator=g)).half()
    ids = torch.randint(0, 7, (10,), generator=g)
    path = tmp_path / "x.safetensors"
    with SafetensorsStreamWriter(path, _specs(10, 7), {"teacher": "t@1"}) as w:
        w.write("token_ids", ids[:4])
        w.write("token_ids", ids[4:])
        for start in range(0, 10, 3):  # blocks of 3, 3, 3, 1 rows
            w.write("logits", logits[start : start + 3])
    loaded = load_file(str(path))
    assert torch.equal(loaded["logits"], logits) and torch.equal(
        loaded["token_ids"], ids
    )
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"teacher": "t@1"}
    assert torch.equal(load_logits(path, key="logits"), logits.float())
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    assert path.stat().st_size == 8 + header_len + 10 * 8 + 10 * 7 * 2  # exact


def test_bfloat16_and_header_offsets(tmp_path: Path) -> None:
    x = torch.linspace(-3, 3, 12).view(4, 3).bfloat16()
    path = tmp_path / "b.safetensors"
    with SafetensorsStreamWriter(
        path, {"a": (torch.bfloat16, (4, 3)), "b": (torch.uint8, (2,))}
    ) as w:
        w.write("a", x)
        w.write("b", torch.tensor([1, 2], dtype=torch.uint8))
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["a"] == {"dtype": "BF16", "shape": [4, 3], "data_offsets": [0, 24]}
    assert header["b"]["data_offsets"] == [24, 26]
    assert torch.equal(load_file(str(path))["a"], x)


def test_incomplete_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    with pytest.raises(
        InputError, match="tensor 'logits' is incomplete: 28 of 70 bytes"
    ):
        with SafetensorsStreamWriter(path, _specs(5, 7)) as w:
            w.write("token_ids", torch.zeros(5, dtype=torch.long))
            w.write("logits", torch.zeros(2, 7, dtype=torch.float16))
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary left


def test_exception_inside_block_discards_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="teacher crashed"):
        with SafetensorsStreamWriter(path, _specs(1, 2)) as w:
            w.write("token_ids", torch.zeros(1, dtype=torch.long))
            raise RuntimeError("teacher crashed")
    assert path.read_bytes() == b"old"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_write_errors(tmp_path: Path) -> None:
    with SafetensorsStreamWriter(tmp_path / "x.safetensors", _specs(2, 3)) as w:
        with pytest.raises(
            InputError,
            match="wrote to tensor 'logits' but 'token_ids' is being written",
        ):
            w.write("logits", torch.zeros(2, 3, dtype=torch.float16))
        with pytest.raises(
            InputError,
            match=r"block \(2,\) torch.int32 does not fit declared \(2,\) torch.int64",
        ):
            w.write("token_ids", torch.zeros(2, dtype=torch.int32))
        with pytest.raises(InputError, match="overflows the declared shape"):
            w.write("token_ids", torch.zeros(3, dtype=torch.long))
        w.write("token_ids", torch.zeros(2, dtype=torch.long))
        with pytest.raises(InputError, match=r"rows of shape \(3,\)"):
            w.write("logits", torch.zeros(2, 4, dtype=torch.float16))
        w.write("logits", torch.zeros(2, 3, dtype=torch.float16))
    with pytest.raises(InputError, match="unsupported dtype"):
        SafetensorsStreamWriter(
            tmp_path / "y.safetensors", {"a": (torch.complex64, (1,))}
        )
    with pytest.raises(InputError, match="output folder .* does not exist"):
        SafetensorsStreamWriter(tmp_path / "no" / "y.safetensors", _specs(1, 1))
