"""labelzip bench scale: generated inputs, measured runs, skipped runs, the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from labelzip.bench import scale
from labelzip.bench.scale import ScaleConfig, parse_count, write_tiled_input
from labelzip.cli.bench import main as bench_main
from labelzip.errors import ConfigError
from labelzip.logit_store import open_logits


@pytest.fixture()
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.safetensors"
    logits = torch.randn(700, 50, generator=torch.Generator().manual_seed(0)) * 4
    save_file({"logits": logits}, str(path))
    return path


def test_parse_count() -> None:
    assert parse_count("15M") == 15_000_000
    assert parse_count("300k") == 300_000
    assert parse_count("1.5m") == 1_500_000
    assert parse_count("42") == 42
    for bad in ("x", "0", "1.5", "-3k"):
        with pytest.raises(ConfigError):
            parse_count(bad)


def test_tiled_input_cycles_the_real_rows(tmp_path: Path, labels: Path) -> None:
    out = tmp_path / "big.safetensors"
    write_tiled_input(out, labels, 1600)
    with open_logits(out) as big, open_logits(labels) as small:
        assert big.shape == (1600, 50) and big.dtype == torch.float16
        want = small.read(0, 700).half()
        assert torch.equal(big.read(0, 700), want)
        assert torch.equal(big.read(1400, 1600), want[:200])


def test_bench_scale_reports_every_run(
    tmp_path: Path, labels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scale.md"
    argv = ["scale", "--labels", str(labels), "--sizes", "2000", "--codecs", "dense"]
    argv += ["topk", "--ratio", "10", "--procs", "1", "--decode-seconds", "0.2"]
    argv += ["--quiet"]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
    assert bench_main(argv) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 2,000 |")]
    assert len(rows) == 2 and all("skipped" not in r for r in rows)
    assert "| 2,000 | topk | 1 |" in text and "Command: `labelzip bench scale" in text
    assert list((tmp_path / "work").iterdir()) == []  # inputs and archives removed
    cells = [c.strip() for c in rows[1].split("|")]
    header = next(line for line in text.splitlines() if line.startswith("| N |"))
    names = [c.strip() for c in header.split("|")]
    for name in (
        "decode shuffled (one epoch) labels/s",
        "decode shuffled (whole archive, prefetched) labels/s",
    ):
        cell = cells[names.index(name)]
        assert float(cell.replace(",", "")) > 0, name  # measured, not a dash
    assert float(cells[names.index("prefetch s")]) >= 0


def test_prefetched_shuffle_spills_beyond_the_cache(
    tmp_path: Path, labels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelzip.archive import ArchiveReader
    from labelzip.cli.compress import main as compress_main

    archive = tmp_path / "a.lz"
    argv = [str(labels), "--codec", "topk", "--ratio", "10", "-o", str(archive)]
    assert compress_main([*argv, "--quiet"]) == 0
    built: list[int] = []
    original = ArchiveReader.prefetch

    def tiny_cache(self: ArchiveReader, *args: object, **kwargs: object) -> int:
        self.cache_bytes = 1  # every archive is larger than the cache
        count = original(self, *args, **kwargs)  # type: ignore[arg-type]
        built.append(self.spilled_bytes)
        return count

    monkeypatch.setattr(ArchiveReader, "prefetch", tiny_cache)
    rates = scale.decode_rates(archive, 0.1)
    assert built and built[0] > 0  # it spilled next to the archive
    assert rates["prefetched_shuffled"] > 0 and rates["prefetch_seconds"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lz", "teacher.safetensors"]


def test_failure_line_skips_torchrun_banners() -> None:
    torchrun = "\n".join(
        [
            "labelzip compress: error: rank 1 timed out after 1800 s (--dist-timeout)",
            "E1206 ... failed (exitcode: 2)",
            "=" * 56,
            "Root Cause (first observed failure):",
            "=" * 56,
        ]
    )
    assert scale.failure_line(torchrun).startswith("labelzip compress: error: rank 1")
    assert scale.failure_line("Traceback\nboom\n=====\n") == "boom"
    assert scale.failure_line("") == "(no message)"


def test_runs_that_do_not_fit_the_disk_are_skipped(
    tmp_path: Path, labels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scale, "_free_bytes", lambda folder: 1000)
    config = ScaleConfig(labels=labels, sizes=(100,), codecs=("dense",), procs=(1,))
    report = scale.run_scale_bench(config, tmp_path / "w", log=lambda line: None)
    (row,) = report["rows"]
    assert row["skipped"] == "the input does not fit the free disk"
    assert "skipped: the input" in scale.markdown_report(report, "cmd")


def test_projection_uses_the_largest_run_of_each_codec() -> None:
    def row(n: int, codec: str, rate: float | None, fit: float = 10.0) -> dict:
        return {"num_labels": n, "codec": codec, "procs": 1, "skipped": None,
                "encode_rate": rate, "fit_seconds": fit}  # fmt: skip

    rows = [
        row(1_000, "vqae", 1.0),
        row(3_000_000, "vqae", 50_000.0),
        row(5, "x", None),
    ]
    lines = scale.projection_lines(rows)
    (vqae,) = [line for line in lines if line.startswith("| vqae |")]
    # (10 s + 3M / 50k) / 3600, then 15M and 60M labels
    assert vqae == "| vqae | 1 | 3,000,000 | 0.02 h | 0.09 h | 0.34 h |"
    assert not any(line.startswith("| x |") for line in lines)
    assert scale.projection_lines([row(5, "x", None)]) == []
