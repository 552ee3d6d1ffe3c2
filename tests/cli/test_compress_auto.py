"""`labelzip compress --codec auto` (the default with a target), in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from labelzip.archive import ArchiveReader, load_archive
from labelzip.cli.compress import main
from labelzip.cli.info import main as info_main
from labelzip.selection.auto import AUTO_KEY, LM_CANDIDATES
from labelzip.selection.record import format_table
from labelzip.selection.score import FREE_ERROR

FAST = ["--auto-steps", "10", "--auto-confirm-steps", "20", "--auto-sample", "512"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def views_file(tmp_path: Path, make_logits: Callable[..., torch.Tensor]) -> Path:
    """(256, 4, 50) views of distinct labels."""
    path = tmp_path / "views.safetensors"
    save_file({"logits": make_logits(1024, 50, 2).reshape(256, 4, 50)}, str(path))
    return path


def test_a_target_without_codec_chooses_records_and_decodes(
    tmp_path: Path, views_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    argv = [str(views_file), "--ratio", "10", *FAST, "--json", "-o", str(out)]
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    rows = json.loads(stdout)["auto"]["candidates"]  # the report: every row
    assert {r["codec"] for r in rows} == {"topk", "dense", "rskd", "vqae"}
    assert {1.0, 0.5, 0.25} <= {r["keep_fraction"] for r in rows}
    assert all(r["skipped"] or r["kl"] is not None for r in rows)
    with ArchiveReader(out) as reader:
        info = reader.info()
    record = info["user"][AUTO_KEY]
    chosen = record["chosen"]
    assert info["codec"] == chosen["codec"]
    assert (info["prune"] is None) == (chosen["keep_fraction"] == 1.0)
    # a small archive (10 KB) stores the choice alone: even the winner's row
    # would take more than 2% of its bytes
    assert record == {"chosen": chosen, "omitted": len(rows)}
    assert load_archive(out).shape == (256, 4, 50)
    assert info["ratio"] >= 9.5  # the all-in target holds, record included

    assert info_main([str(out)]) == 0
    text = capsys.readouterr().out
    assert f"auto chose {chosen['codec']}" in text and "not stored" in text
    out.unlink()
    code, stdout, err = _run(argv[:-3] + ["-o", str(out)], capsys)
    assert code == 0 and stdout.startswith("auto chose ")
    assert sum(" keep " in line for line in stdout.splitlines()) == len(rows) + 1


def test_same_seed_same_bytes_and_json_report(
    tmp_path: Path, views_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [tmp_path / "a.lz", tmp_path / "b.lz"]
    for path in paths:
        argv = [str(views_file), "--codec", "auto", "--ratio", "10", *FAST]
        code, stdout, err = _run([*argv, "--json", "-o", str(path)], capsys)
        assert code == 0, err
    assert paths[0].read_bytes() == paths[1].read_bytes()
    report = json.loads(stdout)
    assert report["auto"]["candidates"][0]["fit_seconds"] >= 0
    assert report["seconds"]["auto"] > 0


def test_reuse_weight_sets_what_a_pruned_view_is_charged(
    tmp_path: Path, views_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Default reuse_views(C) / m (10 / m at these 50 classes: all of it at the
    m <= 4 views), a fixed share with --auto-reuse-weight; the record and the
    table say which."""
    reports = {}
    for weight in (None, "0.5", "1"):
        out = tmp_path / f"{weight}.lz"
        extra = [] if weight is None else ["--auto-reuse-weight", weight]
        argv = [str(views_file), "--ratio", "10", *FAST, *extra, "--json"]
        code, stdout, err = _run([*argv, "-o", str(out)], capsys)
        assert code == 0, err
        reports[weight] = json.loads(stdout)["auto"]
    assert reports[None]["reuse_weight"] is None
    assert reports[None]["reuse_views"] == 10.0
    assert reports["0.5"]["reuse_weight"] == 0.5

    def measured(report: dict[str, Any], pruned: bool) -> list[dict[str, Any]]:
        return [
            r
            for r in report["candidates"]
            if r["kl"] is not None and (r["keep_fraction"] < 1) == pruned
        ]

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (
            r["codec"],
            json.dumps(r["options"]),
            r["keep_fraction"],
            r.get("steps"),
        )

    # 10 / m >= 1 here, and weight 1: the full KL, less the free codec error
    for weight in (None, "1"):
        for r in measured(reports[weight], False):  # unpruned: the error is the KL
            assert r["score"] == pytest.approx(
                r["kl"] - min(FREE_ERROR, r["kl"]), abs=2e-6
            )
        pruned = measured(reports[weight], True)
        assert pruned
        assert all(r["kl"] - FREE_ERROR - 2e-6 <= r["score"] <= r["kl"] for r in pruned)
    full = {key(r): r["score"] for r in measured(reports["1"], True)}
    half = [r for r in measured(reports["0.5"], True) if key(r) in full]
    assert half and all(r["score"] <= full[key(r)] + 2e-6 for r in half)
    assert any(r["score"] < full[key(r)] - 1e-5 for r in half)
    assert reports[None]["free_error"] == FREE_ERROR
    assert "reuse mismatch x 10/views stored" in format_table(reports[None])[0]
    assert "reuse mismatch x 0.5" in format_table(reports["0.5"])[0]
    assert (
        "held-out KL, codec error up to 0.0023 free," in format_table(reports["1"])[0]
    )


