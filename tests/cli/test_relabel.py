"""`labelzip relabel`, in-process: archives from a saved set and teacher file, errors.

Teacher files are TorchScript; a pickled one loads only with --trust-pickle, and
without it a malicious pickle is refused before any of its code runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.archive import ArchiveReader
from labelzip.cli import main as labelzip_main
from labelzip.cli.relabel import main
from labelzip.distill import DistilledSet

CLASSES = ("a", "b", "c", "d")


def _teacher(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, num_classes))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A saved 8-image set, TorchScript teachers (4 and 7 classes), a pickled one."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(4).repeat_interleave(2)
    distilled = DistilledSet(
        images=images, labels=labels, class_names=CLASSES, method="random", ipc=2
    )
    paths = {
        "set": distilled.save(tmp_path / "set.safetensors"),
        "pickled": tmp_path / "teacher.pt",
        "script": tmp_path / "teacher.ts",
        "seven": tmp_path / "seven.ts",
    }
    torch.save(_teacher(), paths["pickled"])
    with pytest.warns(DeprecationWarning):  # TorchScript still works in torch 2.13
        torch.jit.script(_teacher()).save(str(paths["script"]))
        torch.jit.script(_teacher(7)).save(str(paths["seven"]))
    return paths


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_relabel_writes_a_replayable_archive(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.lz"
    argv = [
        str(files["set"]),
        "--teacher-file",
        str(files["pickled"]),
        "--trust-pickle",
    ]
    argv += ["--epochs", "3", "--seed", "5", "--scale", "0.5,1", "--mix", "mixup"]
    code, stdout, err = _run([*argv, "-o", str(out), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["num_views"] == 24 and report["epochs"] == 3
    assert report["augmentation_bytes_replayed"] == 0
    assert report["augmentation_bytes_explicit"] == 24 * 29  # mixup records
    assert report["total_bytes"] == out.stat().st_size
    with ArchiveReader(out) as reader:
        assert list(reader.layout.shape) == [3, 8]
        record = reader.header.user["relabel"]
        assert record["seed"] == 5 and record["view"]["mix"] == "mixup"
        assert record["view"]["scale"] == [0.5, 1.0]
        assert reader.header.teacher.startswith("teacher:")
        assert (
            reader.header.dataset_fingerprint
            == DistilledSet.load(files["set"]).fingerprint
        )
    # Text summary, TorchScript teacher, explicit augmentations, via the dispatcher.
    code = labelzip_main(
        ["relabel", str(files["set"]), "--teacher-file", str(files["script"]),
         "--epochs", "2", "--store-augmentations", "-o", str(tmp_path / "s.lz")]
    )  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    assert "16 views" in stdout and "stored explicitly" in stdout
    with ArchiveReader(tmp_path / "s.lz") as reader:
        assert reader.account().side_bytes == 16 * 37  # cutmix records


def test_relabel_rate_target_with_auto_prune(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.lz"
    argv = [str(files["set"]), "--teacher-file", str(files["script"]), "--json"]
    argv += ["--epochs", "60", "--codec", "dense", "--ratio", "2", "--auto-prune"]
    argv += ["-o", str(out)]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["ratio"] >= 2.0 and report["views_kept_per_image"] < 60
    assert report["teacher_views"] == 8 * report["views_kept_per_image"]


def test_relabel_ctx_transform_with_auto_prune(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The context codec through the CLI: the archive decodes from the file alone."""
    out = tmp_path / "tc.lz"
    argv = [str(files["set"]), "--teacher-file", str(files["script"]), "--json"]
    argv += ["--epochs", "200", "--codec", "ctx-transform", "--ratio", "4"]
    argv += ["--auto-prune", "-o", str(out)]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["ratio"] >= 4.0 and report["views_kept_per_image"] < 200
    with ArchiveReader(out) as reader:
        assert reader.codec_name == "ctx-transform"
        decoded = torch.cat(list(reader.decode_all()))
    assert decoded.shape == (200 * 8, 4) and bool(torch.isfinite(decoded).all())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--teacher-file", "{seven}"], "outputs \\(8, 7\\).*4 classes"),
        (["--teacher-file", "{nowhere}"], "teacher file .* does not exist"),
        (["--teacher-file", "{pickled}"],
         "is a torch.save pickle, not TorchScript.*torch.jit.save.*--trust-pickle"),
        (["--teacher-file", "{script}", "--scale", "0.5"], "--scale expects two"),
        (["--teacher-file", "{script}", "--scale", "0,1"], "invalid view options"),
        (["--teacher-file", "{script}", "--auto-prune"], "auto_prune needs a ratio"),
        (["--teacher-file", "{script}", "--codec", "dense", "--ratio", "500",
          "--auto-prune"], "cannot meet the target even with the label of 1 of 30"),
        (["--teacher-file", "{script}", "--epochs", "0"], "invalid relabel options"),
    ],
)  # fmt: skip
def test_relabel_bad_input_is_one_line(
    tmp_path: Path,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    names = {k: str(v) for k, v in files.items()} | {"nowhere": str(tmp_path / "x")}
    argv = [str(files["set"]), "-o", str(tmp_path / "o.lz")]
    argv += [e.format(**names) for e in extra]
    code, stdout, err = _run(argv, capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("labelzip relabel: error:") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "o.lz").exists()


def test_relabel_missing_set_and_output_folder(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = ["--teacher-file", str(files["script"])]
    code, _, err = _run(
        [str(tmp_path / "no.safetensors"), *teacher, "-o", str(tmp_path / "o.lz")],
        capsys,
    )
    assert code == 2 and "does not exist" in err
    code, _, err = _run(
        [str(files["set"]), *teacher, "-o", str(tmp_path / "no" / "o.lz")], capsys
    )
    assert code == 2 and "output folder" in err
