"""Each framework's byte formula on a small custom case computed by hand.

The case: C=10 classes, 8 px grayscale, IPC 4 -> N=40 images, E=3 epochs ->
120 views; relabel batch 16 unless said otherwise.
"""

from __future__ import annotations

import pytest

from labelzip.errors import ConfigError
from labelzip.storage import custom_dataset, lm_storage_table, storage_table
from labelzip.storage.frameworks import json_index_bytes

SPEC = custom_dataset(10, 8, 1)


def one(framework: str, **options: object) -> dict[str, object]:
    rows = storage_table(dataset=SPEC, framework=framework, ipc=4, epochs=3, **options)
    assert len(rows) == 1
    return rows[0].to_dict()


def parts(row: dict[str, object]) -> tuple[object, ...]:
    keys = ("stored_labels", "label_bytes", "side_bytes", "model_bytes", "header_bytes")
    return tuple(row[k] for k in keys)


@pytest.mark.parametrize("framework", ["sre2l", "cda"])
def test_sre2l_and_cda(framework: str) -> None:
    row = one(framework, batch_size=16)
    # 3 epochs x ceil(40/16)=3 batch files = 9 files
    label = 120 * 10 * 2  # fp16 logits
    side = 120 * (16 + 1 + 8) + 9 * (8 + 32)  # per view + per batch
    assert parts(row) == (120, label, side, 0, 9 * 3072)
    assert row["augment"] == "stored"
    assert row["reference_bytes"] == 2400
    assert row["label_total_bytes"] == 2400 + 3360 + 27648


def test_seed_augment_replaces_side_info() -> None:
    row = one("sre2l", batch_size=16, augment="seed")
    assert parts(row) == (120, 2400, 8, 0, 9 * 3072)
    assert row["augment"] == "seed"


def test_fp32_logits() -> None:
    assert one("sre2l", batch_size=16, logit_dtype="fp32")["label_bytes"] == 4800


def test_rded_online_and_materialised() -> None:
    rows = storage_table(
        dataset=SPEC,
        framework="rded",
        ipc=4,
        epochs=3,
        batch_size=16,
        teacher_bytes=5000,
    )
    assert [r.framework for r in rows] == ["rded-online", "rded-materialised"]
    online, mat = rows
    assert (online.stored_labels, online.label_bytes, online.side_bytes) == (0, 0, 0)
    assert (online.model_bytes, online.header_bytes, online.augment) == (
        5000,
        0,
        "online",
    )
    assert online.ratio_vs_dense == 2400 / 5000
    assert (mat.label_bytes, mat.side_bytes, mat.header_bytes) == (2400, 3360, 27648)
    assert mat.ratio_vs_first == 5000 / (2400 + 3360 + 27648)


def test_rded_without_teacher_bytes_says_so() -> None:
    online = storage_table(dataset=SPEC, framework="rded", ipc=4, epochs=3)[0]
    assert online.model_bytes == 0
    assert online.ratio_vs_dense is None
    assert any("--teacher-bytes" in note for note in online.notes)


def test_json_index_bytes_by_hand() -> None:
    # ids 0..39: 10 one-digit + 30 two-digit = 70 digits, plus ", " each = 150 B
    assert json_index_bytes(40, 40) == 150
    assert json_index_bytes(16, 40) == 60  # 16 * 150 / 40
    assert json_index_bytes(3, 40) == 12  # ceil(11.25)
    assert json_index_bytes(0, 40) == 0


def test_lpld() -> None:
    row = one("lpld", batch_size=16, prune_ratio=4)
    # 40 // 16 = 2 full batches per epoch; floor(3 * 2 / 4) = 1 file of 16 views
    side = 16 * 25 + 1 * 40 + 60  # per view, per batch, JSON image ids
    assert parts(row) == (16, 16 * 10 * 2, side, 0, 3072)


