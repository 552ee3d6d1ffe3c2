"""`labelzip compress`, in-process: archives, options, rate targets and bad input."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from labelzip.archive import ArchiveReader, load_archive
from labelzip.cli import main as labelzip_main
from labelzip.cli.compress import main
from labelzip.codecs.registry import create_codec


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def logits_file(tmp_path: Path, make_logits: Callable[..., torch.Tensor]) -> Path:
    """(128, 4, 50) views in a .safetensors file (51 kB as dense fp16)."""
    path = tmp_path / "views.safetensors"
    save_file({"logits": make_logits(512, 50, 2).reshape(128, 4, 50)}, str(path))
    return path


def _teacher(path: Path) -> torch.Tensor:
    from labelzip.io import load_logits

    return load_logits(path)


def test_dense_archive_and_summary(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    code, stdout, err = _run(
        [str(logits_file), "--codec", "dense", "--opt", "dtype=fp32", "-o", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "ratio 0.50x vs dense fp16" in stdout and "wrote" in stdout
    assert torch.equal(load_archive(out), _teacher(logits_file))


def test_json_summary_counts_the_real_file(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    code, stdout, _ = _run(
        [str(logits_file), "--codec", "topk", "--k", "4", "--json", "-o", str(out)],
        capsys,
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["total_bytes"] == os.path.getsize(out)
    assert summary["num_labels"] == 512 and summary["codec"] == "topk"


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_topk_from_npy_and_pt_matches_codec(
    tmp_path: Path,
    make_logits: Callable[..., torch.Tensor],
    capsys: pytest.CaptureFixture[str],
    suffix: str,
) -> None:
    logits = make_logits(100, 30, 4)
    src = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(src, logits.numpy())
    else:
        torch.save({"teacher": logits}, src)
    out = tmp_path / "a.lz"
    argv = [str(src), "--codec", "topk", "--k", "5", "--decoder", "mr", "-o", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    codec = create_codec("topk", k=5, decoder="mr").fit([logits])
    assert torch.equal(load_archive(out), codec.decode(codec.encode(logits)))
    with ArchiveReader(out) as reader:
        assert reader.layout.dims == ("sample",)


def test_opt_values_are_typed_and_metadata_recorded(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"c{i}" for i in range(50)))
    out = tmp_path / "a.lz"
    argv = [
        str(logits_file),
        "--codec",
        "topk",
        "--opt",
        "k=3",
        "--opt",
        "value_dtype=fp32",
    ]
    argv += ["--teacher", "resnet18", "--class-names", str(names), "--meta", "ipc=10"]
    argv += ["--dataset-fingerprint", "sha256:00", "-o", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    with ArchiveReader(out) as reader:
        assert reader.header.codec.config["k"] == 3
        assert reader.header.codec.config["value_dtype"] == "fp32"
        assert reader.metadata.teacher == "resnet18"
        assert reader.metadata.class_names == tuple(f"c{i}" for i in range(50))
        assert reader.metadata.user == {"ipc": 10}
        assert reader.metadata.dataset_fingerprint == "sha256:00"


def test_prune_and_dims(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    argv = [str(logits_file), "--codec", "dense", "--prune-keep", "0.5", "--seed", "3"]
    argv += ["--dims", "sample,epoch", "-o", str(out)]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    assert "pruned, keep 0.5" in stdout
    with ArchiveReader(out) as reader:
        assert reader.layout.dims == ("sample", "epoch")
        assert reader.header.num_stored == 256 and reader.num_labels == 512
        assert reader.header.prune is not None and reader.header.prune["seed"] == 3
        assert reader.account().payload_bytes == 256 * 50 * 2


@pytest.mark.parametrize(
    ("flags", "budget"),
    [
        (["--codec", "topk", "--ratio", "6"], 512 * 50 * 2 / 6),
        (["--codec", "topk", "--bits-per-label", "120"], 120 * 512 / 8),
        (
            ["--codec", "dense", "--prune-keep", "0.25", "--ratio", "3.5"],
            512 * 50 * 2 / 3.5,
        ),
        (
            ["--codec", "topk", "--prune-keep", "0.5", "--ratio", "10"],
            512 * 50 * 2 / 10,
        ),
    ],
)
def test_rate_target_is_met_by_the_file_on_disk(
    tmp_path: Path,
    logits_file: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    budget: float,
) -> None:
    out = tmp_path / "a.lz"
    code, _, err = _run([str(logits_file), *flags, "-o", str(out)], capsys)
    assert code == 0, err
    assert os.path.getsize(out) <= budget


def test_same_command_gives_identical_bytes(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.lz", "b.lz"):
        argv = [
            str(logits_file),
            "--codec",
            "topk",
            "--ratio",
            "8",
            "--prune-keep",
            "0.5",
        ]
        assert _run([*argv, "-o", str(tmp_path / name)], capsys)[0] == 0
    assert (tmp_path / "a.lz").read_bytes() == (tmp_path / "b.lz").read_bytes()


def test_dispatcher_runs_compress(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    assert (
        labelzip_main(
            ["compress", str(logits_file), "--codec", "dense", "-o", str(out)]
        )
        == 0
    )
    assert out.is_file()


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def _bad_file(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nope.safetensors"
    path = tmp_path / f"{kind}.safetensors"
    tensors = {
        "garbage": None,
        "rank1": torch.zeros(10),
        "rank4": torch.zeros(2, 2, 2, 3),
        "int": torch.zeros(4, 3, dtype=torch.int64),
        "nan": torch.tensor([[0.0, float("nan")], [1.0, 2.0]]),
        "inf": torch.tensor([[0.0, float("inf")], [1.0, 2.0]]),
    }[kind]
    if tensors is None:
        path.write_bytes(b"this is not a tensor file at all")
    else:
        save_file({"logits": tensors}, str(path))
    return path


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("missing", "does not exist"),
        ("garbage", "not a safetensors file"),
        ("rank1", r"shape \(N, C\) or \(N, E, C\)"),
        ("rank4", r"shape \(N, C\) or \(N, E, C\)"),
        ("int", "floating point"),
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
    ],
)
def test_bad_logits_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, match: str
) -> None:
    src = _bad_file(tmp_path, kind)
    out = tmp_path / "out" / "a.lz"
    out.parent.mkdir()
    code, stdout, err = _run([str(src), "--codec", "dense", "-o", str(out)], capsys)
    assert code == 2
    assert err.startswith("labelzip compress: error: ") and err.count("\n") == 1
    assert re.search(match, err), err
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--codec", "dense", "--ratio", "5"], "best reachable is 0.9"),
        (["--codec", "topk", "--ratio", "500"], "best reachable is"),
        (
            ["--codec", "dense", "--prune-keep", "0.5", "--dims", "a,b"],
            "no 'view' or 'epoch'",
        ),
        (["--codec", "topk", "--opt", "bogus=1"], "invalid topk codec options: bogus"),
        (["--codec", "topk", "--opt", "novalue"], "expects KEY=VALUE"),
        (["--codec", "dense", "--k", "3"], "invalid dense codec options: k"),
        (["--codec", "topk", "--k", "99"], "exceeds the 50 classes"),
        (["--codec", "dense", "--prune-keep", "1.5"], "keep_fraction must be in"),
        (["--codec", "dense", "--dims", "a"], "--dims names 1 dims"),
        (["--codec", "dense", "--ratio", "-1"], "ratio must be > 0"),
        (["--codec", "dense", "--chunk-size", "0"], "chunk-size must be >= 1"),
    ],
)
def test_bad_options(
    tmp_path: Path,
    logits_file: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    match: str,
) -> None:
    out = tmp_path / "out" / "a.lz"
    out.parent.mkdir()
    code, _, err = _run([str(logits_file), *flags, "-o", str(out)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and match in err, err
    assert list(out.parent.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        str(logits_file),
        "--codec",
        "dense",
        "--device",
        "cuda",
        "-o",
        str(tmp_path / "a"),
    ]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "no CUDA GPU is available" in err
    assert not (tmp_path / "a").exists()


def test_missing_output_folder(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no" / "such" / "a.lz"
    code, _, err = _run([str(logits_file), "--codec", "dense", "-o", str(out)], capsys)
    assert code == 2
    assert "output folder" in err and "does not exist" in err and err.count("\n") == 1
    assert not out.parent.exists()


def test_directory_of_shards_gives_the_same_archive_as_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logits = torch.randn(700, 3, 20, generator=torch.Generator().manual_seed(3))
    save_file({"logits": logits}, str(tmp_path / "one.safetensors"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (lo, hi) in enumerate([(0, 123), (123, 500), (500, 700)]):
        save_file({"logits": logits[lo:hi]}, str(shards / f"part-{i}.safetensors"))
    outs = []
    for name, src in (("a", tmp_path / "one.safetensors"), ("b", shards)):
        out = tmp_path / f"{name}.lz"
        argv = [str(src), "--codec", "topk", "--ratio", "8", "--prune-keep", "0.5"]
        code, _, err = _run([*argv, "--quiet", "-o", str(out)], capsys)
        assert code == 0, err
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_auto_prune_keeps_the_most_views_that_meet_the_target(
    tmp_path: Path, logits_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    flags = ["--codec", "topk", "--decoder", "ms", "--k", "4", "--ratio", "8"]
    argv = [str(logits_file), *flags, "--dims", "sample,view"]
    code, stdout, err = _run([*argv, "--auto-prune", "-o", str(out)], capsys)
    assert code == 0, err
    assert os.path.getsize(out) <= 512 * 50 * 2 / 8
    with ArchiveReader(out) as reader:
        assert reader.header.prune is not None
        kept = reader.header.num_stored // 128
    assert 1 <= kept < 4 and f"pruned, keep {kept / 4:g}" in stdout
    # one more view per sample does not fit: --prune-keep says so itself
    more = [*argv, "--prune-keep", str((kept + 1) / 4), "-o", str(tmp_path / "b.lz")]
    code, _, err = _run(more, capsys)
    assert code != 0 and "no topk configuration" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--codec", "topk", "--auto-prune"], "give --ratio or --bits-per-label"),
        (["--ratio", "20", "--auto-prune"], "drop --auto-prune"),
        (
            ["--codec", "topk", "--ratio", "20", "--auto-prune", "--dims", "a,b"],
            "name a logits file's dims with --dims",
        ),
        (
            ["--codec", "topk", "--ratio", "20", "--auto-prune", "--prune-keep", "0.5"],
            "not allowed with argument --auto-prune",
        ),
    ],
)
def test_auto_prune_misuse_is_one_line(
    tmp_path: Path,
    logits_file: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    out = tmp_path / "a.lz"
    try:
        code, _, err = _run([str(logits_file), *flags, "-o", str(out)], capsys)
    except SystemExit as exc:  # argparse's own usage error
        code, err = int(exc.code or 0), capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()[-1]) > 0 and not out.exists()
