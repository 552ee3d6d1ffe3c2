"""Megatron-LM logit shards: lossless import, export round trip, variants, errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
import zstandard

from labelzip.archive import ArchiveReader
from labelzip.bench.lm_stores import MegatronSaver, lm_logits, write_megatron
from labelzip.errors import InputError
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import CodecChoice, export_archive, import_store
from labelzip.interop.formats import get_format
from labelzip.interop.megatron import PAD_ID, PAD_VALUE, read_payload

V = 700


def members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        out = []
        for m in tar:
            handle = tar.extractfile(m)
            assert handle is not None
            out.append((m.name, handle.read()))
        return out


def make_store(root: Path, **kwargs) -> Path:
    store = root / "logits"
    options = {"k": 16, "micro_batch": 2, "microbatches": 2, "iterations_per_tar": 2}
    write_megatron(store, lm_logits(10, 12, V), MegatronSaver(**{**options, **kwargs}))
    return store


def assert_same_shards(src: Path, out: Path) -> None:
    names = sorted(p.name for p in src.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        a, b = members(src / name), members(out / name)
        assert [m[0] for m in a] == [m[0] for m in b]
        assert a[0] == b[0]  # _meta.json, verbatim
        for (member, x), (_, y) in zip(a[1:], b[1:], strict=True):
            # same torch, same tensors: the same torch.save bytes (no view bloat)
            plain = zstandard.ZstdDecompressor()
            assert plain.decompress(x) == plain.decompress(y), (name, member)
            left, right = read_payload(x, member), read_payload(y, member)
            for key in left:
                for u, w in zip(left[key], right[key], strict=True):
                    assert u.dtype == w.dtype and torch.equal(u, w), (name, member, key)


@pytest.mark.parametrize(
    ("p", "dtype"),
    [(None, "fp16"), (0.5, "bf16"), (None, "fp32")],
    ids=["topk-fp16", "topp-bf16", "topk-fp32"],
)
def test_lossless_import_and_export_round_trip(tmp_path: Path, p, dtype: str) -> None:
    store = make_store(tmp_path, p=p, save_dtype=dtype)
    account = import_store(store, "megatron", tmp_path / "a.lz")
    assert account.num_labels == 10 * 12
    with ArchiveReader(tmp_path / "a.lz") as reader:
        doc = reader.header.user["interop"]
        assert doc["variant"] == ("top-p" if p else "top-k")
        assert (
            doc["value_dtype"]
            == {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[dtype]
        )
        assert reader.header.layout.dims == ["sequence", "position"]
        assert reader.header.layout.shape == [10, 12]
        # label 1 = sequence 0, position 1 of the first microbatch, as stored
        first = members(sorted(store.iterdir())[0])[1]
        stored = read_payload(first[1], first[0])
        values, ids = reader.codec.decode_topk(reader.read_chunk(0))  # type: ignore[attr-defined]
        want = stored["values"][0][1, 0]
        kk = want.shape[0]
        assert torch.equal(values[1, :kk], want)
        real = want != PAD_VALUE
        low, bit = stored["indices_low"][0][1, 0], stored["bit_17"][0][1, 0]
        assert torch.equal(ids[1, :kk][real], ((bit.long() << 16) | low.long())[real])
    if p is not None:
        assert bool((want == PAD_VALUE).any())  # the fixture really pads
    out = tmp_path / "out"
    export_archive(tmp_path / "a.lz", None, out)
    assert_same_shards(store, out)


def test_padding_keeps_its_17_bit_id(tmp_path: Path) -> None:
    store = make_store(tmp_path, p=0.5)
    export_archive_path = tmp_path / "out"
    import_store(store, "megatron", tmp_path / "a.lz")
    export_archive(tmp_path / "a.lz", "megatron", export_archive_path)
    name, data = members(sorted(export_archive_path.iterdir())[0])[1]
    payload = read_payload(data, name)
    values, low, bit = (
        payload["values"][0],
        payload["indices_low"][0],
        payload["bit_17"][0],
    )
    pad = values == PAD_VALUE
    ids = (bit.long() << 16) | low.long()
    assert bool(pad.any()) and bool((ids[pad] == PAD_ID).all())


def test_lossy_import_exports_the_decoded_top_k(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    import_store(
        store,
        "megatron",
        tmp_path / "b.lz",
        codec=CodecChoice(
            name="topk", options={"k": 6, "decoder": "ms", "temperature": 1.0}
        ),
    )
    export_archive(tmp_path / "b.lz", None, tmp_path / "out")
    name, data = members(sorted((tmp_path / "out").iterdir())[0])[1]
    original = read_payload(members(sorted(store.iterdir())[0])[1][1], name)
    payload = read_payload(data, name)
    assert [v.shape for v in payload["values"]] == [v.shape for v in original["values"]]
    assert payload["values"][0].dtype == torch.float16
    # the six kept ids lead, in order
    ids = (payload["bit_17"][0].long() << 16) | payload["indices_low"][0].long()
    ref = (original["bit_17"][0].long() << 16) | original["indices_low"][0].long()
    assert torch.equal(ids[..., :6], ref[..., :6])


def test_num_classes_bounds_the_ids(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store_obj = get_format("megatron").open(store, ImportOptions())
    assert store_obj.num_classes <= V
    with pytest.raises(InputError, match="--num-classes 10"):
        get_format("megatron").open(store, ImportOptions(num_classes=10))


def test_truncated_tar_names_the_shard(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    shard = sorted(store.iterdir())[-1]
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    cut = last.offset_data + last.size // 2  # inside the last member's bytes
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(InputError, match=shard.name):
        import_store(store, "megatron", tmp_path / "a.lz")
    assert not (tmp_path / "a.lz").exists()


def rewrite(shard: Path, change) -> None:
    items = change(members(shard))
    with tarfile.open(shard, "w") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_member_is_named(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    shard = sorted(store.iterdir())[0]
    rewrite(
        shard, lambda items: [items[0], (items[1][0], items[1][1][:40])] + items[2:]
    )
    with pytest.raises(InputError, match=rf"{shard.name}:1\.pt\.zst: truncated zstd"):
        get_format("megatron").open(store, ImportOptions())
    rewrite(
        shard, lambda items: [items[0], (items[1][0], b"not zstd at all")] + items[2:]
    )
    with pytest.raises(InputError, match=r"1\.pt\.zst: not a zstd frame"):
        get_format("megatron").open(store, ImportOptions())


def test_member_asking_for_objects_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    shard = sorted(store.iterdir())[0]
    buf = io.BytesIO()
    torch.save({"values": [object()], "indices_low": [], "bit_17": []}, buf)
    evil = zstandard.ZstdCompressor(level=3).compress(buf.getvalue())
    rewrite(shard, lambda items: [items[0], (items[1][0], evil)] + items[2:])
    with pytest.raises(InputError, match="not a tensors-only torch.save"):
        get_format("megatron").open(store, ImportOptions())


def test_missing_meta_or_member_and_mixed_runs(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    shard = sorted(store.iterdir())[0]
    rewrite(shard, lambda items: items[1:])
    with pytest.raises(InputError, match=f"{shard.name}: no leading _meta.json"):
        get_format("megatron").open(store, ImportOptions())
    store = make_store(tmp_path / "b")
    shard = sorted(store.iterdir())[1]
    rewrite(shard, lambda items: items[:1])
    with pytest.raises(InputError, match=f"{shard.name}: no <iteration>.pt.zst"):
        get_format("megatron").open(store, ImportOptions())
    store = make_store(tmp_path / "c")
    shard = sorted(store.iterdir())[1]

    def other_k(items):
        meta = json.loads(items[0][1])
        meta["saver"]["k"] = 8
        return [("_meta.json", json.dumps(meta).encode())] + items[1:]

    rewrite(shard, other_k)
    with pytest.raises(InputError, match="differ from the other shards"):
        get_format("megatron").open(store, ImportOptions())
    (store / "notes.tar").write_bytes(b"")
    with pytest.raises(InputError, match="notes.tar: not a Megatron shard name"):
        get_format("megatron").open(store, ImportOptions())
