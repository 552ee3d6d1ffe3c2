"""Bad archives fail with ArchiveFormatError / ChecksumError and one clear sentence."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from labelzip.archive import ArchiveReader, save_archive
from labelzip.archive.format import read_container_header
from labelzip.codecs.base import Codec
from labelzip.errors import (
    ArchiveFormatError,
    ChecksumError,
    InputError,
    LabelzipError,
)


@pytest.fixture
def archive(tmp_path: Path, views: torch.Tensor, fitted: Callable[..., Codec]) -> Path:
    """A dense archive of 4 chunks with one side tensor."""
    path = tmp_path / "a.lz"
    codec = fitted("dense", views)
    side = {"aug": torch.arange(10, dtype=torch.int16)}
    save_archive(path, codec, views, chunk_size=50, side_tensors=side)
    return path


def rewrite_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change the labelzip document and store it with a matching checksum."""
    container = read_container_header(path)
    raw = path.read_bytes()
    doc = json.loads(container.metadata["labelzip"])
    edit(doc)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    (length,) = struct.unpack("<Q", raw[:8])
    outer = json.loads(raw[8 : 8 + length])
    outer["__metadata__"] = {
        "labelzip": text,
        "labelzip_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    head = json.dumps(outer, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + length :])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        ArchiveReader(tmp_path / "nope.lz")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "too short"),
        (b"abc", "too short"),
        (b"hello world, I am a text file", "not a labelzip archive"),
        (struct.pack("<Q", 8) + b"not json", "not a valid safetensors header"),
    ],
)
def test_not_an_archive(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.lz"
    path.write_bytes(content)
    with pytest.raises(ArchiveFormatError, match=match):
        ArchiveReader(path)


def test_plain_safetensors_is_not_an_archive(tmp_path: Path) -> None:
    save_file({"logits": torch.zeros(2, 3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ArchiveFormatError, match="safetensors file but not a labelzip"):
        ArchiveReader(tmp_path / "x.safetensors")


@pytest.mark.parametrize("cut", [1, 100, 3000])
def test_truncated(archive: Path, cut: int) -> None:
    data = archive.read_bytes()
    archive.write_bytes(data[:-cut])
    with pytest.raises(ArchiveFormatError, match="truncated"):
        ArchiveReader(archive)


def test_trailing_bytes(archive: Path) -> None:
    archive.write_bytes(archive.read_bytes() + b"xx")
    with pytest.raises(ArchiveFormatError, match="2 unexpected bytes"):
        ArchiveReader(archive)


def test_corrupted_chunk_names_the_tensor(archive: Path) -> None:
    container = read_container_header(archive)
    entry = container.entries["chunk/000001"]
    data = bytearray(archive.read_bytes())
    data[container.data_start + entry.start + 5] ^= 0xFF
    archive.write_bytes(bytes(data))
    with ArchiveReader(archive) as reader:  # the header is fine; the chunk is not
        assert reader.decode(0).shape == (20,)  # chunk 0 is intact
        with pytest.raises(ChecksumError, match="tensor 'chunk/000001' does not match"):
            reader.decode(60)
        with pytest.raises(ChecksumError, match="chunk/000001"):
            reader.verify()


def test_corrupted_side_tensor(archive: Path) -> None:
    container = read_container_header(archive)
    entry = container.entries["side/aug"]
    data = bytearray(archive.read_bytes())
    data[container.data_start + entry.start] ^= 0x01
    archive.write_bytes(bytes(data))
    with (
        ArchiveReader(archive) as reader,
        pytest.raises(ChecksumError, match="side/aug"),
    ):
        reader.verify()


def test_corrupted_metadata(archive: Path) -> None:
    data = archive.read_bytes()
    marker = b'\\"num_classes\\":20'
    assert marker in data
    archive.write_bytes(data.replace(marker, b'\\"num_classes\\":21'))
    with pytest.raises(ChecksumError, match="header does not match its checksum"):
        ArchiveReader(archive)


def test_unknown_format_version(archive: Path) -> None:
    rewrite_header(archive, lambda doc: doc.update(format_version=99))
    with pytest.raises(
        ArchiveFormatError,
        match="format version 99; this labelzip reads version 1 or 2",
    ):
        ArchiveReader(archive)


def test_unknown_codec_id(archive: Path) -> None:
    rewrite_header(archive, lambda doc: doc["codec"].update(id=42, name="future"))
    with pytest.raises(ArchiveFormatError, match=r"codec id 42 \('future'\)"):
        ArchiveReader(archive)


def test_codec_id_name_mismatch(archive: Path) -> None:
    rewrite_header(archive, lambda doc: doc["codec"].update(id=2))
    with pytest.raises(ArchiveFormatError, match="codec id 2"):
        ArchiveReader(archive)


def test_inconsistent_chunk_table(archive: Path) -> None:
    rewrite_header(archive, lambda doc: doc.update(chunk_labels=[50, 50, 50, 41]))
    with pytest.raises(ArchiveFormatError, match="chunk_labels add up to 191"):
        ArchiveReader(archive)


def test_header_rewrite_helper_keeps_valid_archives_valid(archive: Path) -> None:
    before = ArchiveReader(archive).decode(slice(None))
    rewrite_header(archive, lambda doc: doc.update(teacher="x"))
    with ArchiveReader(archive) as reader:
        assert reader.metadata.teacher == "x"
        assert torch.equal(reader.decode(slice(None)), before)


def test_any_flipped_byte_is_detected(archive: Path) -> None:
    """Fuzz: a single flipped byte anywhere makes reading fail with a labelzip error."""
    good = archive.read_bytes()
    rng = random.Random(0)
    positions = rng.sample(range(len(good)), 40) + [0, 7, 8, 9, len(good) - 1]
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 1 << rng.randrange(8)
        archive.write_bytes(bytes(bad))
        with pytest.raises(LabelzipError):
            with ArchiveReader(archive) as reader:
                reader.verify()
                list(reader.decode_all())


def test_renamed_tensor_fails_its_digest(archive: Path) -> None:
    """Format 2 digests cover names: a renamed side tensor no longer verifies."""
    data = archive.read_bytes()
    assert data.count(b'"side/aug"') == 1
    archive.write_bytes(data.replace(b'"side/aug"', b'"side/auh"'))
    with ArchiveReader(archive) as reader:
        assert torch.equal(reader.decode(0), reader.decode(0))  # chunks intact
        with pytest.raises(ChecksumError, match="'side/auh' does not match"):
            reader.verify()


def test_digests_table_must_cover_every_tensor(archive: Path) -> None:
    container = read_container_header(archive)
    assert container.entries["digests"].shape == (5, 32)  # 4 chunks and the side
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b'"shape":[5,32]', b'"shape":[4,32]'))
    with pytest.raises(ArchiveFormatError, match="'digests' has shape"):
        ArchiveReader(archive)  # the entry no longer matches its byte range
    archive.write_bytes(data.replace(b'"shape":[5,32]', b'"shape":[4,40]'))
    with pytest.raises(ArchiveFormatError, match="'digests' tensor does not have"):
        ArchiveReader(archive)
    rewrite_header(archive, lambda doc: doc.update(checksums={"chunk/000000": "0"}))
    with pytest.raises(ArchiveFormatError, match="should name only 'digests'"):
        ArchiveReader(archive)
