"""The quickstart pipeline on a tiny synthetic dataset: rows, equal bytes, plot, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labelzip.augment import ViewConfig
from labelzip.data.base import ImageDataset
from labelzip.errors import ConfigError, InputError
from labelzip.pipelines.quickstart import (
    QuickstartConfig,
    run_quickstart,
    write_plot,
)
from labelzip.pipelines.train_student import StudentConfig

REQUIRED = {"framework", "ipc", "codec", "ratio", "accuracy", "retention"}


def _config(**kw: object) -> QuickstartConfig:
    base: dict[str, object] = {
        "ipc": 5,
        "epochs": 50,  # 20 images x 50 views = 1000 labels, 8 kB as fp16
        "ratio": 2.0,
        "codecs": ("dense", "topk-ms", "lpld"),
        "teacher_epochs": 1,
        "view": ViewConfig(output_size=28, scale=(0.5, 1.0), mix="cutmix"),
        "student": StudentConfig(width=8, depth=2, batch_size=10, lr=5e-3, epochs=6),
    }
    return QuickstartConfig(**{**base, **kw})


def test_quickstart_rows_at_equal_bytes(
    tmp_path: Path, dataset_factory: Callable[..., ImageDataset]
) -> None:
    train, test = dataset_factory(200, seed=1), dataset_factory(80, seed=2)
    stages: list[str] = []
    result = run_quickstart(
        _config(),
        train_set=train,
        test_set=test,
        workdir=tmp_path,
        cache_dir=tmp_path / "teachers",
        progress=lambda stage, done, total: stages.append(stage),
    )
    assert [row.codec for row in result.rows] == ["dense", "topk-ms", "lpld"]
    assert {"teacher", "distill", "relabel", "students"} <= set(stages)
    dense = result.rows[0]
    assert dense.retention == 1.0 and dense.ratio < 1.0  # header on 1000 labels
    for row in result.rows:
        assert REQUIRED <= set(row.to_dict())
        assert row.framework == "random" and row.ipc == 5
        assert 0.0 <= row.accuracy <= 1.0
        assert row.retention == pytest.approx(row.accuracy / dense.accuracy)
        assert (tmp_path / f"{row.codec}.lz").stat().st_size == row.total_bytes
    for row in result.rows[1:]:
        assert row.ratio >= 2.0 and row.kl > 0
    assert result.rows[2].views_kept < 1.0  # dense fp16 meets 2x only by pruning
    assert 0 <= result.teacher_accuracy <= 1 and not result.teacher_from_cache
    again = run_quickstart(
        _config(codecs=("dense",)),
        train_set=train,
        test_set=test,
        workdir=tmp_path,
        cache_dir=tmp_path / "teachers",
    )
    assert again.teacher_from_cache
    assert again.rows[0].accuracy == dense.accuracy  # seeded end to end
    plot = write_plot(result.rows, tmp_path / "plot.png", result.teacher_accuracy)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_bad_inputs(
    tmp_path: Path, dataset_factory: Callable[..., ImageDataset]
) -> None:
    train, test = dataset_factory(40, seed=1), dataset_factory(8, seed=2)
    with pytest.raises(InputError, match="ipc=11 is larger than the data allows"):
        run_quickstart(
            _config(ipc=11),
            train_set=train,
            test_set=test,
            workdir=tmp_path,
            cache_dir=tmp_path / "teachers",
        )
    with pytest.raises(ConfigError, match="unknown quickstart rows \\['zip'\\]"):
        run_quickstart(
            _config(codecs=("dense", "zip")),
            train_set=train,
            test_set=test,
            workdir=tmp_path,
        )
