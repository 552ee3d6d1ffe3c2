"""`labelzip bench imagenet` and benchmarks/imagenet_track.py: flags, config, errors, a run."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from labelzip.bench.imagenet import DEFAULT_CODECS, ImagenetTrackConfig
from labelzip.cli import main
from labelzip.cli.bench import build_parser, imagenet_config
from labelzip.errors import ConfigError

torch.set_num_threads(1)

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "imagenet_track.py"


def _script() -> SimpleNamespace:
    """The script's functions (benchmarks/ is not a package)."""
    return SimpleNamespace(**runpy.run_path(str(SCRIPT), run_name="imagenet_track"))


def _config(*extra: str) -> ImagenetTrackConfig:
    return imagenet_config(build_parser().parse_args(["imagenet", *extra]))


def test_defaults_are_the_track_defaults() -> None:
    config = _config()
    assert config.model_dump() == ImagenetTrackConfig(threads=None).model_dump()
    args = build_parser().parse_args(["imagenet"])
    assert args.out_dir == "benchmarks/results" and not args.json and not args.quiet


def test_flags_map_onto_the_config() -> None:
    config = _config(
        *("--classes", "3", "7", "--ipc", "2", "--recover-steps", "5"),
        *("--recover-bn-weight", "0.01", "--recover-crop-scale", "0.08", "1"),
        *("--image-size", "32", "--epochs", "20", "--ratios", "10", "40"),
        *("--codecs", "topk-ms", "vqae", "--vqae-steps", "300"),
        *("--storage-ipc", "50", "--seed", "4", "--threads", "2", "--device", "meta"),
    )
    assert config.classes == (3, 7) and config.ipc == 2 and config.recover_steps == 5
    assert config.recover_bn_weight == 0.01 and config.recover_crop_scale == (0.08, 1)
    assert config.image_size == 32 and config.epochs == 20
    assert config.ratios == (10.0, 40.0) and config.storage_ipc == (50,)
    assert config.seed == 4 and config.threads == 2 and config.device == "meta"
    assert [c.label for c in config.codecs] == ["topk-ms", "vqae"]
    assert config.codecs[0] == DEFAULT_CODECS[1]  # untouched by --vqae-steps
    assert config.codecs[1].options == {"steps": 300}


def test_script_reuses_the_cli_flags() -> None:
    script = _script()
    args = script.build_parser().parse_args(["--codecs", "rskd", "--out", "x"])
    assert args.threads == 1 and args.out_dir == "x" and args.stem == "imagenet_track"
    config = imagenet_config(args)
    assert config.threads == 1 and [c.label for c in config.codecs] == ["rskd"]
    with pytest.raises(ConfigError, match=r"unknown codec label\(s\) \['zip'\]"):
        imagenet_config(script.build_parser().parse_args(["--codecs", "zip"]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--codecs", "zip"], r"unknown codec label\(s\) \['zip'\] for --codecs; "
         r"choose from vqae, topk-ms, topk-mrs, rskd, lpld"),
        (["--classes", "1", "1000"], r"invalid benchmark options: classes: class "
         r"ids must be in 0..999, got \[1000\]"),
        (["--ratios", "0"], r"ratios.0: Input should be greater than 0"),
        (["--recover-crop-scale", "0.9", "0.5"], r"recover_crop_scale must satisfy"),
        (["--ipc", "0"], r"ipc: Input should be greater than or equal to 1"),
        (["--threads", "0"], r"threads: Input should be greater than or equal to 1"),
        (["--device", "cuda:7"], r"device 'cuda:7' requested but"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["bench", "imagenet", "--out-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("labelzip bench: error:") and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not list(tmp_path.iterdir())  # rejected before any work


def test_help_lists_the_suite_and_its_cost(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert re.search(r"imagenet\s+1000-class track", text), text  # the suite list
    assert re.search(r"imagenet\s+\(1000-class label fidelity\)", text)
    with pytest.raises(SystemExit):
        main(["bench", "imagenet", "--help"])
    text = capsys.readouterr().out
    assert "--recover-crop-scale MIN MAX" in text and "--vqae-steps" in text
    assert "~11 min" in text and "imagenet_track.{json,md,png}" in text


def test_end_to_end_with_efficientnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the real teacher at 32 px, 2 classes x 1 image x 20 views: a few seconds
    pytest.importorskip("efficientnet_lite_pytorch")
    out = tmp_path / "out"
    argv = ["bench", "imagenet", "--image-size", "32", "--ipc", "1"]
    argv += ["--classes", "1", "207", "--recover-steps", "1", "--epochs", "20"]
    argv += ["--ratios", "4", "1e6", "--codecs", "topk-ms", "--storage-ipc", "10"]
    argv += ["--threads", "1", "--out-dir", str(out)]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert sorted(report["files"]) == sorted(
        str(out / f"imagenet_track.{ext}") for ext in ("json", "md", "png")
    )
    assert report["meta"]["command"] == " ".join(["labelzip", *argv, "--json"])
    assert "load average" in report["meta"]["machine_note"]
    assert report["relabel"]["num_labels"] == 40
    assert [(r["label"], r["target_ratio"]) for r in report["rows"]] == [
        ("dense-fp16", None), ("topk-ms", 4.0),
    ]  # fmt: skip
    assert report["rows"][1]["ratio"] >= 4.0
    assert [(u["label"], u["ratio"]) for u in report["unreachable"]] == [
        ("topk-ms", 1e6)
    ]
    assert "  relabel: 40/40" in captured.err  # progress on stderr
    saved = json.loads((out / "imagenet_track.json").read_text())
    assert saved["rows"] == report["rows"]
    # the script re-renders the saved report to the same Markdown
    again = tmp_path / "again"
    script = _script()
    assert script.main(["--report-from", str(out / "imagenet_track.json"),
                        "--out", str(again)]) == 0  # fmt: skip
    assert (again / "imagenet_track.md").read_text() == (
        out / "imagenet_track.md"
    ).read_text()
    assert "wrote" in capsys.readouterr().out