def test_user_pruning_fixes_the_view_budget(
    tmp_path: Path, views_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.lz"
    argv = [str(views_file), "--ratio", "10", "--prune-keep", "0.5", *FAST, "--json"]
    code, stdout, err = _run([*argv, "-o", str(out)], capsys)
    assert code == 0, err
    with ArchiveReader(out) as reader:
        info = reader.info()
    assert info["prune"]["keep_fraction"] == 0.5
    assert info["user"][AUTO_KEY]["chosen"]["keep_fraction"] == 0.5
    # the user's budget is the only one measured: no smaller or neighbouring ones
    rows = json.loads(stdout)["auto"]["candidates"]
    assert len(rows) > 1 and all(r["keep_fraction"] == 0.5 for r in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "name a codec with --codec"),
        (["--codec", "auto"], "--codec auto chooses for a target"),
        (["--ratio", "10", "--k", "3"], "need a named --codec"),
        (["--ratio", "100000"], "none of"),
        (["--ratio", "10", "--auto-temperature", "0"], "temperature"),
        (["--ratio", "10", "--auto-reuse-weight", "1.5"], "reuse_weight"),
    ],
)
def test_bad_auto_requests_are_one_line_errors(
    tmp_path: Path,
    views_file: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    out = tmp_path / "a.lz"
    code, _, err = _run([str(views_file), *argv, *FAST, "-o", str(out)], capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_lm_vocabulary_picks_among_the_lm_codecs(
    tmp_path: Path,
    make_logits: Callable[..., torch.Tensor],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "lm.safetensors"
    save_file({"logits": make_logits(200, 9000, 5)}, str(path))
    out = tmp_path / "lm.lz"
    argv = [str(path), "--ratio", "100", "--auto-steps", "5", "--auto-sample", "160"]
    argv += ["--auto-confirm-steps", "10"]
    code, stdout, err = _run([*argv, "--json", "-o", str(out)], capsys)
    assert code == 0, err
    with ArchiveReader(out) as reader:
        info = reader.info()
    lm_codecs = {c for c, _ in LM_CANDIDATES}
    assert {r["codec"] for r in json.loads(stdout)["auto"]["candidates"]} == lm_codecs
    assert info["codec"] in lm_codecs
    assert info["user"][AUTO_KEY]["chosen"]["codec"] in lm_codecs
    assert load_archive(out).shape == (200, 9000)
