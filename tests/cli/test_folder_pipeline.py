"""A user's own image folder through `distill`, `relabel` and `train`, in-process.

Each test builds a 10-class train/ and test/ tree of PNGs, grayscale or RGB, as a
new user would, and runs the commands on it: small teachers train on that folder
(cached by its fingerprint, never on Fashion-MNIST), teacher files load as
TorchScript, and a pickled teacher is refused unless trusted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveReader
from labelzip.cli.distill import main as distill_main
from labelzip.cli.relabel import main as relabel_main
from labelzip.cli.train import main as train_main
from labelzip.data import load_image_folder
from labelzip.distill import DistilledSet
from labelzip.pipelines.sources import load_test_set
from labelzip.teachers import TeacherTrainConfig, build_small_teacher

Command = Callable[[list[str]], int]
STUDENT = ["--width", "8", "--depth", "2", "--batch-size", "10", "--epochs", "2"]


@pytest.fixture
def folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_folder: Callable[..., Path]
) -> Callable[[int], tuple[Path, Path]]:
    """``make(channels)`` -> (train/, test/) trees of 28 px PNGs; a fresh cache."""
    monkeypatch.setenv("LABELZIP_CACHE", str(tmp_path / "cache"))

    def make(channels: int) -> tuple[Path, Path]:
        root = tmp_path / f"data{channels}"
        train = image_folder(root / "train", channels=channels, per_class=6)
        test = image_folder(root / "test", channels=channels, per_class=2, seed=1)
        return train, test

    return make


def _run(
    command: Command, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = command(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _ok(command: Command, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = _run(command, argv, capsys)
    assert code == 0, err
    return out


def _fails(
    command: Command, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    code, out, err = _run(command, argv, capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("channels", [1, 3])
def test_distill_relabel_train_on_a_users_folder(
    channels: int,
    tmp_path: Path,
    folders: Callable[[int], tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    train, test = folders(channels)
    out = tmp_path / "set.safetensors"
    distill = ["--dataset", "folder", "--data-dir", str(train), "--method", "sre2l"]
    distill += ["--ipc", "1", "--steps", "2", "--teacher-epochs", "2", "--quiet"]
    report = json.loads(_ok(distill_main, [*distill, "-o", str(out), "--json"], capsys))
    assert report["image_shape"] == [channels, 28, 28]
    data = load_image_folder(train)
    config = TeacherTrainConfig(arch="convnet", epochs=2)
    key = config.key(data.fingerprint)
    assert report["teacher"] == f"convnet:{key}"
    cache = tmp_path / "cache" / "teachers"
    assert [p.name for p in cache.glob("*.safetensors")] == [
        f"convnet-{key}.safetensors"
    ]
    distilled = DistilledSet.load(out)
    assert distilled.channels == channels
    assert distilled.class_names == tuple(f"class{k}" for k in range(10))
    assert distilled.source_fingerprint == data.fingerprint

    archive = tmp_path / "labels.lz"
    relabel = [str(out), "--dataset", "folder", "--data-dir", str(train)]
    relabel += ["--teacher-epochs", "2", "--epochs", "2", "--quiet", "--json"]
    report = json.loads(_ok(relabel_main, [*relabel, "-o", str(archive)], capsys))
    assert report["teacher"] == f"convnet:{key}"  # the same cached teacher
    assert len(list(cache.glob("*.safetensors"))) == 1  # nothing else was trained
    with ArchiveReader(archive) as reader:
        assert reader.header.teacher == f"convnet:{key}"
        assert torch.cat(list(reader.decode_all())).shape == (2 * 10, 10)

    argv = [str(out), str(archive), "--test-set", str(test), *STUDENT, "--json"]
    report = json.loads(_ok(train_main, argv, capsys))
    assert len(report["epochs"]) == 2 and 0.0 <= report["accuracy"] <= 1.0


def test_teacher_file_and_channel_options(
    tmp_path: Path,
    folders: Callable[[int], tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An RGB folder read as grayscale (--channels 1) with the user's TorchScript
    teacher; relabel with the same file; nothing is trained or cached."""
    train, test = folders(3)
    torch.manual_seed(0)
    model = build_small_teacher("resnet", num_classes=10, in_channels=1).eval()
    teacher = tmp_path / "teacher.ts"
    with pytest.warns(DeprecationWarning):  # TorchScript still loads in torch 2.13
        torch.jit.save(torch.jit.script(_Wrapped(model)), str(teacher))
    out = tmp_path / "rded.safetensors"
    argv = ["--dataset", "folder", "--data-dir", str(train), "--channels", "1"]
    argv += ["--method", "rded", "--ipc", "1", "--opt", "candidates=3"]
    argv += ["--teacher-file", str(teacher), "--quiet", "-o", str(out)]
    _ok(distill_main, argv, capsys)
    distilled = DistilledSet.load(out)
    assert distilled.channels == 1 and distilled.teacher_id is not None
    assert distilled.teacher_id.startswith("teacher:")
    archive = tmp_path / "rded.lz"
    argv = [str(out), "--teacher-file", str(teacher), "--epochs", "2", "--quiet"]
    _ok(relabel_main, [*argv, "-o", str(archive)], capsys)
    assert not (tmp_path / "cache").exists()
    # The RGB test folder is converted to the set's one channel for the student.
    _ok(train_main, [str(out), str(archive), "--test-set", str(test), *STUDENT], capsys)


