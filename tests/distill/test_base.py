from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from labelzip.distill import METADATA_KEY, DistilledSet, check_ipc
from labelzip.errors import ArchiveFormatError, ChecksumError, InputError


def _set(seed: int = 0, **overrides: object) -> DistilledSet:
    g = torch.Generator().manual_seed(seed)
    fields: dict[str, object] = dict(
        images=torch.randint(0, 256, (6, 1, 8, 8), generator=g, dtype=torch.uint8),
        labels=torch.tensor([0, 0, 1, 1, 2, 2]),
        class_names=("a", "b", "c"),
        method="random",
        ipc=2,
        source_fingerprint="f" * 64,
        teacher_id="T:1",
        config={"seed": seed, "nested": {"x": [1, 2]}},
    )
    fields.update(overrides)
    return DistilledSet(**fields)  # type: ignore[arg-type]


def test_queries() -> None:
    ds = _set()
    assert len(ds) == 6 and ds.num_classes == 3 and ds.channels == 1
    assert ds.image_size == (8, 8) and ds.image_bytes == 6 * 64
    assert ds.class_counts().tolist() == [2, 2, 2]
    assert torch.equal(ds.images_of_class(1), ds.images[2:4])
    with pytest.raises(InputError, match=r"class_id must lie in \[0, 3\), got 3"):
        ds.images_of_class(3)
    data = ds.to_dataset()
    assert data.fingerprint == ds.fingerprint and len(data) == 6


def test_save_load_round_trip(tmp_path: Path) -> None:
    ds = _set()
    path = ds.save(tmp_path / "set.safetensors")
    back = DistilledSet.load(path)
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.class_names == ds.class_names and back.method == "random"
    assert back.ipc == 2 and back.teacher_id == "T:1"
    assert back.source_fingerprint == "f" * 64
    assert back.config == {"seed": 0, "nested": {"x": [1, 2]}}
    assert back.fingerprint == ds.fingerprint
    # saving again gives the same bytes (deterministic metadata)
    again = back.save(tmp_path / "again.safetensors")
    assert again.read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def test_fingerprint_covers_pixels_labels_and_class_order() -> None:
    base = _set()
    assert _set().fingerprint == base.fingerprint  # stable
    assert len(base.fingerprint) == 64
    # provenance does not change it
    assert (
        _set(method="sre2l", config={}, teacher_id=None).fingerprint == base.fingerprint
    )
    pixels = base.images.clone()
    pixels[0, 0, 0, 0] ^= 1
    assert _set(images=pixels).fingerprint != base.fingerprint
    assert _set(labels=torch.tensor([0, 0, 1, 1, 2, 1])).fingerprint != base.fingerprint
    assert _set(class_names=("b", "a", "c")).fingerprint != base.fingerprint


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"images": torch.zeros(6, 8, 8, dtype=torch.uint8)},
            r"\(M, C, H, W\) tensor, got shape \(6, 8, 8\)",
        ),
        (
            {"images": torch.zeros(6, 1, 8, 8)},
            "must be uint8 in 0..255, got torch.float32",
        ),
        ({"images": torch.zeros(6, 2, 8, 8, dtype=torch.uint8)}, "1 or 3 channels"),
        ({"labels": torch.tensor([0, 1, 2])}, "6 images but 3 labels"),
        ({"labels": torch.tensor([0, 0, 1, 1, 2, 3])}, r"labels must lie in \[0, 3\)"),
        ({"labels": torch.zeros(6, dtype=torch.int32)}, "labels must be int64"),
        ({"ipc": 0}, "ipc must be >= 1, got 0"),
    ],
)
def test_bad_sets(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        _set(**overrides)


def test_check_ipc_names_the_largest_possible() -> None:
    counts = torch.tensor([5, 3, 9])
    check_ipc(3, counts, ("a", "b", "c"))
    with pytest.raises(
        InputError,
        match=r"ipc=4 .* class 1 \('b'\) has only 3 images; use --ipc 3 or less",
    ):
        check_ipc(4, counts, ("a", "b", "c"))
    with pytest.raises(InputError, match="ipc must be >= 1"):
        check_ipc(0, counts, ("a", "b", "c"))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        DistilledSet.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ArchiveFormatError, match="not a readable .safetensors"):
        DistilledSet.load(junk)
    other = tmp_path / "logits.safetensors"
    save_file({"logits": torch.zeros(2, 3)}, str(other))
    with pytest.raises(ArchiveFormatError, match="not a labelzip distilled set"):
        DistilledSet.load(other)


def _rewrite(path: Path, meta_edit: object = None, pixel_flip: bool = False) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
    tensors = load_file(str(path))
    if callable(meta_edit):
        meta_edit(meta)
    if pixel_flip:
        tensors["images"][0, 0, 0, 0] ^= 1
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})


def test_tampered_or_foreign_files(tmp_path: Path) -> None:
    path = _set().save(tmp_path / "s.safetensors")
    _rewrite(path, pixel_flip=True)
    with pytest.raises(ChecksumError, match="do not match the stored fingerprint"):
        DistilledSet.load(path)
    path = _set().save(tmp_path / "s.safetensors")
    _rewrite(path, meta_edit=lambda m: m.update(class_names=["c", "b", "a"]))
    with pytest.raises(ChecksumError, match="fingerprint"):
        DistilledSet.load(path)
    path = _set().save(tmp_path / "s.safetensors")
    _rewrite(path, meta_edit=lambda m: m.update(version=99))
    with pytest.raises(ArchiveFormatError, match="version 99 is not supported"):
        DistilledSet.load(path)
    path = _set().save(tmp_path / "s.safetensors")
    _rewrite(path, meta_edit=lambda m: m.pop("ipc"))
    with pytest.raises(ArchiveFormatError, match=r"lacks \['ipc'\]"):
        DistilledSet.load(path)


def test_save_into_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist; create it first"):
        _set().save(tmp_path / "nope" / "s.safetensors")
