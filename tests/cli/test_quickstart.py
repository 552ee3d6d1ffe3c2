"""`labelzip quickstart`, in-process on a tiny Fashion-MNIST-format folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labelzip.cli.quickstart import main

torch.set_num_threads(1)
REQUIRED = {"framework", "ipc", "codec", "ratio", "accuracy", "retention"}


def test_quickstart_json_rows_and_plot(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "rate.png"
    argv = ["--data-dir", str(data_dir), "--ipc", "3", "--epochs", "30"]
    argv += ["--ratio", "2", "--codecs", "lpld,topk-ms", "--teacher-epochs", "3"]
    argv += ["--student-epochs", "3", "--threads", "1", "--plot", str(plot)]
    code = main([*argv, "--json", "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads(out.out)
    assert [row["codec"] for row in rows] == ["dense", "lpld", "topk-ms"]
    for row in rows:
        assert REQUIRED <= set(row) and row["ipc"] == 3
        assert row["framework"] == "random"
    assert rows[0]["retention"] == 1.0 and rows[0]["accuracy"] > 0.2  # 10 classes
    assert all(row["ratio"] >= 2.0 for row in rows[1:])
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "dense.lz", "lpld.lz", "topk-ms.lz",
    ]  # fmt: skip
    # The table, with the teacher now cached.
    code = main([*argv, "--codecs", "lpld", "--plot", ""])
    text = capsys.readouterr().out
    assert code == 0 and "retain" in text and "lpld" in text
    assert "teacher (convnet, cached)" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ipc", "31"], "ipc=31 is larger than the data allows.*--ipc 30 or less"),
        (["--codecs", "dense,zip"], "unknown --codecs \\['zip'\\]"),
        (["--ratio", "0.5"], "invalid quickstart options: ratio"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_quickstart_bad_input_is_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    import re

    argv = ["--data-dir", str(data_dir), "--teacher-epochs", "1", "--plot", ""]
    code = main([*argv, *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("labelzip quickstart: error:"), err
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_quickstart_names_the_missing_dataset_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--data-dir", str(tmp_path), "--plot", ""])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err