class _Wrapped(torch.nn.Module):
    """The teacher without its Python-side input checks, so it scripts."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.stem, self.stages, self.head = model.stem, model.stages, model.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255.0 - 0.286) / 0.353
        out: torch.Tensor = self.head(self.stages(self.stem(x)))
        return out


def test_pickled_teacher_files_are_refused_before_unpickling(
    tmp_path: Path,
    folders: Callable[[int], tuple[Path, Path]],
    evil_pickle: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    train, _ = folders(1)
    evil, marker = evil_pickle
    argv = ["--dataset", "folder", "--data-dir", str(train), "--method", "sre2l"]
    argv += ["--ipc", "1", "--steps", "1", "--teacher-file", str(evil)]
    err = _fails(distill_main, [*argv, "-o", str(tmp_path / "s.safetensors")], capsys)
    assert "not TorchScript" in err and "--trust-pickle" in err
    assert not marker.exists()
    out = tmp_path / "r.safetensors"
    _ok(distill_main, ["--dataset", "folder", "--data-dir", str(train),
                       "--method", "random", "--ipc", "1", "-o", str(out)], capsys)  # fmt: skip
    argv = [str(out), "--teacher-file", str(evil), "-o", str(tmp_path / "r.lz")]
    err = _fails(relabel_main, argv, capsys)
    assert "torch.jit.save(torch.jit.script(model)" in err
    assert not marker.exists() and not (tmp_path / "r.lz").exists()
    # --trust-pickle does unpickle it: the refusal above is what kept it from running.
    assert _fails(relabel_main, [*argv, "--trust-pickle"], capsys)
    assert marker.exists()


def test_folder_errors_are_one_line(
    tmp_path: Path,
    folders: Callable[[int], tuple[Path, Path]],
    image_folder: Callable[..., Path],
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    train, _ = folders(1)
    out = str(tmp_path / "x.safetensors")
    base = ["--dataset", "folder", "--method", "random", "--ipc", "1", "-o", out]
    mixed = image_folder(tmp_path / "mixed", channels=1, per_class=2, num_classes=3)
    (mixed / "class2" / "rgb.png").write_bytes(
        (tmp_path / "data1" / "train" / "class0" / "000.png").read_bytes()
    )
    rgb = image_folder(tmp_path / "rgbclass", channels=3, per_class=1, num_classes=1)
    (rgb / "class0" / "000.png").rename(mixed / "class1" / "zz.png")
    err = _fails(distill_main, [*base, "--data-dir", str(mixed)], capsys)
    assert "mix grayscale and RGB: 'class1/zz.png' is RGB" in err
    _ok(distill_main, [*base, "--data-dir", str(mixed), "--channels", "3"], capsys)
    assert DistilledSet.load(out).channels == 3
    sizes = image_folder(tmp_path / "sizes", channels=3, per_class=2, size=[20, 24])
    err = _fails(distill_main, [*base, "--data-dir", str(sizes)], capsys)
    assert "differ in size" in err and "pass --image-size N" in err
    _ok(distill_main, [*base, "--data-dir", str(sizes), "--image-size", "16"], capsys)
    assert DistilledSet.load(out).image_size == (16, 16)
    err = _fails(distill_main, ["--method", "random", "--ipc", "1", "--channels", "3",
                                "--data-dir", str(data_dir), "-o", out], capsys)  # fmt: skip
    assert "--channels applies to --dataset folder" in err
    # A folder set relabelled by a teacher that would train on other data.
    _ok(distill_main, [*base, "--data-dir", str(train)], capsys)
    argv = [out, "--data-dir", str(data_dir), "-o", str(tmp_path / "x.lz")]
    err = _fails(relabel_main, argv, capsys)
    assert "was distilled from other data" in err and "--dataset" in err
    assert not (tmp_path / "cache").exists()  # refused before training


def test_test_folder_is_resized_and_mapped_by_class_name(
    tmp_path: Path,
    folders: Callable[[int], tuple[Path, Path]],
    image_folder: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A test folder at another size, without some classes: resized to the view
    size, and its folders keep the train folder's class ids."""
    train, _ = folders(3)
    out = tmp_path / "set.safetensors"
    argv = ["--dataset", "folder", "--data-dir", str(train), "--method", "random"]
    _ok(distill_main, [*argv, "--ipc", "2", "-o", str(out)], capsys)
    teacher = tmp_path / "t.ts"
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(_Wrapped(build_small_teacher(
            "resnet", 10, in_channels=3).eval())), str(teacher))  # fmt: skip
    archive = tmp_path / "l.lz"
    relabel = [str(out), "--teacher-file", str(teacher), "--epochs", "2", "--quiet"]
    _ok(relabel_main, [*relabel, "-o", str(archive)], capsys)
    test = image_folder(tmp_path / "test", channels=3, per_class=2, size=40)
    for k in (0, 1, 2):
        for png in (test / f"class{k}").iterdir():
            png.unlink()
        (test / f"class{k}").rmdir()
    loaded = load_test_set(
        str(test), channels=3, image_size=(28, 28),
        class_names=DistilledSet.load(out).class_names,
    )  # fmt: skip
    assert loaded is not None and loaded.images.shape == (14, 3, 28, 28)
    assert sorted(set(loaded.labels.tolist())) == list(range(3, 10))
    _ok(train_main, [str(out), str(archive), "--test-set", str(test), *STUDENT], capsys)


@pytest.mark.parametrize("command", [distill_main, relabel_main])
def test_teacher_and_teacher_file_exclude_each_other(
    command: Command, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--teacher", "convnet", "--teacher-file", "t.ts", "-o", str(tmp_path / "o")]
    argv += ["--method", "random"] if command is distill_main else ["set.safetensors"]
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    assert exit_info.value.code == 2
    assert "not allowed with argument --teacher" in capsys.readouterr().err
