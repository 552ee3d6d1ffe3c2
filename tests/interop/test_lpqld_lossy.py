"""Lossy import of LPQLD's top-k store: the support survives, MR's zeros stay zeros.

LPQLD's trainer (``train_FKD_LPQLD.py``, ``--label_quantization MR-k``) builds
each soft label as ``softmax(values / T)`` over the K stored logits, scattered
into zeros: the reference here is exactly that distribution.
"""

from __future__ import annotations

from pathlib import Path

import torch

from labelzip.archive import ArchiveReader
from labelzip.cli import main as cli_main
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import CodecChoice, export_archive, import_store
from labelzip.interop.safe_load import load_torch_file
from labelzip.rate import RateGoal

from .fixtures import write_lpqld
from .test_vision_formats import same

C, K = 60, 12
OPTIONS = ImportOptions(num_classes=C)


def mr_label(values: torch.Tensor, ids: torch.Tensor, t: float) -> torch.Tensor:
    """LPQLD's MR soft label: softmax over the kept logits, zero elsewhere."""
    probs = torch.softmax(values.float() / t, dim=1)
    return torch.zeros(values.shape[0], C).scatter_(1, ids.long(), probs)


def mr_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row (0 log 0 = 0); infinite where q misses mass of p."""
    ratio = torch.where(p > 0, p / q, torch.ones_like(p))
    return (p * ratio.log()).sum(dim=1)


def batches(root: Path) -> list[str]:
    return [f"batch_{i}.tar" for i in range(len(list(root.glob("batch_*.tar"))))]


def test_lossy_topk_import_keeps_the_support_and_exports_lpqld_files(
    tmp_path: Path,
) -> None:
    src = tmp_path / "q"
    write_lpqld(src, num_images=40, batch_size=8, epochs=4, num_classes=C, k=K)
    choice = CodecChoice(name="topk-q", options={"value_bits": 4, "step": 0.5})
    account = import_store(
        src, "lpqld", tmp_path / "a.lz", options=OPTIONS, codec=choice
    )
    lossless = import_store(src, "lpqld", tmp_path / "l.lz", options=OPTIONS)
    assert account.total_bytes < lossless.total_bytes
    with ArchiveReader(tmp_path / "a.lz") as reader:
        assert reader.codec_name == "topk-q" and reader.codec.config.k == K
        decoded = reader.decode(slice(0, reader.num_labels))
    export_archive(tmp_path / "a.lz", None, tmp_path / "out")
    start = 0
    for name in batches(src):
        a = load_torch_file(src / name)
        b = load_torch_file(tmp_path / "out" / name)
        # the augmentation elements come back equal; the labels in LPQLD's types
        assert all(same(x, y) for x, y in zip(a[:-2], b[:-2], strict=True))
        assert b[-2].dtype == torch.float16 and b[-2].shape == a[-2].shape
        assert b[-1].dtype == torch.int16 and b[-1].shape == a[-1].shape
        # the same K classes per label, the stored top-1 first
        assert torch.equal(a[-1].long().sort(1).values, b[-1].long().sort(1).values)
        assert torch.equal(b[-1][:, 0], a[-1][:, 0])
        rows = decoded[start : start + a[-2].shape[0]]
        start += a[-2].shape[0]
        for t in (1.0, 4.0, 20.0):
            want = mr_label(a[-2], a[-1], t)
            got = mr_label(b[-2], b[-1], t)
            # what LPQLD's trainer reads from the exported file is the decoded label
            assert torch.allclose(got, torch.softmax(rows / t, dim=1), atol=1e-6)
            # levels of 0.5 logits: close to the stored MR label, no mass elsewhere
            assert float(mr_kl(want, got).max()) < 0.05 * (4.0 / t) ** 2 + 1e-3
    assert start == decoded.shape[0]


def test_lossy_topk_import_at_a_ratio_and_with_fewer_classes(tmp_path: Path) -> None:
    src = tmp_path / "q"
    write_lpqld(src, num_images=40, batch_size=8, epochs=4, num_classes=C, k=K)
    ratio = import_store(
        src,
        "lpqld",
        tmp_path / "r.lz",
        options=OPTIONS,
        codec=CodecChoice(
            name="topk-q", goal=RateGoal(ratio=1.5)
        ),  # a small store: header-heavy
    )
    assert ratio.ratio >= 1.5
    with ArchiveReader(tmp_path / "r.lz") as reader:
        assert reader.codec.config.k == K  # the store's K, value bits chosen
    import_store(
        src,
        "lpqld",
        tmp_path / "k.lz",
        options=OPTIONS,
        codec=CodecChoice(name="topk-q", options={"k": 5}),
    )
    export_archive(tmp_path / "k.lz", None, tmp_path / "out")
    a = load_torch_file(src / "batch_0.tar")
    b = load_torch_file(tmp_path / "out" / "batch_0.tar")
    # five kept classes: five columns, all finite, the stored top five
    assert b[-2].shape == (a[-2].shape[0], 5) and bool(torch.isfinite(b[-2]).all())
    assert torch.equal(b[-1].long().sort(1).values, a[-1][:, :5].long().sort(1).values)


def test_cli_lossy_lpqld_import(tmp_path: Path) -> None:
    src = tmp_path / "q"
    write_lpqld(src, num_classes=C, k=K)
    code = cli_main(
        [
            "import",
            "--format",
            "lpqld",
            str(src),
            "--num-classes",
            str(C),
            "--codec",
            "topk-q",
            "--opt",
            "value_bits=2",
            "-o",
            str(tmp_path / "a.lz"),
            "--quiet",
        ]
    )
    assert code == 0
    with ArchiveReader(tmp_path / "a.lz") as reader:
        decoded = reader.decode(slice(0, reader.num_labels))
    assert int(torch.isfinite(decoded).sum(dim=1).min()) == K
