"""Archive round trips, exact accounting, random access, streaming and determinism."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from labelzip.archive import (
    ArchiveMetadata,
    ArchiveReader,
    ArchiveWriter,
    Layout,
    load_archive,
    save_archive,
)
from labelzip.archive.format import read_container_header
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import create_codec
from labelzip.errors import ConfigError, InputError

Fitted = Callable[..., Codec]


def _codec_roundtrip(codec: Codec, rows: torch.Tensor) -> torch.Tensor:
    return codec.decode(codec.encode(rows))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("dense", {"dtype": "fp32"}),
        ("dense", {"dtype": "fp16"}),
        ("topk", {"k": 5, "decoder": "mr"}),
        ("topk", {"k": 4, "decoder": "ms"}),
    ],
)
def test_roundtrip_equals_codec_roundtrip(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted, name: str, options: dict
) -> None:
    codec = fitted(name, views, **options)
    path = tmp_path / "a.lz"
    account = save_archive(path, codec, views, chunk_size=50)
    decoded = load_archive(path)
    expected = _codec_roundtrip(codec, views.reshape(-1, 20)).reshape(48, 4, 20)
    assert decoded.shape == (48, 4, 20)
    assert torch.equal(decoded, expected)  # chunking never changes a label
    assert account.total_bytes == os.path.getsize(path)
    with ArchiveReader(path) as reader:
        assert reader.account() == account
        assert reader.layout == Layout(("sample", "view"), (48, 4))
        assert reader.num_chunks == 4  # 192 labels in chunks of 50
    if options.get("dtype") == "fp32":
        assert torch.equal(decoded, views)


@pytest.mark.parametrize(
    ("name", "options"), [("dense", {}), ("topk", {"k": 5, "decoder": "mrs"})]
)
def test_pruned_roundtrip_reuses_kept_label_of_same_sample(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted, name: str, options: dict
) -> None:
    plan = PrunePlan(("sample", "view"), (48, 4), 0.5, seed=7)
    rows = views.reshape(-1, 20)
    kept = plan.kept_indices()
    codec = fitted(name, rows[kept], **options)
    path = tmp_path / "p.lz"
    account = save_archive(path, codec, views, prune=plan, chunk_size=32)
    decoded = load_archive(path).reshape(-1, 20)
    stored = _codec_roundtrip(codec, rows[kept])  # (num_kept, C)
    assert torch.equal(decoded, stored[plan.table.long()])
    # every label decodes to a kept label of its own sample
    source = kept[plan.table.long()]
    assert torch.equal(source // 4, torch.arange(192) // 4)
    assert torch.equal(decoded[kept], stored)
    assert account.num_labels == 192
    chunks = [rows[kept][i : i + 32] for i in range(0, 96, 32)]
    assert account.payload_bytes == sum(codec.encode(c).nbytes for c in chunks)
    assert account.total_bytes == os.path.getsize(path)
    if name == "dense":
        assert account.payload_bytes == 96 * 20 * 2  # kept labels only


def test_save_archive_fits_unfitted_codec_on_kept_labels(
    tmp_path: Path, views: torch.Tensor
) -> None:
    plan = PrunePlan(("sample", "view"), (48, 4), 0.25, seed=1)
    account = save_archive(tmp_path / "a.lz", create_codec("dense"), views, prune=plan)
    assert account.payload_bytes == 48 * 20 * 2


def test_epoch_major_layout_streams_with_pruning(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    epochs = views.transpose(0, 1).contiguous()  # (E=4, N=48, C)
    layout = Layout(("epoch", "sample"), (4, 48))
    plan = PrunePlan(layout.dims, layout.shape, 0.5, seed=2)
    codec = fitted("dense", epochs, dtype="fp32")
    with ArchiveWriter(
        tmp_path / "e.lz", codec, layout=layout, prune=plan, chunk_size=10
    ) as writer:
        for epoch in epochs:  # one epoch at a time, as a relabel pipeline would
            writer.write(epoch)
    decoded = load_archive(tmp_path / "e.lz")
    flat = epochs.reshape(-1, 20)
    assert torch.equal(
        decoded.reshape(-1, 20), flat[plan.kept_indices()][plan.table.long()]
    )


def test_batch_partition_does_not_change_bytes(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("topk", views, k=3)
    rows = views.reshape(-1, 20)
    layout = Layout.for_shape((48, 4))
    save_archive(tmp_path / "one.lz", codec, views, chunk_size=16)
    with ArchiveWriter(tmp_path / "many.lz", codec, layout=layout, chunk_size=16) as w:
        start = 0
        for size in (1, 7, 40, 3, 16, 100, 25):  # sums to 192
            w.write(rows[start : start + size])
            start += size
    assert (tmp_path / "one.lz").read_bytes() == (tmp_path / "many.lz").read_bytes()


def test_same_inputs_give_byte_identical_archives(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    plan = PrunePlan(("sample", "view"), (48, 4), 0.5, seed=3)
    meta = ArchiveMetadata(teacher="t", user={"b": 1, "a": [1, 2]})
    for name in ("x.lz", "y.lz"):
        codec = fitted("topk", views, k=4)
        save_archive(tmp_path / name, codec, views, prune=plan, metadata=meta)
    assert (tmp_path / "x.lz").read_bytes() == (tmp_path / "y.lz").read_bytes()


def _count_reads(reader: ArchiveReader) -> list[int]:
    seen: list[int] = []
    original = reader.read_chunk

    def spy(index: int):  # type: ignore[no-untyped-def]
        seen.append(index)
        return original(index)

    reader.read_chunk = spy  # type: ignore[method-assign]
    return seen


def test_random_access_reads_only_covering_chunks(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("dense", views, dtype="fp32")
    save_archive(tmp_path / "a.lz", codec, views, chunk_size=16)  # 12 chunks
    rows = views.reshape(-1, 20)
    with ArchiveReader(tmp_path / "a.lz", cache_chunks=0) as reader:
        seen = _count_reads(reader)
        index = torch.tensor([40, 33, 120, 47, 33])  # chunks 2 and 7
        out = reader.decode(index)
        assert sorted(seen) == [2, 7]
        assert reader.chunk_reads == 2
        assert torch.equal(out, rows[index])


def test_random_access_pruned_reads_chunks_of_reused_labels(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    plan = PrunePlan(("sample", "view"), (48, 4), 0.5, seed=4)
    codec = fitted("dense", views, dtype="fp32")
    save_archive(tmp_path / "p.lz", codec, views, prune=plan, chunk_size=8)
    rows = views.reshape(-1, 20)
    index = torch.tensor([0, 1, 2, 3, 190])  # sample 0 (all views) and sample 47
    with ArchiveReader(tmp_path / "p.lz") as reader:
        seen = _count_reads(reader)
        out = reader.decode(index)
        want = {int(s) // 8 for s in plan.stored_index(index)}
        assert sorted(seen) == sorted(want) and len(want) == 2
        assert torch.equal(out, rows[plan.kept_indices()[plan.stored_index(index)]])


def test_decode_index_forms_and_cache(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("dense", views, dtype="fp32")
    save_archive(tmp_path / "a.lz", codec, views, chunk_size=16)
    rows = views.reshape(-1, 20)
    with ArchiveReader(tmp_path / "a.lz", cache_chunks=2) as reader:
        assert torch.equal(reader.decode(5), rows[5])
        assert torch.equal(reader[10:14], rows[10:14])
        assert torch.equal(reader.decode([3, 4]), rows[[3, 4]])
        grid = reader.layout.ravel(torch.tensor([[1], [2]]), torch.tensor([0, 3]))
        assert reader.decode(grid).shape == (2, 2, 20)
        assert torch.equal(reader.decode(grid), views[[[1], [2]], [0, 3]])
        assert reader.chunk_reads == 1  # chunk 0 served from the cache afterwards
        assert reader.decode(torch.tensor([], dtype=torch.int64)).shape == (0, 20)
        with pytest.raises(InputError, match=r"indices must lie in \[0, 192\)"):
            reader.decode([192])
        with pytest.raises(InputError, match="must be integers"):
            reader.decode(torch.tensor([1.0]))


@pytest.mark.parametrize("batch_size", [None, 7, 1000])
@pytest.mark.parametrize("memory", [1 << 20, 0])  # pruned: all stored in memory, or not
def test_decode_all_streams_in_order(
    tmp_path: Path,
    views: torch.Tensor,
    fitted: Fitted,
    batch_size: int | None,
    memory: int,
) -> None:
    codec = fitted("dense", views, dtype="fp32")
    epochs = views.transpose(0, 1).contiguous()  # (E, N, C): reuse spans the file
    layout = Layout(("epoch", "sample"), (4, 48))
    plan = PrunePlan(layout.dims, layout.shape, 0.5, seed=0)
    save_archive(tmp_path / "a.lz", codec, views, chunk_size=16)
    save_archive(
        tmp_path / "p.lz", codec, epochs, layout=layout, chunk_size=16, prune=plan
    )
    rows = epochs.reshape(-1, 20)
    expected = {
        "a.lz": views.reshape(-1, 20),
        "p.lz": rows[plan.kept_indices()][plan.table.long()],
    }
    for name, want in expected.items():
        with ArchiveReader(tmp_path / name) as reader:
            batches = list(reader.decode_all(batch_size, max_memory_bytes=memory))
            size = batch_size or 16
            assert all(b.shape[0] == size for b in batches[:-1])
            assert torch.equal(torch.cat(batches), want)
            if name == "a.lz" or memory:
                assert reader.chunk_reads == reader.num_chunks  # each chunk read once


def test_writer_holds_at_most_one_chunk(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("dense", views)
    sizes: list[int] = []
    encode = codec.encode

    def spy(rows: torch.Tensor):  # type: ignore[no-untyped-def]
        sizes.append(rows.shape[0])
        return encode(rows)

    codec.encode = spy  # type: ignore[method-assign]
    rows = views.reshape(-1, 20)
    with ArchiveWriter(tmp_path / "a.lz", codec, chunk_size=24) as writer:
        for start in range(0, 192, 10):
            writer.write(rows[start : start + 10])
            assert writer._pending_rows < 24  # never more than one chunk pending
    assert sizes == [24] * 8


def test_write_kept_equals_write(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    layout = Layout.for_shape((48, 4))
    plan = PrunePlan(layout.dims, layout.shape, 0.5, seed=9)
    codec = fitted("dense", views)
    rows = views.reshape(-1, 20)
    save_archive(tmp_path / "a.lz", codec, views, prune=plan, chunk_size=20)
    with ArchiveWriter(
        tmp_path / "b.lz", codec, layout=layout, prune=plan, chunk_size=20
    ) as w:
        kept = rows[plan.kept_indices()]
        w.write_kept(kept[:11])
        w.write_kept(kept[11:])
    assert (tmp_path / "a.lz").read_bytes() == (tmp_path / "b.lz").read_bytes()


def test_metadata_and_side_tensors(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("dense", views)
    names = tuple(f"class{i}" for i in range(20))
    meta = ArchiveMetadata(names, "sha256:abc", "effnet-lite0", {"ipc": 10})
    aug = torch.arange(48 * 4 * 5, dtype=torch.int32).reshape(48, 4, 5)
    account = save_archive(
        tmp_path / "a.lz", codec, views, metadata=meta, side_tensors={"aug": aug}
    )
    assert account.side_bytes == aug.numel() * 4
    assert account.total_bytes == os.path.getsize(tmp_path / "a.lz")
    with ArchiveReader(tmp_path / "a.lz") as reader:
        assert reader.metadata == meta
        assert torch.equal(reader.side_tensors()["aug"], aug)
        assert reader.account() == account
        reader.verify()


def test_archive_is_plain_safetensors(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("dense", views)
    save_archive(tmp_path / "a.lz", codec, views, chunk_size=100)
    with safe_open(str(tmp_path / "a.lz"), framework="pt") as handle:
        assert sorted(handle.keys()) == ["chunk/000000", "chunk/000001", "digests"]
        assert '"format":"labelzip"' in handle.metadata()["labelzip"]
        chunk = handle.get_tensor("chunk/000001")
        assert chunk.dtype == torch.uint8
        # Format 3: per tensor, sorted by name, the sha256 of its header entry
        # as canonical JSON, a newline, then the binary sha256 of its bytes.
        digests = handle.get_tensor("digests")
        assert digests.shape == (2, 32) and digests.dtype == torch.uint8
        container = read_container_header(tmp_path / "a.lz")

        def digest(name: str, tensor: torch.Tensor) -> bytes:
            e = container.entries[name]
            entry = {
                "data_offsets": [e.start, e.end],
                "dtype": e.dtype,
                "name": name,
                "shape": list(e.shape),
            }
            text = json.dumps(entry, sort_keys=True, separators=(",", ":"))
            data = hashlib.sha256(tensor.numpy().tobytes()).digest()
            return hashlib.sha256(text.encode() + b"\n" + data).digest()

        assert bytes(digests[1].tolist()) == digest("chunk/000001", chunk)
        doc = json.loads(handle.metadata()["labelzip"])
        assert doc["format_version"] == 3
        assert doc["checksums"] == {"digests": digest("digests", digests).hex()}
        meta = handle.metadata()
        assert (
            meta["labelzip_sha256"]
            == hashlib.sha256(meta["labelzip"].encode()).hexdigest()
        )


def test_writer_rejects_wrong_label_counts_and_leaves_no_file(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("dense", views)
    layout = Layout.for_shape((48, 4))
    writer = ArchiveWriter(tmp_path / "a.lz", codec, layout=layout)
    with pytest.raises(InputError, match="holds 192 labels but 200 were written"):
        writer.write(torch.zeros(200, 20))
    writer.write(views[:10])
    with pytest.raises(InputError, match="needs 192 labels but 40 were written"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), ArchiveWriter(tmp_path / "b.lz", codec) as w:
        w.write(views)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_argument_errors(
    tmp_path: Path, views: torch.Tensor, fitted: Fitted
) -> None:
    codec = fitted("dense", views)
    with pytest.raises(ConfigError, match="fitted codec"):
        ArchiveWriter(tmp_path / "a.lz", create_codec("dense"))
    with pytest.raises(InputError, match="does not exist"):
        ArchiveWriter(tmp_path / "missing" / "a.lz", codec)
    with pytest.raises(ConfigError, match="class_names has 2 names"):
        ArchiveWriter(tmp_path / "a.lz", codec, metadata=ArchiveMetadata(("a", "b")))
    plan = PrunePlan(("sample", "view"), (48, 4), 0.5)
    with pytest.raises(ConfigError, match="needs the layout"):
        ArchiveWriter(tmp_path / "a.lz", codec, prune=plan)
    with pytest.raises(InputError, match="fitted for 20 classes"):
        ArchiveWriter(tmp_path / "a.lz", codec).write(torch.zeros(3, 7))
    with pytest.raises(InputError, match="NaN or Inf"):
        ArchiveWriter(tmp_path / "a.lz", codec).write(torch.full((3, 20), float("nan")))
    with pytest.raises(InputError, match="no labels were written"):
        ArchiveWriter(tmp_path / "a.lz", codec).close()
    assert list(tmp_path.iterdir()) == []
