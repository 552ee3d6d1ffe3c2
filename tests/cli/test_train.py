"""`labelzip train`, in-process: a student from a saved set and archive; errors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from labelzip.augment import ViewConfig
from labelzip.cli.train import main
from labelzip.data import FASHION_MNIST_CLASSES
from labelzip.distill import DistilledSet
from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel

torch.set_num_threads(1)


def _images(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, 1, 28, 28) uint8: noise plus a bright row band at a class-specific height."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (len(labels), 1, 28, 28), generator=g)
    for n, label in enumerate(labels.tolist()):
        images[n, :, 2 * label + 4 : 2 * label + 7] += 180
    return images.clamp(0, 255).to(torch.uint8)


def _write_idx(
    folder: Path, split: str, images: torch.Tensor, labels: torch.Tensor
) -> None:
    """Fashion-MNIST-format IDX .gz files of ``images`` (N, 1, 28, 28) and ``labels``."""
    prefix = "train" if split == "train" else "t10k"
    pixels = images[:, 0].numpy().astype(np.uint8)
    ids = labels.numpy().astype(np.uint8)
    for name, array, rank in (("images-idx3", pixels, 3), ("labels-idx1", ids, 1)):
        header = bytes([0, 0, 0x08, rank]) + b"".join(
            int(d).to_bytes(4, "big") for d in array.shape
        )
        with gzip.open(folder / f"{prefix}-{name}-ubyte.gz", "wb") as handle:
            handle.write(header + array.tobytes())


class _BandTeacher(nn.Module):
    """Reads each class's row band: (B, 1, 28, 28) -> (B, 10) logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.float().mean(dim=(1, 3))  # (B, 28)
        bands = torch.stack(
            [rows[:, 2 * c + 4 : 2 * c + 7].mean(1) for c in range(10)], 1
        )
        return bands / 20.0


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    labels = torch.arange(10).repeat_interleave(2)
    distilled = DistilledSet(
        images=_images(labels, 0), labels=labels,
        class_names=FASHION_MNIST_CLASSES, method="random", ipc=2,
    )  # fmt: skip
    set_path = distilled.save(tmp_path / "set.safetensors")
    archive = tmp_path / "dense.lz"
    config = RelabelConfig(
        epochs=4, view=ViewConfig(output_size=28, scale=(0.6, 1.0)), batch_size=64
    )
    relabel(distilled, _BandTeacher(), [RelabelOutput(path=archive)], config)
    data = tmp_path / "fmnist"
    data.mkdir()
    test_labels = torch.arange(100) % 10
    _write_idx(data, "test", _images(test_labels, 1), test_labels)
    return {"set": set_path, "archive": archive, "data": data}


STUDENT = ["--width", "8", "--depth", "2", "--batch-size", "5", "--lr", "0.01"]


def test_train_reports_accuracy_and_decode_share(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    save = tmp_path / "student.safetensors"
    argv = [str(files["set"]), str(files["archive"]), "--data-dir", str(files["data"])]
    code = main([*argv, *STUDENT, "--epochs", "8", "--json", "--save", str(save)])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert len(report["epochs"]) == 8 and report["config"]["width"] == 8
    assert 0.0 <= report["accuracy"] <= 1.0
    assert 0.0 < report["decode_share"] < 1.0
    assert report["epochs"][-1]["loss"] < report["epochs"][0]["loss"]
    with safe_open(str(save), framework="pt") as handle:
        meta = json.loads(handle.metadata()["labelzip_student"])
        assert meta["accuracy"] == report["accuracy"]
        assert "head.weight" in handle.keys()
    stats = ["--input-mean", "72.9", "--input-std", "90"]
    code = main([*argv, *STUDENT, *stats, "--epochs", "2", "--test-set", "none"])
    text = capsys.readouterr().out
    assert code == 0 and "epoch    2" in text and "test accuracy n/a" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test-set", "nowhere"], "test set 'nowhere' is neither"),
        (["--lr", "-1"], "invalid student options: lr: Input should be greater than 0"),
        (["--data-dir", "{empty}"], "Fashion-MNIST file .* is missing; install"),
        (["--save", "{nofolder}"], "output folder .* does not exist"),
        (["--input-mean", "x"], "--input-mean expects numbers, got 'x'"),
        (["--input-mean", "1,2", "--test-set", "none"], "one value per channel \\(1\\)"),
    ],
)  # fmt: skip
def test_train_bad_input_is_one_line(
    tmp_path: Path,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    import re

    (tmp_path / "empty").mkdir()
    names = {"empty": str(tmp_path / "empty"), "nofolder": str(tmp_path / "x" / "s.st")}
    argv = [
        str(files["set"]),
        str(files["archive"]),
        *[e.format(**names) for e in extra],
    ]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("labelzip train: error:"), err
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_train_refuses_an_archive_of_another_set(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    other = DistilledSet.load(files["set"])
    shifted = DistilledSet(
        images=255 - other.images, labels=other.labels,
        class_names=other.class_names, method="random", ipc=2,
    )  # fmt: skip
    path = shifted.save(tmp_path / "other.safetensors")
    code = main([str(path), str(files["archive"]), "--test-set", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "was made for distilled set" in err


@pytest.mark.slow
def test_train_under_torchrun_with_two_gloo_ranks(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    argv += ["--standalone", "-m", "labelzip", "train"]  # free port, no clash
    argv += [str(files["set"]), str(files["archive"]), "--test-set", "none"]
    argv += [*STUDENT, "--epochs", "2", "--json", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # only rank 0 prints
    assert [log["steps"] for log in report["epochs"]] == [2, 2]  # 10 images / 5
