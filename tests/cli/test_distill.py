"""`labelzip distill`, in-process, on a tiny Fashion-MNIST copy (40 images per class)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelzip.cli import main as labelzip_main
from labelzip.cli.distill import main, parse_classes
from labelzip.data import load_fashion_mnist
from labelzip.distill import DistilledSet
from labelzip.errors import ConfigError


def _idx(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return gzip.compress(header + array.tobytes(), mtime=0)


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IDX files holding the first 40 test images of each class, as a 'train' split."""
    full = load_fashion_mnist("test")
    idx = torch.cat(
        [torch.nonzero(full.labels == c).reshape(-1)[:40] for c in range(10)]
    )
    images = full.images[idx, 0].numpy()
    labels = full.labels[idx].numpy().astype(np.uint8)
    root = tmp_path_factory.mktemp("fmnist")
    (root / "train-images-idx3-ubyte.gz").write_bytes(_idx(images, 0x08))
    (root / "train-labels-idx1-ubyte.gz").write_bytes(_idx(labels, 0x08))
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELZIP_CACHE", str(tmp_path / "cache"))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_random_set_and_json(
    tiny_fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "random.safetensors"
    argv = ["--data-dir", str(tiny_fmnist), "--method", "random", "--ipc", "3"]
    code, stdout, err = _run([*argv, "-o", str(out), "--json", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    ds = DistilledSet.load(out)
    assert summary["fingerprint"] == ds.fingerprint and summary["num_images"] == 30
    assert (
        summary["image_shape"] == [1, 28, 28]
        and summary["file_bytes"] == out.stat().st_size
    )
    assert ds.class_counts().tolist() == [3] * 10 and ds.teacher_id is None
    code, stdout, _ = _run([*argv, "-o", str(tmp_path / "again.safetensors")], capsys)
    assert code == 0 and "random: 30 images 1x28x28 (10 of 10 classes, ipc 3)" in stdout
    assert (tmp_path / "again.safetensors").read_bytes() == out.read_bytes()


def test_sre2l_trains_and_caches_the_teacher(
    tiny_fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sre2l.safetensors"
    argv = [
        "distill", "--data-dir", str(tiny_fmnist), "--method", "sre2l", "--ipc", "1",
        "--teacher", "convnet", "--teacher-epochs", "1", "--steps", "3",
        "--classes", "0-2,7", "--seed", "5", "-o", str(out),
    ]  # fmt: skip
    assert labelzip_main(argv) == 0
    ds = DistilledSet.load(out)
    assert ds.method == "sre2l" and ds.labels.tolist() == [0, 1, 2, 7]
    assert ds.teacher_id is not None and ds.teacher_id.startswith("convnet:")
    assert ds.config["steps"] == 3 and ds.config["seed"] == 5
    assert list((tmp_path / "cache" / "teachers").glob("convnet-*.safetensors"))
    stdout = capsys.readouterr().out
    assert "teacher_accuracy" in stdout


def test_import_from_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for c in (0, 3):
        (tmp_path / "syn" / f"new{c:03d}").mkdir(parents=True)
        Image.fromarray(np.full((12, 12), 9 * c, np.uint8), "L").save(
            tmp_path / "syn" / f"new{c:03d}" / "a.png"
        )
    out = tmp_path / "imported.safetensors"
    argv = [
        "--dataset", "imagenet", "--method", "import", "--from-folder",
        str(tmp_path / "syn"), "--image-size", "16", "-o", str(out),
    ]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    ds = DistilledSet.load(out)
    assert ds.images.shape == (2, 3, 16, 16) and ds.labels.tolist() == [0, 3]


def test_parse_classes() -> None:
    assert parse_classes("0-3,9, 5") == [0, 1, 2, 3, 9, 5]
    with pytest.raises(ConfigError, match="ids and ranges like 0-9,12"):
        parse_classes("a-b")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "sre2l"], "--method sre2l needs --ipc"),
        (
            ["--method", "random", "--ipc", "41"],
            "has only 40 images; use --ipc 40 or less",
        ),
        (["--method", "random", "--ipc", "1", "--classes", "x"], "--classes expects"),
        (
            ["--method", "random", "--ipc", "1", "--opt", "steps=3"],
            "Extra inputs are not permitted",
        ),
        (["--method", "import"], "needs --from-folder"),
        (
            ["--method", "rded", "--ipc", "1", "--factor", "0"],
            "factor: Input should be greater",
        ),
        (["--method", "sre2l", "--ipc", "0"], "--ipc must be >= 1, got 0"),
        (["--method", "rded", "--ipc", "11", "--factor", "2"], "needs 44 real images"),
        (["--method", "rded", "--ipc", "41"], "has only 40 images; use --ipc 40"),
        (
            ["--method", "sre2l", "--ipc", "1", "--teacher-epochs", "0"],
            "epochs: Input should be",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(
    extra: list[str], message: str, tiny_fmnist: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    argv = [
        "--data-dir",
        str(tiny_fmnist),
        *extra,
        "-o",
        str(tmp_path / "x.safetensors"),
    ]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert err.startswith("labelzip distill: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "x.safetensors").exists()
    assert not (tmp_path / "cache").exists()  # refused before any teacher training


def test_other_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        [
            "--dataset",
            "imagenet",
            "--method",
            "random",
            "--ipc",
            "1",
            "-o",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 2 and "no ImageNet training images" in err
    code, _, err = _run(
        [
            "--method",
            "random",
            "--ipc",
            "1",
            "-o",
            str(tmp_path / "no" / "x.safetensors"),
        ],
        capsys,
    )
    assert code == 2 and "does not exist; create it first" in err
    code, _, err = _run(
        [
            "--data-dir",
            str(tmp_path),
            "--method",
            "random",
            "--ipc",
            "1",
            "-o",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "labelzip distill --dataset fashion-mnist --method sre2l --ipc 10" in text
    assert "--opt KEY=VALUE" in text
