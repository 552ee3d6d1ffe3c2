"""`labelzip eval-codec`, in-process: fidelity metrics against the teacher."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from labelzip.archive import ArchiveReader, save_archive
from labelzip.cli.eval_codec import evaluate, main
from labelzip.codecs.registry import create_codec
from labelzip.ops.metrics import kl_divergence, top1_agreement, topk_overlap


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def teacher(tmp_path: Path, make_logits: Callable[..., torch.Tensor]) -> torch.Tensor:
    views = make_logits(50 * 2, 40, 9).reshape(50, 2, 40)
    save_file({"logits": views}, str(tmp_path / "t.safetensors"))
    return views


def test_lossless_archive_scores_perfectly(
    tmp_path: Path, teacher: torch.Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    save_archive(tmp_path / "a.lz", create_codec("dense", dtype="fp32"), teacher)
    argv = [str(tmp_path / "t.safetensors"), str(tmp_path / "a.lz"), "--json"]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert set(result["kl"]) == {"1", "4", "20"}
    assert all(abs(v) < 1e-6 for v in result["kl"].values())
    assert result["top1_agreement"] == 1.0 and result["top5_overlap"] == 1.0
    assert result["ratio"] < 0.5


def test_topk_metrics_match_direct_computation(
    tmp_path: Path, teacher: torch.Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    codec = create_codec("topk", k=4, decoder="ms")
    save_archive(tmp_path / "a.lz", codec, teacher, chunk_size=13)
    argv = [str(tmp_path / "t.safetensors"), str(tmp_path / "a.lz"), "--json"]
    code, stdout, _ = _run(
        [*argv, "--temperatures", "2", "4.5", "--batch-size", "9"], capsys
    )
    assert code == 0
    result = json.loads(stdout)
    rows = teacher.reshape(-1, 40)
    decoded = codec.decode(codec.encode(rows))
    for t in (2.0, 4.5):
        want = float(kl_divergence(rows, decoded, t).mean())
        assert result["kl"][f"{t:g}"] == pytest.approx(want, rel=1e-5)
    assert result["top1_agreement"] == pytest.approx(top1_agreement(rows, decoded))
    assert result["top5_overlap"] == pytest.approx(topk_overlap(rows, decoded, 5))
    assert result["kl"]["2"] > 0


@pytest.mark.parametrize("batch_size", [7, 4096])
def test_streamed_teacher_gives_the_full_load_metrics(
    tmp_path: Path,
    make_logits: Callable[..., torch.Tensor],
    capsys: pytest.CaptureFixture[str],
    batch_size: int,
) -> None:
    """The teacher read batch by batch from a shard directory scores exactly as the
    whole tensor in memory (what eval-codec loaded before it streamed)."""
    views = make_logits(60 * 3, 40, 5).reshape(60, 3, 40).half()
    shards = tmp_path / "shards"
    shards.mkdir()
    for index, lo in enumerate(range(0, 60, 25)):
        save_file(
            {"logits": views[lo : lo + 25]}, str(shards / f"{index:03d}.safetensors")
        )
    archive = tmp_path / "a.lz"
    save_archive(archive, create_codec("topk", k=3), views, chunk_size=11)
    with ArchiveReader(archive) as reader:
        full = evaluate(reader, views, batch_size=batch_size)
    argv = [str(shards), str(archive), "--json", "--batch-size", str(batch_size)]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    assert json.loads(stdout) == json.loads(json.dumps(full))


def test_text_output(
    tmp_path: Path, teacher: torch.Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    save_archive(tmp_path / "a.lz", create_codec("topk", k=2), teacher)
    code, stdout, _ = _run(
        [str(tmp_path / "t.safetensors"), str(tmp_path / "a.lz")], capsys
    )
    assert code == 0
    assert "at T=20" in stdout and "top-1 agreement" in stdout and "ratio" in stdout


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("shape", "do not match the archive's (50, 2, 40)"),
        ("temperature", "temperatures must be > 0"),
        ("nan", "NaN or Inf"),
        ("archive", "not a labelzip archive"),
    ],
)
def test_bad_input(
    tmp_path: Path,
    teacher: torch.Tensor,
    capsys: pytest.CaptureFixture[str],
    case: str,
    match: str,
) -> None:
    archive = tmp_path / "a.lz"
    save_archive(archive, create_codec("dense"), teacher)
    logits = tmp_path / "t.safetensors"
    extra: list[str] = []
    if case == "shape":
        save_file({"logits": teacher[:10]}, str(logits))
    elif case == "temperature":
        extra = ["--temperatures", "1", "0"]
    elif case == "nan":
        bad = teacher.clone()
        bad[0, 0, 0] = float("nan")
        save_file({"logits": bad}, str(logits))
    else:
        archive.write_bytes(b"{}" * 20)
    code, stdout, err = _run([str(logits), str(archive), *extra], capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("labelzip eval-codec: error: ") and err.count("\n") == 1
    assert match in err, err


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "labelzip eval-codec" in capsys.readouterr().out
