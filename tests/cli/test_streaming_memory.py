"""Peak RSS of streaming commands does not grow with the number of labels.

Each command runs in its own process on an input of N and of 4N labels (both
several times its batch); its ``ru_maxrss`` comes from ``os.wait4``. A command
that loaded the teacher, decoded the archive or built its output whole would
grow by at least the size of the extra 3N labels (197 MB here); a streaming one
stays within a few MB.

The children run with a fixed glibc mmap threshold: by default glibc raises the
threshold after freeing a large block, so later batch-sized buffers come from
the heap and its fragmentation adds tens of MB that level off with N (measured:
282, 311, 334 MiB at 8k, 32k, 131k labels for decompress) and would hide what
the command itself holds (282, 288, 288 MiB with the threshold fixed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labelzip.archive import ArchiveWriter, Layout
from labelzip.codecs.registry import create_codec
from labelzip.logit_writer import SafetensorsStreamWriter

CLASSES = 1000
BATCH = 4096
# SMALL is 4 batches: below that, decompress's peak still rises as its reader and
# writer reach their steady state (measured 287, 318, 330, 338, 342 MiB at 4k, 8k,
# 16k, 32k, 64k labels), which made 8k -> 32k flaky against the slack.
SMALL = 16384  # 4 batches; fp32 decoded: 66 MB
LARGE = 4 * SMALL  # fp32 decoded: 262 MB, 197 MB more than SMALL
# Growth allowed between the two sizes: far below the 197 MB a full load adds.
SLACK_BYTES = 24 * 2**20


def _make_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    """A (n, C) fp16 teacher file and its dense fp16 archive, written batch by batch."""
    logits, archive = folder / f"t{n}.safetensors", folder / f"a{n}.lz"
    spec = {"logits": ((n, CLASSES), torch.float16)}
    gen = torch.Generator().manual_seed(n)
    codec = create_codec("dense").fit([torch.zeros(1, CLASSES)])
    with (
        SafetensorsStreamWriter(logits, spec) as teacher,
        ArchiveWriter(archive, codec, layout=Layout.for_shape((n,))) as writer,
    ):
        for lo in range(0, n, BATCH):
            rows = (torch.randn(min(BATCH, n - lo), CLASSES, generator=gen) * 3).half()
            teacher.write("logits", rows)
            writer.write(rows)
    return logits, archive


def _peak_rss(argv: list[str]) -> int:
    """Bytes of the child's peak resident set (Linux reports ru_maxrss in KiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "1048576"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "labelzip", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert os.waitstatus_to_exitcode(status) == 0, err
    return int(usage.ru_maxrss) * 1024


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and wait4")
def test_decompress_and_eval_codec_peak_rss_is_flat(tmp_path: Path) -> None:
    peaks: dict[str, list[int]] = {"decompress": [], "eval-codec": []}
    for n in (SMALL, LARGE):
        logits, archive = _make_inputs(tmp_path, n)
        out = tmp_path / f"out{n}.safetensors"
        peaks["decompress"].append(
            _peak_rss(["decompress", str(archive), "-o", str(out), "--quiet"])
        )
        assert out.stat().st_size > n * CLASSES * 4
        out.unlink()
        peaks["eval-codec"].append(
            _peak_rss(["eval-codec", str(logits), str(archive), "--quiet", "--json"])
        )
        archive.unlink()
        logits.unlink()
    for command, (small, large) in peaks.items():
        grown = large - small
        assert grown < SLACK_BYTES, (
            f"{command}: peak RSS {small / 2**20:.0f} MiB at {SMALL} labels, "
            f"{large / 2**20:.0f} MiB at {LARGE}"
        )
