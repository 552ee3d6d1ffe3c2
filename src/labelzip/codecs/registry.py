"""Codec registry: name -> class, and the stable on-disk integer id of each codec.

Archives store both the key and the id; ids are constants that never change
meaning (a lesson from CompressAI's position-in-dict ids). Add new codecs with a
new id; never reuse one.

A stored key never changes either (it is in every archive header and codec
config). Where a first key read badly, the codec has a clearer *name*
(:data:`CODEC_NAMES`): both are accepted everywhere a codec is named, archives
keep the key, and ``labelzip info`` shows the name.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from labelzip.codecs.base import Codec
from labelzip.errors import ConfigError

__all__ = [
    "CODEC_IDS",
    "CODEC_NAMES",
    "available_codecs",
    "codec_choices",
    "codec_class",
    "codec_name",
    "create_codec",
    "stored_key",
    "with_num_images",
]

# name -> (stable id, "module:Class"). Imported lazily so `import labelzip` stays light.
CODEC_IDS: dict[str, tuple[int, str]] = {
    "dense": (1, "labelzip.codecs.baseline.dense:DenseCodec"),
    "topk": (2, "labelzip.codecs.baseline.topk:TopKCodec"),
    "rskd": (3, "labelzip.codecs.baseline.rskd:RSKDCodec"),
    "vqae": (4, "labelzip.codecs.vqae.codec:VQAECodec"),
    "topk-tail": (5, "labelzip.codecs.baseline.topk_tail:TopKTailCodec"),
    "vqae-ctx": (6, "labelzip.codecs.context.viewmix:ViewMixCodec"),
    "vqae-sparse": (7, "labelzip.codecs.vqae_lm.sparse:VQAESparseCodec"),
    "vqae-rs": (8, "labelzip.codecs.vqae_lm.sampled:VQAESampledCodec"),
    "ctx-transform": (9, "labelzip.codecs.context.ctx_transform:ContextTransformCodec"),
    "distillkit": (10, "labelzip.codecs.baseline.distillkit:DistillKitCodec"),
    "topk-q": (11, "labelzip.codecs.baseline.topk_quant:TopKQuantCodec"),
}


# stored key -> the name users read and type (the key stays valid: an alias).
# "rs": random sampling, as in RS-KD (not Reed-Solomon); "ctx": the view context.
CODEC_NAMES: dict[str, str] = {
    "vqae-rs": "vqae-sampled",  # VQAE head + randomly sampled tail
    "vqae-ctx": "view-mix",  # per-image prototypes mixed like the relabel views
}
_KEY_OF_NAME = {name: key for key, name in CODEC_NAMES.items()}


def available_codecs() -> list[str]:
    """Every registered codec, once each, by its stored key."""
    return sorted(CODEC_IDS)


def codec_choices() -> list[str]:
    """Every name a user may pass: the stored keys and their clearer names."""
    return sorted([*CODEC_IDS, *CODEC_NAMES.values()])


def stored_key(name: str) -> str:
    """The registry (archive) key of a codec name or key.

    Raises:
        ConfigError: ``name`` is neither.
    """
    key = _KEY_OF_NAME.get(name, name)
    if key not in CODEC_IDS:
        raise ConfigError(
            f"unknown codec {name!r}; choose one of {', '.join(codec_choices())}"
        )
    return key


def codec_name(key: str) -> str:
    """The name shown for a stored key (the key itself unless it was renamed)."""
    return CODEC_NAMES.get(key, key)


def codec_class(name: str) -> type[Codec]:
    """The codec class registered under ``name`` (a stored key or its name)."""
    module_name, _, attr = CODEC_IDS[stored_key(name)][1].partition(":")
    cls: type[Codec] = getattr(importlib.import_module(module_name), attr)
    return cls


def with_num_images(
    name: str, options: Mapping[str, Any], num_images: int
) -> dict[str, Any]:
    """``options`` plus ``num_images`` for codecs whose config has that field.

    View-context codecs store one prototype per image, counted by rate control;
    a value the user set wins.
    """
    out = dict(options)
    if "num_images" in codec_class(name).config_class.model_fields:
        out.setdefault("num_images", num_images)
    return out


def create_codec(name: str, **options: Any) -> Codec:
    """Build an unfitted codec from its name (or stored key) and config options."""
    cls = codec_class(name)
    config_cls = cls.config_class
    try:
        config = config_cls(kind=cls.kind, **options)
    except Exception as exc:  # pydantic ValidationError -> one readable line
        raise ConfigError(f"invalid {name} codec options: {_first_error(exc)}") from exc
    return cls(config)


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
    return str(exc)
