"""Committed archives of every codec still read, and the code still writes them.

The fixtures in ``tests/fixtures/archives/`` were written by
``make_fixtures.py`` there (its docstring says when to re-run it). A failure
here means an archive format change: old archives would decode differently
(test 1), new ones would differ byte for byte (tests 2 and 3), or a codec's
stable id moved (test 4).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from labelzip.archive import ArchiveMetadata, ArchiveReader, load_archive, save_archive
from labelzip.codecs.registry import CODEC_IDS, codec_class
from labelzip.errors import NotFittedError

FIXTURES = Path(__file__).parent / "fixtures" / "archives"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
NAMES = sorted(MANIFEST["fixtures"])
# Codecs whose archive keeps only the decoder: a loaded one cannot encode.
DECODER_ONLY = {"vqae", "vqae-sparse", "vqae-rs"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", FIXTURES / "make_fixtures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def _entry(name: str) -> dict[str, Any]:
    entry: dict[str, Any] = MANIFEST["fixtures"][name]
    return entry


def test_every_registered_codec_has_a_fixture() -> None:
    assert {e["codec"] for e in MANIFEST["fixtures"].values()} == set(CODEC_IDS)


@pytest.mark.parametrize("name", NAMES)
def test_committed_archive_decodes_to_its_hash(
    name: str, skip_if_other_floats: Callable[[bool, str], None]
) -> None:
    entry = _entry(name)
    path = FIXTURES / entry["archive"]
    with ArchiveReader(path) as reader:
        reader.verify()
    decoded = load_archive(path)
    assert list(decoded.shape) == entry["decoded_shape"]
    # to float rounding on any CPU (a format change moves labels by far more)
    stored = load_file(str(FIXTURES / GEN.DECODED))[name]
    torch.testing.assert_close(decoded, stored, rtol=1e-5, atol=1e-5)
    same = GEN.labels_sha256(decoded) == entry["decoded_sha256"]
    skip_if_other_floats(same, "the decoded labels' sha256")
    assert GEN.labels_sha256(decoded) == entry["decoded_sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_same_call_writes_the_same_bytes(
    name: str, tmp_path: Path, skip_if_other_floats: Callable[[bool, str], None]
) -> None:
    """Fit and encode the committed input again: the committed archive, exactly."""
    entry = _entry(name)
    out = tmp_path / entry["archive"]
    GEN.write_archive(entry, GEN.load_input(entry["input"], FIXTURES), out)
    written = out.read_bytes() == (FIXTURES / entry["archive"]).read_bytes()
    skip_if_other_floats(written, "the archive a fit writes")
    assert out.read_bytes() == (FIXTURES / entry["archive"]).read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_stored_codec_reencodes_to_the_same_bytes(
    name: str, tmp_path: Path, skip_if_other_floats: Callable[[bool, str], None]
) -> None:
    """Encoding with the archive's own (stored) model gives the archive again.

    Independent of training: if only the previous test fails, the fit changed
    (or float arithmetic differs on this machine), not the encoder or format.
    Archives of the learned autoencoders keep no encoder: those must refuse.
    """
    entry = _entry(name)
    committed = FIXTURES / entry["archive"]
    with ArchiveReader(committed) as reader:
        codec, layout = reader.codec, reader.layout
        user = dict(reader.metadata.user)
    logits = GEN.load_input(entry["input"], FIXTURES)
    out = tmp_path / entry["archive"]

    def write() -> None:
        save_archive(
            out,
            codec,
            logits,
            layout=layout,
            chunk_size=MANIFEST["chunk_size"],
            metadata=ArchiveMetadata(user=user),
        )

    if entry["codec"] in DECODER_ONLY:
        with pytest.raises(NotFittedError, match="has no encoder"):
            write()
        return
    write()
    written = out.read_bytes() == committed.read_bytes()
    skip_if_other_floats(written, "the archive the stored codec writes")
    assert out.read_bytes() == committed.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_stored_codec_id_is_the_registry_id(name: str) -> None:
    entry = _entry(name)
    with ArchiveReader(FIXTURES / entry["archive"]) as reader:
        stored = reader.header.codec
    assert stored.id == entry["codec_id"] == CODEC_IDS[entry["codec"]][0]
    assert codec_class(stored.name).codec_id == stored.id
    assert stored.name == entry["codec"]


def test_fixture_inputs_are_small_fp16() -> None:
    total = sum(p.stat().st_size for p in FIXTURES.iterdir() if p.is_file())
    assert total < 2_000_000
    for name in {e["input"] for e in MANIFEST["fixtures"].values()}:
        stored = load_file(str(FIXTURES / f"input_{name}.safetensors"))["logits"]
        assert stored.dtype == torch.float16
