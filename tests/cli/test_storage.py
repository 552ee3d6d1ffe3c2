"""`labelzip storage` in-process: table, JSON, help, one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest

from labelzip.cli import main as dispatch
from labelzip.cli.storage import build_parser, main


def test_published_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--dataset",
        "imagenet-1k",
        "--framework",
        "sre2l",
        "--ipc",
        "10",
        "20",
        "50",
        "100",
        "200",
        "--units",
        "GiB",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for value in ("5.67", "11.33", "28.33", "56.66", "113.33"):
        assert value in out
    assert "labels all-in" in out and "[GiB]" in out


def test_dispatcher_routes_to_storage(capsys: pytest.CaptureFixture[str]) -> None:
    assert dispatch(["storage", "--dataset", "cifar-10", "--ipc", "10"]) == 0
    assert "cifar-10" in capsys.readouterr().out


def test_json_keys_and_values(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--dataset",
        "imagenet-1k",
        "--ipc",
        "10",
        "--framework",
        "sre2l",
        "lpld",
        "labelzip",
        "--codec-bits-per-label",
        "64",
        "--codec-model-bytes",
        "1000",
        "--json",
        "--units",
        "GiB",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"mode", "description", "units", "rows"}
    assert doc["mode"] == "vision" and doc["units"] == "GiB"
    assert [r["framework"] for r in doc["rows"]] == ["sre2l", "lpld", "labelzip"]
    sre2l, _, lz = doc["rows"]
    assert round(sre2l["in_units"]["label_total_bytes"], 2) == 5.67
    assert sre2l["label_total_bytes"] == 6_084_336_000
    assert lz["label_bytes"] == 3_000_000 * 8
    assert lz["ratio_vs_first"] == sre2l["label_total_bytes"] / lz["label_total_bytes"]
    for key in (
        "image_bytes",
        "side_bytes",
        "model_bytes",
        "header_bytes",
        "ratio_vs_dense",
        "stored_labels",
        "notes",
    ):
        assert key in lz


def test_lm_mode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--tokens",
        "1114112",
        "--vocab",
        "50257",
        "--framework",
        "dense",
        "topk",
        "--json",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "lm"
    dense, topk = doc["rows"]
    assert dense["label_bytes"] == 1_114_112 * 50257 * 2
    assert topk["label_bytes"] == 1_114_112 * 50 * 32 // 8  # 16-bit ids, k=50


def test_custom_dataset_and_rded(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--num-classes",
        "10",
        "--resolution",
        "28",
        "--channels",
        "1",
        "--ipc",
        "10",
        "--framework",
        "rded",
        "--teacher-bytes",
        "1200000",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "rded-online" in out and "rded-materialised" in out
    assert "1.14 MiB" in out  # the teacher, as model bytes


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--codec-bits-per-label" in out
    assert build_parser().prog == "labelzip storage"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--dataset", "imagenet", "--ipc", "10"],
            "unknown dataset 'imagenet'; choose one of imagenet-1k",
        ),
        (
            ["--dataset", "cifar-10", "--ipc", "-1"],
            "IPC must be a positive integer, got -1",
        ),
        (
            ["--dataset", "cifar-10", "--ipc", "1", "--framework", "foo"],
            "unknown image framework 'foo'; choose one of sre2l, cda, rded",
        ),
        (
            ["--dataset", "cifar-10", "--ipc", "1", "--framework", "labelzip"],
            "framework labelzip needs the codec's numbers",
        ),
        (["--dataset", "cifar-10"], "give --ipc"),
        (["--ipc", "1"], "say which data"),
        (["--tokens", "10"], "LM mode needs --vocab"),
        (["--dataset", "cifar-10", "--channels", "1", "--ipc", "1"], "not both"),
        (["--tokens", "10", "--vocab", "5", "--ipc", "1"], "cannot be combined"),
        (
            ["--dataset", "cifar-10", "--ipc", "1", "--units", "gib"],
            "unknown units 'gib'",
        ),
        (
            ["--dataset", "cifar-10", "--ipc", "ten"],
            "argument --ipc: invalid int value",
        ),
        (
            ["--dataset", "cifar-10", "--ipc", "1", "--image-format", "webp"],
            "invalid storage option image_format='webp'",
        ),
    ],
)
def test_errors_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("labelzip storage: error: ")
    assert message in lines[0]
