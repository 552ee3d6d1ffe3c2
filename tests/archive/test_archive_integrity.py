"""What `--verify` guarantees, and readers that bound every number before use.

Regression tests for issue 11, each written from its reproduction: header edits
with the checksums recomputed by an attacker (format 3 refuses them, format 2
archives are caught by the codecs' stored-tensor checks), deeply nested JSON,
``1e400`` shapes, 2**70 chunk counts, 1e9 classes and a pruned layout claiming
3e11 labels. ``data/v2_*`` were written by labelzip at commit c17806c (format 2);
``v2_decoded.safetensors`` holds what that labelzip decoded from them.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from labelzip.archive import ArchiveReader, Layout, load_archive, save_archive
from labelzip.archive.format import INTEGRITY
from labelzip.cli.info import main as info_main
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import create_codec
from labelzip.errors import ArchiveFormatError, ChecksumError, LabelzipError

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("name", "key", "shape"),
    [("v2_vqae.lz", "vqae", (64, 12)), ("v2_topk_pruned.lz", "topk", (8, 5, 10))],
)
def test_format_2_archives_decode_as_they_did(
    name: str, key: str, shape: tuple, reference_floats: bool
) -> None:
    want = load_file(str(DATA / "v2_decoded.safetensors"))[key]
    with ArchiveReader(DATA / name) as reader:
        assert reader.header.format_version == 2
        assert reader.info()["integrity"] == "tensor names and bytes only (format 2)"
        reader.verify()
    got = load_archive(DATA / name)
    assert got.shape == shape
    if reference_floats:  # bit for bit where floats round as they did
        assert torch.equal(got, want)
    else:  # elsewhere to float rounding (a format change moves labels by far more)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _model_tensor(path: Path, forge: Any) -> str:
    outer, _ = forge.read(path)
    return "model/out_weight" if "model/out_weight" in outer else sorted(outer)[0]


def _dtype_edit(code: str) -> Callable[[dict[str, Any]], None]:
    return lambda outer: outer["model/out_weight"].update(dtype=code)


def _transpose(outer: dict[str, Any]) -> None:
    outer["model/out_weight"]["shape"].reverse()


EDITS = {
    "I16": _dtype_edit("I16"),
    "U16": _dtype_edit("U16"),
    "BF16": _dtype_edit("BF16"),
    "transposed": _transpose,
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_format_2_model_tensor_edits_are_refused_by_the_codec(
    tmp_path: Path, forge: Any, edit: str
) -> None:
    """Format 2 digests do not cover dtype/shape; the codec's own check does."""
    path = tmp_path / "v2.lz"
    path.write_bytes((DATA / "v2_vqae.lz").read_bytes())
    forge.edit(path, EDITS[edit])
    with ArchiveReader(path) as reader:
        with pytest.raises(ArchiveFormatError, match="out_weight"):
            reader.verify()
        with pytest.raises(ArchiveFormatError, match="out_weight"):
            reader.decode(0)
    assert info_main([str(path), "--verify"]) == 2


@pytest.fixture(scope="module")
def vqae_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A format 3 vqae archive and what it decodes to."""
    logits = 3 * torch.randn(96, 12, generator=torch.Generator().manual_seed(4))
    codec = create_codec("vqae", steps=20, hidden_dim=16, encoder_dim=16, batch_size=32)
    path = tmp_path_factory.mktemp("v3") / "a.lz"
    save_archive(path, codec.fit([logits]), logits, chunk_size=40)
    return path, load_archive(path)


@pytest.mark.parametrize("scheme", ["named", "entry"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_verified_archives_decode_to_the_written_labels(
    tmp_path: Path, forge: Any, vqae_archive: tuple, edit: str, scheme: str
) -> None:
    """The property: an archive `info --verify` accepts decodes to exactly the
    labels that were written. Header edits resealed with format 2's digests fail
    the format 3 digests; resealed with format 3's own, the codec refuses them."""
    original, labels = vqae_archive
    path = tmp_path / "edited.lz"
    path.write_bytes(original.read_bytes())
    forge.edit(path, EDITS[edit])
    forge.reseal(path, scheme)
    error = ChecksumError if scheme == "named" else ArchiveFormatError
    with ArchiveReader(path) as reader, pytest.raises(error):
        reader.verify()
    assert info_main([str(path), "--verify", "--json"]) == 2
    try:
        decoded = load_archive(path)
    except LabelzipError:
        return
    assert torch.equal(decoded, labels)  # pragma: no cover - never reached today


def test_format_3_unedited_reseal_still_verifies(
    tmp_path: Path, forge: Any, vqae_archive: tuple
) -> None:
    """The forge recomputes exactly the format 3 digests (a control for the test above)."""
    original, labels = vqae_archive
    path = tmp_path / "same.lz"
    path.write_bytes(original.read_bytes())
    forge.reseal(path, "entry")
    assert path.read_bytes() == original.read_bytes()
    with ArchiveReader(path) as reader:
        assert reader.info()["integrity"] == INTEGRITY[3]
        reader.verify()
    assert torch.equal(load_archive(path), labels)


