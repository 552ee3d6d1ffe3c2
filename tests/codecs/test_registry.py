"""Codec registry: stable ids, creation by name, each codec's size model."""

from __future__ import annotations

import pytest

from labelzip.codecs.registry import (
    CODEC_IDS,
    available_codecs,
    codec_class,
    create_codec,
)
from labelzip.errors import ConfigError

from .sizing import sized_codec

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


@pytest.mark.parametrize("name", BASELINES)
def test_for_target_returns_an_unfitted_codec(name: str) -> None:
    codec = sized_codec(name, num_labels=4096, num_classes=1000, bits_per_label=16_000)
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
