"""Codec registry: stable ids, creation by name, rate-target budgets."""

from __future__ import annotations

import pytest

from labelzip.codecs.registry import (
    CODEC_IDS,
    available_codecs,
    codec_class,
    create_codec,
    create_codec_for_target,
    target_total_bytes,
)
from labelzip.errors import ConfigError, UnreachableTargetError

BASELINES = ["dense", "topk", "rskd"]


def test_ids_are_stable_and_unique() -> None:
    assert {name: CODEC_IDS[name][0] for name in BASELINES} == {
        "dense": 1,
        "topk": 2,
        "rskd": 3,
    }
    ids = [entry[0] for entry in CODEC_IDS.values()]
    assert len(ids) == len(set(ids))
    assert available_codecs() == sorted(CODEC_IDS)


@pytest.mark.parametrize("name", BASELINES)
def test_class_matches_its_registry_entry(name: str) -> None:
    cls = codec_class(name)
    assert cls.kind == name
    assert cls.codec_id == CODEC_IDS[name][0]
    codec = create_codec(name)
    assert isinstance(codec, cls) and codec.config.kind == name
    assert not codec.is_fitted


def test_unknown_name_and_bad_options() -> None:
    with pytest.raises(ConfigError, match="unknown codec 'zip'; choose one of .*dense"):
        codec_class("zip")
    with pytest.raises(ConfigError, match="invalid dense codec options: dtype"):
        create_codec("dense", dtype="int4")
    with pytest.raises(
        ConfigError, match="invalid topk codec options: k: Input should be greater"
    ):
        create_codec("topk", k=0)
    with pytest.raises(ConfigError, match="invalid rskd codec options: bogus"):
        create_codec("rskd", bogus=1)


def test_target_total_bytes() -> None:
    assert target_total_bytes(num_labels=100, num_classes=1000, ratio=40) == 5000
    assert (
        target_total_bytes(num_labels=100, num_classes=1000, ratio=40, reference="fp32")
        == 10000
    )
    assert (
        target_total_bytes(num_labels=100, num_classes=1000, bits_per_label=400) == 5000
    )
    assert (
        target_total_bytes(num_labels=3, num_classes=10, bits_per_label=7) == 2
    )  # floor
    with pytest.raises(ConfigError, match="exactly one of ratio or bits_per_label"):
        target_total_bytes(num_labels=1, num_classes=2)
    with pytest.raises(ConfigError, match="exactly one"):
        target_total_bytes(num_labels=1, num_classes=2, ratio=2, bits_per_label=3)
    with pytest.raises(ConfigError, match="ratio must be > 0, got 0"):
        target_total_bytes(num_labels=1, num_classes=2, ratio=0)
    with pytest.raises(ConfigError, match="bits_per_label must be > 0, got -1"):
        target_total_bytes(num_labels=1, num_classes=2, bits_per_label=-1)


def test_create_for_target_subtracts_overhead() -> None:
    # dense fp16 of 10 x 10 needs exactly the 1x budget of 200 bytes
    codec = create_codec_for_target("dense", num_labels=10, num_classes=10, ratio=1.0)
    assert codec.config.dtype == "fp16"  # type: ignore[attr-defined]
    with pytest.raises(UnreachableTargetError, match="budget is 199"):
        create_codec_for_target(
            "dense", num_labels=10, num_classes=10, ratio=1.0, overhead_bytes=1
        )
    with pytest.raises(
        UnreachableTargetError, match="header and side information alone take 300"
    ):
        create_codec_for_target(
            "dense", num_labels=10, num_classes=10, ratio=1.0, overhead_bytes=300
        )


@pytest.mark.parametrize("name", BASELINES)
def test_create_for_target_returns_fitting_codec(name: str) -> None:
    codec = create_codec_for_target(
        name, num_labels=4096, num_classes=1000, bits_per_label=16_000
    )
    assert codec.kind == name and not codec.is_fitted


def test_with_num_images_only_for_codecs_with_the_field_and_keeps_user_values() -> None:
    from labelzip.codecs.registry import with_num_images

    assert with_num_images("topk", {"k": 3}, 10) == {"k": 3}
    assert with_num_images("ctx-transform", {}, 10) == {"num_images": 10}
    assert with_num_images("vqae-ctx", {"num_images": 4}, 10) == {"num_images": 4}


@pytest.mark.parametrize(
    ("key", "name", "codec_id"),
    [("vqae-rs", "vqae-sampled", 8), ("vqae-ctx", "view-mix", 6)],
)
def test_renamed_codecs_keep_their_stored_key(
    key: str, name: str, codec_id: int
) -> None:
    from labelzip.codecs.registry import (
        CODEC_NAMES,
        codec_choices,
        codec_name,
        stored_key,
    )

    assert CODEC_NAMES[key] == name and codec_name(key) == name
    assert stored_key(name) == stored_key(key) == key
    assert codec_class(name) is codec_class(key)
    assert {key, name} <= set(codec_choices()) and name not in available_codecs()
    codec = create_codec(name)  # the new name builds the codec archives call `key`
    assert codec.kind == codec.config.kind == key and codec.codec_id == codec_id
    assert codec_name("topk") == "topk" and stored_key("topk") == "topk"
    with pytest.raises(ConfigError, match="unknown codec 'vqae-reed-solomon'"):
        stored_key("vqae-reed-solomon")


def test_package_docstring_table_matches_the_registry() -> None:
    """codecs/__init__.py lists every codec: id, key, name, class and file."""
    import labelzip.codecs as package
    from labelzip.codecs.registry import codec_name

    doc = package.__doc__ or ""
    rows = {tuple(line.split()) for line in doc.splitlines() if line[:1].isdigit()}
    want = set()
    for key, (codec_id, target) in CODEC_IDS.items():
        module, _, cls = target.partition(":")
        path = module.removeprefix("labelzip.codecs.").replace(".", "/") + ".py"
        want.add((str(codec_id), key, codec_name(key), cls, path))
    assert rows == want
