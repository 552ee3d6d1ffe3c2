"""Format 1 archives (checksums in the header) stay readable after formats 2 and 3.

The files in ``data/`` were written by labelzip at commit ceab43b (format 1):
``make_v1``-style code, a pruned top-k archive with a side tensor and class
names, and a vqae-ctx archive (8-bit prototypes, every config field stored).
``v1_decoded.safetensors`` holds what that labelzip decoded from them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from labelzip.archive import ArchiveReader, load_archive, save_archive
from labelzip.archive.format import read_container_header
from labelzip.errors import ChecksumError

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("name", "key", "shape"),
    [
        ("v1_topk_pruned.lz", "topk", (6, 4, 10)),
        ("v1_vqae_ctx.lz", "vqae_ctx", (12, 6, 5)),
    ],
)
def test_format_1_archives_decode_as_they_did(
    name: str, key: str, shape: tuple, reference_floats: bool
) -> None:
    want = load_file(str(DATA / "v1_decoded.safetensors"))[key]
    with ArchiveReader(DATA / name) as reader:
        assert reader.header.format_version == 1
        assert DATA.joinpath(name).stat().st_size == reader.account().total_bytes
        assert reader.account().header_bytes == (
            reader.container.file_size - reader.container.tensor_bytes
        )
        reader.verify()
        assert set(reader.checksums) == set(reader.container.entries)
    got = load_archive(DATA / name)
    assert got.shape == shape
    if reference_floats:  # bit for bit where floats round as they did
        assert torch.equal(got, want)
    else:  # elsewhere to float rounding (a format change moves labels by far more)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_format_1_corruption_is_still_detected(tmp_path: Path) -> None:
    path = tmp_path / "v1.lz"
    data = bytearray((DATA / "v1_topk_pruned.lz").read_bytes())
    container = read_container_header(DATA / "v1_topk_pruned.lz")
    entry = container.entries["chunk/000001"]
    data[container.data_start + entry.start] ^= 0x04
    path.write_bytes(bytes(data))
    with (
        ArchiveReader(path) as reader,
        pytest.raises(ChecksumError, match="'chunk/000001' does not match"),
    ):
        reader.verify()


def test_current_format_rewrite_is_smaller_and_decodes_the_same(tmp_path: Path) -> None:
    """Same codec, labels, layout, metadata: ~54 bytes less per tensor."""
    with ArchiveReader(DATA / "v1_topk_pruned.lz") as old:
        codec, meta, plan = old.codec, old.metadata, old.prune
        side = old.side_tensors()
        logits = load_archive(DATA / "v1_topk_pruned.lz")
        tensors = len(old.container.entries)
        old_header = old.account().header_bytes
        decoded_old = load_archive(DATA / "v1_topk_pruned.lz")
    path = tmp_path / "v3.lz"
    # The archive stores decoded top-k labels: re-encoding them is lossless.
    account = save_archive(
        path,
        codec,
        torch.where(torch.isinf(logits), -30.0, logits),
        prune=plan,
        chunk_size=5,
        metadata=meta,
        side_tensors=side,
    )
    assert account.total_bytes == os.path.getsize(path)
    with ArchiveReader(path) as new:
        assert new.header.format_version == 3
        assert len(new.container.entries) == tensors + 1  # + digests
        new.verify()
    # Each tensor's escaped '"name":"<64 hex>",' (~86 B) becomes a 32-byte row;
    # the digests tensor's own entry and hex checksum take ~150 B.
    assert account.header_bytes <= old_header - 54 * tensors + 170
    assert torch.equal(load_archive(path), decoded_old)
