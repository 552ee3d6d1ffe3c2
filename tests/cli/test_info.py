"""`labelzip info`, in-process: the all-in account equals the file on disk."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveMetadata, Layout, save_archive
from labelzip.archive.format import read_container_header
from labelzip.cli import main as labelzip_main
from labelzip.cli.info import main
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import create_codec

REQUIRED = {
    "codec",
    "num_labels",
    "num_classes",
    "payload_bytes",
    "model_bytes",
    "side_bytes",
    "header_bytes",
    "total_bytes",
    "reference_bytes",
    "ratio",
    "bits_per_label",
    "layout",
    "format_version",
    "integrity",
}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def archive(tmp_path: Path, make_logits: Callable[..., torch.Tensor]) -> Path:
    views = make_logits(30 * 4, 12, 8).reshape(30, 4, 12)
    layout = Layout.for_shape((30, 4))
    plan = PrunePlan(layout.dims, layout.shape, 0.5, seed=2)
    path = tmp_path / "a.lz"
    meta = ArchiveMetadata(teacher="effnet", dataset_fingerprint="fp")
    side = {"aug": torch.zeros(30, 4, 3, dtype=torch.int16)}
    save_archive(
        path,
        create_codec("topk", k=3),
        views,
        prune=plan,
        chunk_size=16,
        metadata=meta,
        side_tensors=side,
    )
    return path


def test_json_account_matches_file(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = _run([str(archive), "--json"], capsys)
    assert code == 0, err
    info = json.loads(stdout)
    assert REQUIRED <= set(info)
    assert info["total_bytes"] == os.path.getsize(archive)
    parts = ("payload_bytes", "model_bytes", "side_bytes", "header_bytes")
    assert sum(info[k] for k in parts) == info["total_bytes"]
    assert info["reference_bytes"] == 120 * 12 * 2
    assert info["ratio"] == pytest.approx(info["reference_bytes"] / info["total_bytes"])
    assert info["bits_per_label"] == pytest.approx(8 * info["total_bytes"] / 120)
    assert info["side_bytes"] == 30 * 4 * 3 * 2
    assert (
        info["codec"] == "topk"
        and info["num_labels"] == 120
        and info["num_stored"] == 60
    )
    assert info["layout"] == {"dims": ["sample", "view"], "shape": [30, 4]}
    assert info["format_version"] == 3 and info["prune"]["keep_fraction"] == 0.5
    assert info["teacher"] == "effnet" and info["verified"] is False


def test_text_output_and_verify(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = _run([str(archive), "--verify"], capsys)
    assert code == 0
    assert f"({os.path.getsize(archive)} bytes)" in stdout
    assert "keep 0.5, seed 2" in stdout and "all ok" in stdout


def test_dispatcher(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert labelzip_main(["info", str(archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["codec"] == "topk"


def test_verify_finds_corruption(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    container = read_container_header(archive)
    entry = container.entries["chunk/000002"]
    data = bytearray(archive.read_bytes())
    data[container.data_start + entry.start] ^= 0x10
    archive.write_bytes(bytes(data))
    assert _run([str(archive)], capsys)[0] == 0  # the header alone is intact
    code, _, err = _run([str(archive), "--verify"], capsys)
    assert code == 2 and "'chunk/000002' does not match its checksum" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"not an archive, just text", "not a labelzip archive"),
        ("truncate", "is truncated"),
    ],
)
def test_bad_archive(
    archive: Path, capsys: pytest.CaptureFixture[str], content: object, match: str
) -> None:
    if content is None:
        archive.unlink()
    elif content == "truncate":
        archive.write_bytes(archive.read_bytes()[:-1])
    else:
        assert isinstance(content, bytes)
        archive.write_bytes(content)
    code, stdout, err = _run([str(archive), "--json"], capsys)
    assert code == 2 and stdout == ""
    assert (
        err.startswith("labelzip info: error: ")
        and match in err
        and err.count("\n") == 1
    )


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "labelzip info labels.lz" in capsys.readouterr().out


def test_renamed_codec_shows_its_name_and_stored_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fixture = Path(__file__).parents[1] / "fixtures" / "archives" / "vqae_ctx.lz"
    code, out, _ = _run([str(fixture)], capsys)
    assert code == 0
    assert "view-mix (stored key vqae-ctx, id 6)" in out
    code, out, _ = _run([str(fixture), "--json"], capsys)
    assert json.loads(out)["codec"] == "vqae-ctx"  # machine output: the stored key