def test_lpld_default_ratio_is_40() -> None:
    spec = custom_dataset(10, 8, 1)
    row = storage_table(dataset=spec, framework="lpld", ipc=128, epochs=300)[0]
    # N=1280, batch 128 -> 10 per epoch; floor(300 * 10 / 40) = 75 files
    assert row.stored_labels == 75 * 128 == row.num_labels // 40


def test_lpqld() -> None:
    row = one("lpqld", batch_size=16, prune_ratio=4, topk=3)
    label = 16 * 3 * (2 + 2)  # fp16 value + int16 id
    side = 16 * (8 + 1 + 1) + 1 * (8 + 4) + 60
    assert parts(row) == (16, label, side, 0, 3072)


def test_fkd() -> None:
    row = one("fkd", topk=3)
    label = 120 * 3 * 2 * 2  # values and ids, both fp16
    assert parts(row) == (120, label, 120 * 17, 0, 40 * 3072)  # a file per image


def test_labelzip_codec_numbers() -> None:
    row = one(
        "labelzip",
        codec_bits_per_label=12.5,
        codec_model_bytes=1000,
        codec_header_bytes=200,
    )
    assert parts(row) == (120, 188, 8, 1000, 200)  # ceil(120 * 12.5 / 8) = 188
    assert row["augment"] == "seed"


def test_labelzip_over_pruned_labels_and_stored_augment() -> None:
    row = one(
        "labelzip",
        codec_bits_per_label=12.5,
        codec_model_bytes=1000,
        labelzip_prune_ratio=4,
        augment="stored",
        batch_size=16,
    )
    # 30 stored labels: ceil(30 * 12.5 / 8) = 47; side 30*25 + ceil(30/16)*40
    assert parts(row) == (30, 47, 30 * 25 + 2 * 40, 1000, 0)
    assert any("header not known" in note for note in row["notes"])


@pytest.mark.parametrize(
    "options",
    [{}, {"codec_bits_per_label": 8.0}, {"codec_model_bytes": 10}],
)
def test_labelzip_needs_both_codec_numbers(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="needs the codec's numbers"):
        one("labelzip", **options)


def test_topk_larger_than_classes() -> None:
    with pytest.raises(
        ConfigError, match="topk 11 is larger than the number of classes 10"
    ):
        one("fkd", topk=11)


def test_lm_dense_topk_labelzip_by_hand() -> None:
    rows = lm_storage_table(
        tokens=1000,
        vocab=100,
        framework=["dense", "topk", "labelzip"],
        topk=5,
        codec_bits_per_label=24,
        codec_model_bytes=300,
    )
    dense, topk, lz = rows
    assert parts(dense.to_dict()) == (1000, 1000 * 100 * 2, 0, 0, 0)
    # ceil(log2 100) = 7-bit ids: 5 * (16 + 7) bits per token
    assert parts(topk.to_dict()) == (1000, 14375, 0, 0, 0)
    assert parts(lz.to_dict()) == (1000, 3000, 0, 300, 0)
    assert lz.augment == "none"
    assert lz.ratio_vs_first == 200000 / 3300
    assert (dense.num_images, dense.image_bytes, dense.ipc) == (0, 0, None)


@pytest.mark.parametrize(("vocab", "bits"), [(1024, 10), (1025, 11), (50257, 16)])
def test_lm_topk_id_bits(vocab: int, bits: int) -> None:
    row = lm_storage_table(tokens=8, vocab=vocab, framework="topk", topk=1)[0]
    assert row.label_bytes == 8 * (16 + bits) // 8
    assert f"{bits}-bit id" in row.notes[0]


def test_vision_framework_in_lm_mode_and_back() -> None:
    with pytest.raises(ConfigError, match="unknown LM framework 'lpld'"):
        lm_storage_table(tokens=10, vocab=100, framework="lpld")
    with pytest.raises(ConfigError, match="unknown image framework 'dense'"):
        storage_table(dataset=SPEC, framework="dense", ipc=1)
