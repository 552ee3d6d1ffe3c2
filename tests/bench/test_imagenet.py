"""The 1000-class track: recover -> relabel -> compress -> fidelity -> report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.bench.imagenet import (
    CodecChoice,
    ImagenetTrackConfig,
    ImagenetTrackResult,
    run_imagenet_track,
    write_imagenet_report,
)


class _TinyImageNetTeacher(nn.Module):
    """A stand-in 1000-class teacher with BatchNorm (recovery matches BN stats)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.head = nn.Linear(8, 1000)
        with torch.no_grad():  # peaked, varied logits like a real teacher's
            self.head.weight.mul_(8.0)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features((images.float() - 127.0) / 128.0)
        out: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return out


TINY = dict(
    classes=(1, 207),
    ipc=1,
    recover_steps=2,
    image_size=16,
    epochs=40,
    ratios=(4.0, 20.0),
    codecs=(
        CodecChoice(label="topk-ms", codec="topk", options={"decoder": "ms"}),
        CodecChoice(label="lpld", codec="dense", options={"dtype": "fp16"}, prune=True),
        CodecChoice(
            label="ctx-transform",
            codec="ctx-transform",
            options={"max_axes": 4, "prior_steps": 20},
            prune=True,
        ),
    ),
    storage_ipc=(10,),
)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> ImagenetTrackResult:
    stages: list[str] = []
    result = run_imagenet_track(
        ImagenetTrackConfig(**TINY),  # type: ignore[arg-type]
        teacher=_TinyImageNetTeacher(),
        progress=lambda stage, done, total: stages.append(stage),
        workdir=tmp_path_factory.mktemp("work"),
    )
    assert stages[0] == "recover" and stages[-1] == "compress" and "relabel" in stages
    return result


def test_rows_cover_every_codec_and_ratio_or_say_why(
    tiny_result: ImagenetTrackResult,
) -> None:
    measured = {(r.label, r.target_ratio) for r in tiny_result.rows}
    missing = {(u["label"], u["ratio"]) for u in tiny_result.unreachable}
    expected = {("dense-fp16", None)} | {
        (c, r) for c in ("topk-ms", "lpld", "ctx-transform") for r in (4.0, 20.0)
    }
    assert measured | missing == expected and not measured & missing
    # 80 labels x 1000 classes: the 4x targets fit beside the ~10 KB header
    assert ("topk-ms", 4.0) in measured and ("lpld", 4.0) in measured
    # the context codec: its context rebuilt from the relabel recipe, as a reader does
    assert ("ctx-transform", 4.0) in measured
    assert tiny_result.relabel["num_labels"] == 80
    assert tiny_result.relabel["num_classes"] == 1000


def test_fidelity_is_finite_and_ordered(tiny_result: ImagenetTrackResult) -> None:
    dense = tiny_result.row("dense-fp16", None)
    assert dense is not None
    assert 0.8 < dense.ratio < 1.0  # a ~15 KB header (1000 class names) on 160 KB
    assert all(v < 1e-5 for v in dense.kl.values())
    assert dense.top1 == 1.0 and dense.top5 >= 0.99  # fp16 rounding can tie ranks
    for row in tiny_result.rows:
        assert all(math.isfinite(v) and v >= -1e-6 for v in row.kl.values())
        assert 0.0 <= row.top1 <= 1.0 and 0.0 <= row.top5 <= 1.0
        if row.target_ratio is not None:  # rate control met the all-in target
            assert row.ratio >= row.target_ratio
            assert row.kl["T1"] > dense.kl["T1"]
    lpld = tiny_result.row("lpld", 4.0)
    assert lpld is not None and lpld.kept_per_image < 40
    assert lpld.stored_labels == 2 * lpld.kept_per_image


def test_recovery_sanity_and_storage_table(tiny_result: ImagenetTrackResult) -> None:
    rec = tiny_result.recovery
    assert rec["num_images"] == 2 and rec["image_shape"] == [3, 16, 16]
    assert 0.0 <= rec["teacher_accuracy"] <= 1.0
    formula = {s["framework"] for s in tiny_result.storage if s["source"] == "formula"}
    assert {"sre2l", "lpld", "fkd"} <= formula
    sre2l = next(s for s in tiny_result.storage if s["framework"] == "sre2l")
    assert sre2l["label_total_bytes"] / 2**30 == pytest.approx(5.67, abs=0.01)
    topk = next(s for s in tiny_result.storage if s["framework"] == "labelzip:topk-ms")
    # 1.28 M views x measured payload bits, far below SRe2L's dense labels
    assert 0 < topk["label_total_bytes"] < sre2l["label_total_bytes"] / 3


def test_report_files(tiny_result: ImagenetTrackResult, tmp_path: Path) -> None:
    paths = write_imagenet_report(tiny_result, tmp_path, meta={"command": "x --y"})
    saved = json.loads(paths["json"].read_text())
    assert saved["meta"]["command"] == "x --y"
    assert len(saved["rows"]) == len(tiny_result.rows)
    text = paths["md"].read_text()
    assert "Command: `x --y`" in text and "| dense-fp16 | - |" in text
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    # a saved report re-renders to the same text
    again = ImagenetTrackResult.from_dict(saved)
    assert again.rows == tiny_result.rows
    copy = write_imagenet_report(again, tmp_path / "again", meta=saved["meta"])
    assert copy["md"].read_text() == text
    assert "| 10 | labelzip:topk-ms @4x |" in text


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="class ids must be in 0..999"):
        ImagenetTrackConfig(classes=(1, 1000))
    with pytest.raises(ValueError, match="distinct"):
        ImagenetTrackConfig(classes=(3, 3))
    with pytest.raises(ValueError, match="recover_crop_scale must satisfy"):
        ImagenetTrackConfig(recover_crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="ratios.1\n  Input should be greater than 0"):
        ImagenetTrackConfig(ratios=(40.0, 0.0))
    with pytest.raises(ValueError, match="must be distinct and not 'dense-fp16'"):
        ImagenetTrackConfig(codecs=(CodecChoice(label="dense-fp16", codec="dense"),))
    with pytest.raises(ValueError, match="unknown codec .zip."):
        CodecChoice(label="z", codec="zip")


def test_real_efficientnet_track(tmp_path: Path) -> None:
    # the real teacher at 32 px: ~3 s on one thread
    pytest.importorskip("efficientnet_lite_pytorch")
    config = ImagenetTrackConfig(**{**TINY, "image_size": 32, "epochs": 20})  # type: ignore[arg-type]
    result = run_imagenet_track(config, workdir=tmp_path)
    assert result.recovery["teacher"].startswith("efficientnet-lite0:")
    dense = result.row("dense-fp16", None)
    assert dense is not None and dense.kl["T4"] < 1e-5
    assert result.row("topk-ms", 4.0) is not None