def test_format_3_writing_is_deterministic(tmp_path: Path) -> None:
    logits = torch.randn(50, 2, 9, generator=torch.Generator().manual_seed(2))
    plan = PrunePlan(("sample", "view"), (50, 2), 0.5, seed=1)
    for name in ("a.lz", "b.lz"):
        save_archive(tmp_path / name, create_codec("topk", k=3), logits, prune=plan)
    assert (tmp_path / "a.lz").read_bytes() == (tmp_path / "b.lz").read_bytes()


# -- bounded readers ----------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Path:
    logits = torch.randn(4, 12, 10, generator=torch.Generator().manual_seed(3))
    plan = PrunePlan(("epoch", "sample"), (4, 12), 0.5, seed=2)
    path = tmp_path / "s.lz"
    save_archive(
        path,
        create_codec("topk", k=3),
        logits,
        prune=plan,
        chunk_size=8,
        layout=plan_layout(plan),
    )
    return path


def plan_layout(plan: PrunePlan) -> Layout:
    return Layout(plan.dims, plan.shape)


def _document_text(path: Path, forge: Any, change: Callable[[str], str]) -> None:
    """Rewrite the labelzip document as text (for values json.dumps cannot make)."""
    outer, data = forge.read(path)
    text = change(outer["__metadata__"]["labelzip"])
    outer["__metadata__"] = {
        "labelzip": text,
        "labelzip_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    forge.write(path, outer, data)


def _write_header_text(path: Path, forge: Any, change: Callable[[str], str]) -> None:
    """Rewrite the safetensors header as text (for values json.dumps cannot make)."""
    outer, data = forge.read(path)
    head = change(json.dumps(outer, separators=(",", ":"))).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


def _refused(path: Path, match: str | None) -> None:
    start = time.perf_counter()
    with pytest.raises(ArchiveFormatError, match=match):
        with ArchiveReader(path) as reader:
            reader.decode(0)
    assert time.perf_counter() - start < 5.0
    assert info_main([str(path), "--verify"]) == 2


def test_deeply_nested_safetensors_header(small: Path, forge: Any) -> None:
    nested = ',"x":' + "[" * 20000 + "]" * 20000 + "}"
    _write_header_text(small, forge, lambda text: text[:-1] + nested)
    _refused(small, "nested deeper")


def test_deeply_nested_labelzip_document(small: Path, forge: Any) -> None:
    deep = '"user":{"deep":' + "[" * 20000 + "]" * 20000 + ","
    _document_text(small, forge, lambda t: t.replace('"user":{', deep, 1))
    _refused(small, "nested deeper")


@pytest.mark.parametrize(
    "value", ["1e400", "1e10", "100000000000000000000000000000", "-1", "NaN", "true"]
)
def test_shape_values_must_be_small_integers(
    small: Path, forge: Any, value: str
) -> None:
    outer, _ = forge.read(small)
    entry = json.dumps(outer["chunk/000000"], separators=(",", ":"))
    bad = entry.replace('"shape":[', f'"shape":[{value},', 1)
    _write_header_text(small, forge, lambda text: text.replace(entry, bad, 1))
    _refused(small, None)


def test_duplicate_keys_are_refused(small: Path, forge: Any) -> None:
    _document_text(
        small, forge, lambda t: t.replace('"teacher":', '"teacher":null,"teacher":', 1)
    )
    _refused(small, "twice")


@pytest.mark.parametrize("count", [2**70, 2**62, 2**40])
def test_huge_chunk_counts(small: Path, forge: Any, count: int) -> None:
    _document_text(
        small,
        forge,
        lambda t: t.replace('"chunk_labels":[8,', f'"chunk_labels":[{count},', 1),
    )
    _refused(small, None)


def test_a_billion_classes_allocate_nothing(small: Path, forge: Any) -> None:
    forge.edit_document(small, lambda doc: doc.update(num_classes=10**9))
    _refused(small, "classes exceed the limit")


def test_classes_that_the_codec_does_not_decode_are_refused_before_allocating(
    small: Path, forge: Any
) -> None:
    forge.edit_document(small, lambda doc: doc.update(num_classes=1 << 24))
    _refused(small, "header says 16777216")


@pytest.mark.parametrize(
    ("dims", "shape"),
    [(["epoch", "sample"], [300, 10**9]), (["sample", "view"], [12, 10**9])],
)
def test_pruned_layout_of_3e11_labels_is_refused_quickly(
    small: Path, forge: Any, dims: list, shape: list
) -> None:
    def claim(doc: dict[str, Any]) -> None:
        doc["layout"] = {"dims": dims, "shape": shape}
        doc["num_labels"] = shape[0] * shape[1]

    forge.edit_document(small, claim)
    _refused(small, None)


def test_lazy_plan_lookups_on_a_huge_sample_major_layout() -> None:
    """A sample-major plan answers per requested label, whatever the layout size."""
    start = time.perf_counter()
    plan = PrunePlan(("sample", "view"), (10**9, 300), 0.25, seed=1)
    stored = plan.stored_index(torch.tensor([0, 10**11, 3 * 10**11 - 1]))
    flat = plan.kept_flat(stored)
    assert torch.equal(plan.stored_index(flat), stored)  # kept labels use themselves
    assert int(stored.max()) < plan.num_kept
    assert time.perf_counter() - start < 2.0
