"""`labelzip decompress`, in-process: dense float32 output with the original layout."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from labelzip.archive import ArchiveReader, Layout, save_archive
from labelzip.archive.format import encode_container_header, read_container_header
from labelzip.cli.decompress import main
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import create_codec


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def views(make_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    return make_logits(40 * 3, 16, 6).reshape(40, 3, 16)


def test_dense_fp32_round_trip_is_exact(
    tmp_path: Path, views: torch.Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    save_archive(
        tmp_path / "a.lz", create_codec("dense", dtype="fp32"), views, chunk_size=7
    )
    out = tmp_path / "out.safetensors"
    code, stdout, err = _run([str(tmp_path / "a.lz"), "-o", str(out)], capsys)
    assert code == 0, err
    assert "(40, 3, 16)" in stdout
    decoded = load_file(str(out))["logits"]
    assert decoded.dtype == torch.float32 and torch.equal(decoded, views)
    with safe_open(str(out), framework="pt") as handle:
        assert json.loads(handle.metadata()["labelzip_dims"]) == ["sample", "view"]


def test_pruned_topk_keeps_layout_and_inf(
    tmp_path: Path, views: torch.Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = Layout.for_shape((40, 3))
    plan = PrunePlan(layout.dims, layout.shape, 0.34, seed=1)
    codec = create_codec("topk", k=3, decoder="mr")
    save_archive(tmp_path / "a.lz", codec, views, prune=plan, chunk_size=16)
    out = tmp_path / "out.safetensors"
    code, stdout, _ = _run([str(tmp_path / "a.lz"), "-o", str(out), "--json"], capsys)
    assert code == 0
    assert json.loads(stdout)["shape"] == [40, 3, 16]
    decoded = load_file(str(out))["logits"].reshape(-1, 16)
    rows = views.reshape(-1, 16)
    kept = rows[plan.kept_indices()]
    want = codec.decode(codec.encode(kept))[plan.table.long()]
    assert torch.equal(decoded, want)
    assert int(torch.isinf(decoded).sum(1).min()) == 13  # mr: -inf off the top 3


def _archive(tmp_path: Path, views: torch.Tensor) -> Path:
    path = tmp_path / "a.lz"
    save_archive(path, create_codec("dense"), views, chunk_size=30)
    return path


def _set_version(path: Path, version: int) -> None:
    raw = path.read_bytes()
    container = read_container_header(path)
    doc = json.loads(container.metadata["labelzip"])
    doc["format_version"] = version
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    (length,) = struct.unpack("<Q", raw[:8])
    outer = json.loads(raw[8 : 8 + length])
    sha = hashlib.sha256(text.encode()).hexdigest()
    outer["__metadata__"] = {"labelzip": text, "labelzip_sha256": sha}
    head = json.dumps(outer, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + length :])


def _corrupt(path: Path, how: str) -> Path:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[:-50]))
    elif how == "checksum":
        data[-10] ^= 0xFF  # inside the last chunk
        path.write_bytes(bytes(data))
    elif how == "version":
        _set_version(path, 7)
    elif how == "not-archive":
        save_file({"logits": torch.zeros(3, 4)}, str(path))
    elif how == "garbage":
        path.write_bytes(b"\x00" * 5)
    elif how == "missing":
        path.unlink()
    return path


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("truncated", "is truncated"),
        ("checksum", "tensor 'chunk/000003' does not match its checksum"),
        ("version", "format version 7; this labelzip reads version 1"),
        ("not-archive", "not a labelzip archive"),
        ("garbage", "too short"),
        ("missing", "does not exist"),
    ],
)
def test_bad_archive_leaves_no_output(
    tmp_path: Path,
    views: torch.Tensor,
    capsys: pytest.CaptureFixture[str],
    how: str,
    match: str,
) -> None:
    src = _corrupt(_archive(tmp_path, views), how)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = _run([str(src), "-o", str(out_dir / "x.safetensors")], capsys)
    assert code == 2
    assert err.startswith("labelzip decompress: error: ") and err.count("\n") == 1
    assert match in err, err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("output", "match"),
    [
        ("missing/x.safetensors", "does not exist"),
        ("x.pt", "must end in .safetensors or .npy"),
    ],
)
def test_bad_output(
    tmp_path: Path,
    views: torch.Tensor,
    capsys: pytest.CaptureFixture[str],
    output: str,
    match: str,
) -> None:
    src = _archive(tmp_path, views)
    code, _, err = _run([str(src), "-o", str(tmp_path / output)], capsys)
    assert code == 2 and match in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lz"]


def _pre_streaming_bytes(archive: Path) -> bytes:
    """What decompress wrote before its output was streamed through
    SafetensorsStreamWriter: encode_container_header, then the decoded rows."""
    with ArchiveReader(archive) as reader:
        shape = [*reader.layout.shape, reader.num_classes]
        metadata = {
            "labelzip_codec": reader.codec_name,
            "labelzip_dims": json.dumps(list(reader.layout.dims)),
        }
        nbytes = reader.num_labels * reader.num_classes * 4
        prefix, _ = encode_container_header(
            metadata, [("logits", "F32", shape, nbytes)]
        )
        body = b"".join(b.contiguous().numpy().tobytes() for b in reader.decode_all())
    return prefix + body


@pytest.mark.parametrize("codec", ["dense", "topk", "topk-tail"])
def test_streamed_output_bytes_are_unchanged(
    tmp_path: Path,
    views: torch.Tensor,
    capsys: pytest.CaptureFixture[str],
    codec: str,
) -> None:
    layout = Layout.for_shape((40, 3))
    plan = (
        PrunePlan(layout.dims, layout.shape, 0.5, seed=2) if codec == "topk" else None
    )
    archive = tmp_path / "a.lz"
    kwargs = {"k": 4} if codec != "dense" else {}
    save_archive(
        archive, create_codec(codec, **kwargs), views, prune=plan, chunk_size=16
    )
    out = tmp_path / "out.safetensors"
    assert _run([str(archive), "-o", str(out), "--quiet"], capsys)[0] == 0
    assert out.read_bytes() == _pre_streaming_bytes(archive)
    logits = load_file(str(out))["logits"]
    npy = tmp_path / "out.npy"
    assert _run([str(archive), "-o", str(npy), "--quiet"], capsys)[0] == 0
    np.save(tmp_path / "ref.npy", logits.numpy())
    assert npy.read_bytes() == (tmp_path / "ref.npy").read_bytes()


def test_interrupted_decompress_leaves_no_output(
    tmp_path: Path,
    views: torch.Tensor,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = _archive(tmp_path, views)
    real = ArchiveReader.decode_all

    def dying(self: ArchiveReader, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        batches = real(self, *args, **kwargs)  # type: ignore[arg-type]
        yield next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr(ArchiveReader, "decode_all", dying)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "x.npy").write_bytes(b"previous")
    assert main([str(src), "-o", str(out_dir / "x.npy"), "--quiet"]) != 0
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in out_dir.iterdir()] == ["x.npy"]
    assert (out_dir / "x.npy").read_bytes() == b"previous"


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert (
        info.value.code == 0
        and "labelzip decompress labels.lz" in capsys.readouterr().out
    )
