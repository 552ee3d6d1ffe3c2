"""The storage table: published numbers, ratios, to_dict keys, input checks, archives."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from labelzip.errors import CodecMismatchError, ConfigError, InputError
from labelzip.storage import (
    StorageOptions,
    custom_dataset,
    format_bytes,
    lm_storage_table,
    storage_table,
)

IPCS = [10, 20, 50, 100, 200]
GIB = 2**30


@pytest.mark.parametrize("framework", ["sre2l", "cda"])
def test_reproduces_published_imagenet_label_sizes(framework: str) -> None:
    """SRe2L/CDA ImageNet-1K, 300 epochs: 5.67/11.33/28.33/56.66/113.33 (GiB)."""
    rows = storage_table(dataset="imagenet-1k", framework=framework, ipc=IPCS)
    got = [round(row.label_total_bytes / GIB, 2) for row in rows]
    assert got == [5.67, 11.33, 28.33, 56.66, 113.33]


def test_published_sizes_need_side_info_and_binary_units() -> None:
    """Logits alone give 5.59 GiB / 6.00 GB at IPC 10: neither is the published 5.67."""
    row = storage_table(dataset="imagenet-1k", framework="sre2l", ipc=10)[0]
    assert row.label_bytes == 10_000 * 300 * 1000 * 2
    assert round(row.label_bytes / GIB, 2) == 5.59
    assert round(row.label_total_bytes / 1e9, 2) == 6.08  # decimal GB: also off
    per_view = row.label_total_bytes / row.num_labels
    assert 2028.0 < per_view < 2028.2  # 2000 logits + 25 side + ~3 container


def test_lpld_and_lpqld_close_to_published() -> None:
    """LPLD x40 (GiB) and LPQLD x80 = prune 10 + MR-50 (GB), ImageNet-1K.

    Published: LPLD 0.14/0.29/0.71/1.43/2.85, LPQLD 0.07/0.15/0.37/0.73/1.47.
    Our formulas are within 3% plus the half-unit of two-decimal rounding.
    """
    lpld = storage_table(dataset="imagenet-1k", framework="lpld", ipc=IPCS)
    lpqld = storage_table(dataset="imagenet-1k", framework="lpqld", ipc=IPCS)
    for rows, pub, unit in [
        (lpld, [0.14, 0.29, 0.71, 1.43, 2.85], GIB),
        (lpqld, [0.07, 0.15, 0.37, 0.73, 1.47], 1e9),
    ]:
        for row, value in zip(rows, pub, strict=True):
            assert abs(row.label_total_bytes / unit - value) <= 0.005 + 0.03 * value


def test_lm_dense_gpt2_112_gb() -> None:
    """1,114,112 tokens (1,088 x 1,024) of fp16 GPT-2 distributions ~= 112 GB."""
    row = lm_storage_table(tokens=1_114_112, vocab=50257, framework="dense")[0]
    assert row.label_total_bytes == 1_114_112 * 50257 * 2
    assert round(row.label_total_bytes / 1e9) == 112


def test_rows_order_and_ratio_vs_first() -> None:
    rows = storage_table(
        dataset="cifar-10",
        framework=["sre2l", "lpld", "labelzip"],
        ipc=[10, 50],
        codec_bits_per_label=32,
        codec_model_bytes=1000,
    )
    assert [(r.ipc, r.framework) for r in rows] == [
        (10, "sre2l"),
        (10, "lpld"),
        (10, "labelzip"),
        (50, "sre2l"),
        (50, "lpld"),
        (50, "labelzip"),
    ]
    for group in (rows[:3], rows[3:]):
        first = group[0].label_total_bytes
        assert group[0].ratio_vs_first == 1.0
        for row in group:
            assert row.ratio_vs_first == first / row.label_total_bytes
            assert row.ratio_vs_dense == row.reference_bytes / row.label_total_bytes


def test_single_framework_has_no_ratio_vs_first() -> None:
    row = storage_table(dataset="cifar-10", framework="sre2l", ipc=1)[0]
    assert row.ratio_vs_first is None


def test_to_dict_keys_and_values() -> None:
    row = storage_table(dataset="fashion-mnist", framework="sre2l", ipc=1, epochs=2)[0]
    data = row.to_dict()
    assert set(data) == {
        "dataset",
        "framework",
        "num_classes",
        "ipc",
        "epochs",
        "num_images",
        "num_labels",
        "stored_labels",
        "image_bytes",
        "label_bytes",
        "side_bytes",
        "model_bytes",
        "header_bytes",
        "augment",
        "reference_bytes",
        "ratio_vs_first",
        "notes",
        "label_total_bytes",
        "total_bytes",
        "ratio_vs_dense",
        "bits_per_label",
    }
    assert data["total_bytes"] == data["image_bytes"] + data["label_total_bytes"]
    assert (data["num_images"], data["num_labels"]) == (10, 20)
    assert data["bits_per_label"] == 8 * data["label_total_bytes"] / 20
    assert isinstance(data["notes"], list)


def test_image_bytes_override_and_formats() -> None:
    spec = custom_dataset(10, 8, 3)
    raw = storage_table(dataset=spec, framework="sre2l", ipc=2, image_format="raw")
    fixed = storage_table(dataset=spec, framework="sre2l", ipc=2, image_bytes=7)
    assert raw[0].image_bytes == 20 * 8 * 8 * 3
    assert fixed[0].image_bytes == 20 * 7


def test_options_object_and_overrides() -> None:
    opts = StorageOptions(batch_size=16)
    spec = custom_dataset(10, 8, 1)
    a = storage_table(dataset=spec, framework="sre2l", ipc=4, epochs=3, options=opts)
    b = storage_table(
        dataset=spec, framework="sre2l", ipc=4, epochs=3, options=opts, batch_size=40
    )
    assert a[0].header_bytes == 9 * 3072
    assert b[0].header_bytes == 3 * 3072


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ipc": -5}, r"IPC must be a positive integer, got -5"),
        ({"ipc": [10, 0]}, r"IPC must be a positive integer, got 0"),
        ({"ipc": []}, "give at least one IPC"),
        ({"ipc": 1, "epochs": 0}, "epochs must be a positive integer"),
        ({"ipc": 1, "framework": "srel2"}, r"unknown image framework 'srel2'.*sre2l"),
        ({"ipc": 1, "dataset": "imagenet"}, "unknown dataset 'imagenet'"),
        ({"ipc": 1, "prune_ratio": 0.5}, "invalid storage option prune_ratio=0.5"),
        ({"ipc": 1, "augment": "maybe"}, "invalid storage option augment='maybe'"),
    ],
)
def test_bad_inputs(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"dataset": "cifar-10", "framework": "sre2l", **kwargs}
    with pytest.raises(ConfigError, match=match):
        storage_table(**args)  # type: ignore[arg-type]


def test_lm_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="token count must be a positive integer"):
        lm_storage_table(tokens=0, vocab=10)
    with pytest.raises(ConfigError, match="vocab size must be >= 2"):
        lm_storage_table(tokens=10, vocab=1)


def test_format_bytes() -> None:
    assert format_bytes(6_084_336_000, "GiB") == "5.67"
    assert format_bytes(1536, "auto") == "1.50 KiB"
    assert format_bytes(12, "auto") == "12 B"
    assert format_bytes(1234567, "bytes") == "1,234,567"
    with pytest.raises(ConfigError, match="unknown units 'gb'"):
        format_bytes(1, "gb")


# -- labelzip numbers from a real archive ---------------------------------------------
def test_archive_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        storage_table(
            dataset="cifar-10",
            framework="labelzip",
            ipc=1,
            archive=str(tmp_path / "nope.lz"),
        )


def test_archive_and_codec_numbers_conflict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either --archive or --codec"):
        storage_table(
            dataset="cifar-10",
            framework="labelzip",
            ipc=1,
            archive=str(tmp_path / "x.lz"),
            codec_bits_per_label=3.0,
        )


def _save_archive_or_skip() -> object:
    try:
        module = importlib.import_module("labelzip.archive")
    except ImportError:
        pytest.skip("labelzip.archive is not available yet")
    if not hasattr(module, "save_archive"):
        pytest.skip("labelzip.archive.save_archive is not available yet")
    return module.save_archive


def test_labelzip_numbers_from_a_real_archive(tmp_path: Path) -> None:
    save_archive = _save_archive_or_skip()
    from labelzip.codecs.registry import create_codec

    path = tmp_path / "labels.lz"
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0))
    account = save_archive(path, create_codec("dense", dtype="fp16"), logits)  # type: ignore[operator]
    assert account.payload_bytes == 200 * 10 * 2
    spec = custom_dataset(10, 8, 1)
    # 10 classes x IPC 2 x 10 epochs = 200 views: exactly the archive's labels
    same = storage_table(
        dataset=spec, framework="labelzip", ipc=2, epochs=10, archive=str(path)
    )[0]
    assert same.label_bytes == account.payload_bytes
    assert same.model_bytes == account.model_bytes
    assert same.header_bytes == account.header_bytes
    assert same.side_bytes == 8  # seed
    # 3x the views: payload extrapolated at the archive's 160 bits/label
    more = storage_table(
        dataset=spec, framework="labelzip", ipc=6, epochs=10, archive=str(path)
    )[0]
    assert more.label_bytes == 600 * 20
    with pytest.raises(CodecMismatchError, match="10-class labels.*100 classes"):
        storage_table(
            dataset="cifar-100", framework="labelzip", ipc=1, archive=str(path)
        )


def test_pruned_archive_bits_are_per_stored_label(tmp_path: Path) -> None:
    save_archive = _save_archive_or_skip()
    try:
        from labelzip.archive import Layout
        from labelzip.codecs.prune import PrunePlan
    except ImportError:
        pytest.skip("pruned archives are not available yet")
    from labelzip.codecs.registry import create_codec

    layout = Layout.for_shape((20, 8))  # 20 images x 8 views, C=10
    plan = PrunePlan(layout.dims, layout.shape, keep_fraction=0.25)
    path = tmp_path / "pruned.lz"
    logits = torch.randn(20, 8, 10, generator=torch.Generator().manual_seed(1))
    account = save_archive(path, create_codec("dense"), logits, prune=plan)  # type: ignore[operator]
    assert (account.num_labels, account.payload_bytes) == (160, 40 * 20)
    spec = custom_dataset(10, 8, 1)
    # 10 classes x IPC 2 x 8 epochs = 160 views; keep 1/4 -> the archive's 40 labels
    row = storage_table(
        dataset=spec,
        framework="labelzip",
        ipc=2,
        epochs=8,
        archive=str(path),
        labelzip_prune_ratio=4,
    )[0]
    assert (row.stored_labels, row.label_bytes) == (40, 800)
    # unpruned, every view costs the archive's 160 bits per stored label
    full = storage_table(
        dataset=spec, framework="labelzip", ipc=2, epochs=8, archive=str(path)
    )[0]
    assert full.label_bytes == 160 * 20
