"""LogitStore: row-range reads of logits files and shard directories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from labelzip.errors import InputError
from labelzip.logit_store import open_logits


def _logits(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_safetensors_rows_equal_the_tensor(tmp_path, dtype):
    x = _logits((37, 3, 11)).to(dtype)
    path = tmp_path / "x.safetensors"
    save_file({"aux": torch.zeros(5), "logits": x}, str(path))
    with open_logits(path) as store:
        assert store.shape == (37, 3, 11) and store.dtype == dtype
        flat = x.reshape(-1, 11)
        assert torch.equal(store.read(0, store.num_labels), flat)
        assert torch.equal(store.read(5, 50), flat[5:50])
        assert torch.equal(torch.cat(list(store.batches(16))), flat)


@pytest.mark.parametrize("dtype", ["<f2", ">f4", "<f8"])
def test_npy_rows_equal_the_array(tmp_path, dtype):
    x = _logits((40, 9)).numpy().astype(dtype)
    path = tmp_path / "x.npy"
    np.save(path, x)
    with open_logits(path) as store:
        got = store.read(3, 33)
    np.testing.assert_array_equal(
        got.numpy(), x[3:33].astype(x.dtype.newbyteorder("="))
    )


def test_pt_is_sliced_through_mmap(tmp_path):
    x = _logits((20, 7))
    torch.save({"logits": x}, tmp_path / "x.pt")
    with open_logits(tmp_path / "x.pt") as store:
        assert torch.equal(store.read(4, 9), x[4:9])


def test_directory_of_shards_reads_as_one(tmp_path):
    parts = [_logits((n, 6), seed=n) for n in (5, 9, 2)]
    for i, part in enumerate(parts):
        save_file({"logits": part}, str(tmp_path / f"shard-{i:03d}.safetensors"))
    whole = torch.cat(parts)
    with open_logits(tmp_path) as store:
        assert store.shape == (16, 6)
        assert torch.equal(store.read(3, 15), whole[3:15])
        assert torch.equal(torch.cat(list(store.batches(4))), whole)


def test_shards_that_disagree_are_refused(tmp_path):
    save_file({"logits": _logits((4, 6))}, str(tmp_path / "a.safetensors"))
    save_file({"logits": _logits((4, 7))}, str(tmp_path / "b.safetensors"))
    with pytest.raises(InputError, match="b.safetensors"):
        open_logits(tmp_path)


def test_nan_names_the_file_and_label(tmp_path):
    x = _logits((30, 5))
    x[17, 2] = float("nan")
    save_file({"logits": x}, str(tmp_path / "bad.safetensors"))
    with open_logits(tmp_path / "bad.safetensors") as store:
        store.read(0, 10)
        with pytest.raises(InputError, match=r"bad.safetensors: label 17"):
            store.read(10, 30)


def test_truncated_safetensors_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"logits": _logits((50, 8))}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match="truncated"):
        open_logits(path)


def test_fortran_and_object_npy_are_refused(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(_logits((6, 4)).numpy()))
    with pytest.raises(InputError, match="Fortran"):
        open_logits(tmp_path / "f.npy")
    np.save(tmp_path / "o.npy", np.array([object()] * 4), allow_pickle=True)
    with pytest.raises(InputError, match="objects"):
        open_logits(tmp_path / "o.npy")


def test_fingerprint_ignores_the_folder_but_not_the_values(tmp_path):
    x = _logits((300, 5))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_file({"logits": x}, str(tmp_path / "a" / "x.safetensors"))
    save_file({"logits": x}, str(tmp_path / "b" / "x.safetensors"))
    y = x.clone()
    y[-1, 0] += 1
    save_file({"logits": y}, str(tmp_path / "y.safetensors"))
    fa = open_logits(tmp_path / "a" / "x.safetensors").fingerprint()
    assert fa == open_logits(tmp_path / "b" / "x.safetensors").fingerprint()
    assert fa != open_logits(tmp_path / "y.safetensors").fingerprint()


def test_range_outside_is_refused(tmp_path):
    save_file({"logits": _logits((4, 3))}, str(tmp_path / "x.safetensors"))
    with open_logits(tmp_path / "x.safetensors") as store, pytest.raises(InputError):
        store.read(2, 5)
