"""Loading users' logit files (.safetensors, .npy, .pt) and atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from labelzip.errors import InputError
from labelzip.io import atomic_path, load_logits, save_logits


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(0))


def test_load_each_format(tmp_path: Path, logits: torch.Tensor) -> None:
    save_file({"x": logits}, str(tmp_path / "a.safetensors"))
    np.save(tmp_path / "a.npy", logits.numpy())
    torch.save(logits, tmp_path / "a.pt")
    torch.save({"logits": logits}, tmp_path / "a.pth")
    for name in ("a.safetensors", "a.npy", "a.pt", "a.pth"):
        assert torch.equal(load_logits(tmp_path / name), logits), name


def test_load_fp16_and_three_dims(tmp_path: Path) -> None:
    views = torch.randn(4, 3, 10).half()  # (N, E, C): epochs of views
    save_file({"logits": views}, str(tmp_path / "v.safetensors"))
    loaded = load_logits(str(tmp_path / "v.safetensors"))
    assert loaded.dtype == torch.float16 and torch.equal(loaded, views)


def test_multi_tensor_key_selection(tmp_path: Path, logits: torch.Tensor) -> None:
    tensors = {"teacher": logits, "other": logits + 1}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    torch.save(tensors, tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        assert torch.equal(load_logits(tmp_path / name, key="other"), logits + 1)
        with pytest.raises(
            InputError,
            match=r"holds 2 tensors \['other', 'teacher'\]; name one with --key",
        ):
            load_logits(tmp_path / name)
        with pytest.raises(InputError, match="has no tensor 'missing'"):
            load_logits(tmp_path / name, key="missing")
    # a tensor called "logits" is the default among several
    save_file(
        {"logits": logits, "ids": torch.zeros(6, 5)}, str(tmp_path / "l.safetensors")
    )
    torch.save({"logits": logits, "ids": torch.zeros(6, 5)}, tmp_path / "l.pt")
    assert torch.equal(load_logits(tmp_path / "l.safetensors"), logits)
    assert torch.equal(load_logits(tmp_path / "l.pt"), logits)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_logits(tmp_path / "nope.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(
        InputError, match=r"unsupported logits file 'x.csv'; use one of \.safetensors"
    ):
        load_logits(tmp_path / "x.csv")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read"):
        load_logits(tmp_path / "junk.safetensors")


def test_content_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "int.npy", np.arange(10).reshape(2, 5))
    with pytest.raises(
        InputError, match="holds int64 values; logits must be floating point"
    ):
        load_logits(tmp_path / "int.npy")
    save_file({"x": torch.arange(10).reshape(2, 5)}, str(tmp_path / "int.safetensors"))
    with pytest.raises(InputError, match="must be floating point, got torch.int64"):
        load_logits(tmp_path / "int.safetensors")
    np.save(tmp_path / "r1.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(InputError, match=r"shape \(N, C\) or \(N, E, C\), got \(5,\)"):
        load_logits(tmp_path / "r1.npy")
    np.save(tmp_path / "c1.npy", np.zeros((5, 1), dtype=np.float32))
    with pytest.raises(InputError, match="need at least 2 classes, got 1"):
        load_logits(tmp_path / "c1.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 5), dtype=np.float32))
    with pytest.raises(InputError, match=r"empty tensor of shape \(0, 5\)"):
        load_logits(tmp_path / "empty.npy")
    bad = np.zeros((3, 4), dtype=np.float32)
    bad[0, 0], bad[2, 1] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="2 logits are NaN or Inf"):
        load_logits(tmp_path / "nan.npy")


def test_pt_container_errors(tmp_path: Path) -> None:
    torch.save({"a": 1}, tmp_path / "d.pt")
    with pytest.raises(InputError, match="holds a dict without tensors"):
        load_logits(tmp_path / "d.pt")
    torch.save([torch.zeros(2, 2)], tmp_path / "l.pt")
    with pytest.raises(
        InputError, match="holds a list; expected a tensor or a dict of tensors"
    ):
        load_logits(tmp_path / "l.pt")


def test_save_logits_round_trip(tmp_path: Path, logits: torch.Tensor) -> None:
    dest = tmp_path / "out.safetensors"
    save_logits(dest, {"logits": logits[:, 1:]})  # a non-contiguous view
    assert torch.equal(load_logits(dest), logits[:, 1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]
    with pytest.raises(
        InputError, match="output folder .* does not exist; create it first"
    ):
        save_logits(tmp_path / "missing" / "out.safetensors", {"logits": logits})


def test_atomic_path_leaves_destination_untouched_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half-written")
            raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.bin"]
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new"


def test_atomic_write_has_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from labelzip.io import atomic_path

    dest = tmp_path / "out.bin"
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask
