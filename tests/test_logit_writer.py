"""Streamed .safetensors / .npy writers: same bytes as the libraries, atomic, clear errors."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from labelzip.errors import InputError
from labelzip.io import load_logits
from labelzip.logit_store import open_logits
from labelzip.logit_writer import (
    SAFETENSORS_DTYPE_CODES,
    NpyStreamWriter,
    SafetensorsStreamWriter,
)
from labelzip.outputs import TEMP_TAG


def _x(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("metadata", [None, {"labelzip_codec": "dense"}])
def test_safetensors_bytes_equal_save_file(tmp_path: Path, metadata) -> None:
    logits = _x((50, 3, 7)).to(torch.bfloat16)
    index = torch.arange(11)
    scale = _x((4,), 1).double()
    spec = {
        "logits": (logits.shape, logits.dtype),
        "index": (index.shape, index.dtype),
        "scale": (scale.shape, scale.dtype),
    }
    out = tmp_path / "a.safetensors"
    with SafetensorsStreamWriter(out, spec, metadata) as writer:
        writer.write("index", index[:5])  # tensors filled in any interleaving
        for lo in range(0, 50, 8):
            writer.write("logits", logits[lo : lo + 8])
        writer.write("scale", scale.numpy())
        writer.write("index", index[5:])
    ref = tmp_path / "ref.safetensors"
    save_file({"logits": logits, "index": index, "scale": scale}, str(ref), metadata)
    assert out.read_bytes() == ref.read_bytes()
    loaded = load_file(str(out))
    assert torch.equal(loaded["logits"], logits) and torch.equal(loaded["index"], index)
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == metadata


def test_several_metadata_keys_are_sorted_and_read_back(tmp_path: Path) -> None:
    out = tmp_path / "a.safetensors"
    meta = {"z": "1", "a": "2", "m": "3"}
    with SafetensorsStreamWriter(out, {"x": ((2, 3), torch.float32)}, meta) as w:
        w.write("x", torch.ones(2, 3))
    assert b'{"__metadata__":{"a":"2","m":"3","z":"1"}' in out.read_bytes()[:64]
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == meta
    with open_logits(out) as store:
        assert torch.equal(store.read(0, 2), torch.ones(2, 3))


def test_every_safetensors_dtype_streams(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {
        str(dtype): (100 * torch.randn(3, 2, generator=g)).to(dtype)
        for dtype in SAFETENSORS_DTYPE_CODES
    }
    spec = {name: (t.shape, t.dtype) for name, t in tensors.items()}
    out = tmp_path / "all.safetensors"
    with SafetensorsStreamWriter(out, spec) as writer:
        for name, t in tensors.items():
            writer.write(name, t[:1])
            writer.write(name, t[1:])
    loaded = load_file(str(out))
    assert all(torch.equal(loaded[name], t) for name, t in tensors.items())
    save_file(tensors, str(tmp_path / "ref.safetensors"))
    assert out.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_lm_label_set_reads_back_with_metadata(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    logits = (10 * torch.randn(10, 7, generator=g)).half()
    ids = torch.randint(0, 7, (10,), generator=g)
    spec = {"token_ids": ((10,), torch.int64), "logits": ((10, 7), torch.float16)}
    out = tmp_path / "x.safetensors"
    with SafetensorsStreamWriter(out, spec, {"teacher": "t@1"}) as writer:
        writer.write("token_ids", ids[:4])
        writer.write("token_ids", ids[4:])
        for lo in range(0, 10, 3):  # blocks of 3, 3, 3, 1 rows
            writer.write("logits", logits[lo : lo + 3])
    loaded = load_file(str(out))
    assert torch.equal(loaded["logits"], logits)
    assert torch.equal(loaded["token_ids"], ids)
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == {"teacher": "t@1"}
    assert torch.equal(load_logits(out, key="logits"), logits.float())
    header_len = struct.unpack("<Q", out.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    assert out.stat().st_size == 8 + header_len + 10 * 8 + 10 * 7 * 2  # no gaps


def test_bfloat16_header_offsets(tmp_path: Path) -> None:
    x = torch.linspace(-3, 3, 12).view(4, 3).bfloat16()
    out = tmp_path / "b.safetensors"
    spec = {"a": ((4, 3), torch.bfloat16), "b": ((2,), torch.uint8)}
    with SafetensorsStreamWriter(out, spec) as writer:
        writer.write("b", torch.tensor([1, 2], dtype=torch.uint8))
        writer.write("a", x)
    raw = out.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    assert header["a"] == {"dtype": "BF16", "shape": [4, 3], "data_offsets": [0, 24]}
    assert header["b"]["data_offsets"] == [24, 26]
    assert torch.equal(load_file(str(out))["a"], x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_npy_bytes_equal_np_save(tmp_path: Path, dtype: torch.dtype) -> None:
    x = _x((37, 2, 5)).to(dtype)
    out = tmp_path / "a.npy"
    with NpyStreamWriter(out, x.shape, dtype) as writer:
        for lo in range(0, 30, 10):
            writer.write(x[lo : lo + 10])
        flat = x[30:].reshape(-1, 5)  # label rows fill (N, E, C) too
        writer.write(flat[:3])
        writer.write(flat[3:])
    np.save(tmp_path / "ref.npy", x.numpy())
    assert out.read_bytes() == (tmp_path / "ref.npy").read_bytes()


def test_npy_refuses_bfloat16(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="write .safetensors instead"):
        NpyStreamWriter(tmp_path / "a.npy", (3, 4), torch.bfloat16)


def _no_temps(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if TEMP_TAG in p.name]


def test_exception_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "a.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="teacher died"):  # noqa: PT012
        with SafetensorsStreamWriter(out, {"x": ((8, 3), torch.float32)}) as writer:
            writer.write("x", torch.ones(4, 3))
            raise RuntimeError("teacher died")
    assert out.read_bytes() == b"old" and _no_temps(tmp_path)


def test_unfinished_tensor_is_not_renamed(tmp_path: Path) -> None:
    out = tmp_path / "a.npy"
    writer = NpyStreamWriter(out, (8, 3), torch.float32)
    writer.write(torch.ones(5, 3))
    with pytest.raises(ValueError, match="got 15 of its 24 values"):
        writer.close()
    assert not out.exists() and _no_temps(tmp_path)


def test_unfinished_safetensors_leaves_the_destination(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"old")
    spec = {"token_ids": ((5,), torch.int64), "logits": ((5, 7), torch.float16)}
    with pytest.raises(ValueError, match="got 14 of its 35"):  # noqa: PT012
        with SafetensorsStreamWriter(out, spec) as writer:
            writer.write("token_ids", torch.zeros(5, dtype=torch.long))
            writer.write("logits", torch.zeros(2, 7, dtype=torch.float16))
    assert out.read_bytes() == b"old" and _no_temps(tmp_path)


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        (torch.ones(2, 3, dtype=torch.float64), TypeError, "float32, got rows"),
        (torch.ones(2, 4), ValueError, "do not fit"),
        (torch.ones(9, 3), ValueError, "exceed its 24"),
    ],
)
def test_wrong_rows_are_refused(tmp_path: Path, rows, error, match) -> None:
    with SafetensorsStreamWriter(
        tmp_path / "a.st", {"x": ((8, 3), torch.float32)}
    ) as w:
        with pytest.raises(error, match=match):
            w.write("x", rows)
        w.write("x", torch.zeros(8, 3))


def test_bad_safetensors_specs_are_refused(tmp_path: Path) -> None:
    with SafetensorsStreamWriter(tmp_path / "a.st", {"x": ((2,), torch.int64)}) as w:
        with pytest.raises(KeyError, match="no tensor 'y'"):
            w.write("y", torch.zeros(2, dtype=torch.long))
        with pytest.raises(ValueError, match="exceed its 2"):
            w.write("x", torch.zeros(3, dtype=torch.long))
        w.write("x", torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="safetensors cannot store torch.complex64"):
        SafetensorsStreamWriter(tmp_path / "b.st", {"a": ((1,), torch.complex64)})
    with pytest.raises(InputError, match="output folder .* does not exist"):
        SafetensorsStreamWriter(tmp_path / "no" / "c.st", {"a": ((1,), torch.int64)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.st"]


@pytest.mark.parametrize("fail_at", [0, 2])
def test_enospc_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    real = os.pwrite
    calls = []

    def pwrite(fd: int, data: object, offset: int) -> int:
        calls.append(offset)
        if len(calls) > fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "big.safetensors"
    with pytest.raises(InputError) as info:  # noqa: PT012
        with SafetensorsStreamWriter(out, {"x": ((1000, 250), torch.float32)}) as w:
            for _ in range(10):
                w.write("x", torch.zeros(100, 250))
    message = str(info.value)
    assert message.startswith(f"no space left on device writing {str(out)!r}: free ")
    assert message.endswith(" GB or choose another -o") and "\n" not in message
    assert not out.exists() and _no_temps(tmp_path)


def test_not_enough_free_space_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _: usage._replace(free=3_000_000_000)
    )
    with pytest.raises(InputError, match=r"free 1\.0 GB or choose another -o"):
        NpyStreamWriter(tmp_path / "a.npy", (1_000_000, 1000), torch.float32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_folder_is_one_line() -> None:
    with pytest.raises(InputError, match="does not accept new files"):
        NpyStreamWriter("/proc/labelzip-out.npy", (3, 4), torch.float32)


def test_writing_onto_an_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in.npy"
    np.save(src, np.zeros((3, 4), np.float32))
    with pytest.raises(InputError, match="is the input"):
        NpyStreamWriter(src, (3, 4), torch.float32, inputs=[src])
