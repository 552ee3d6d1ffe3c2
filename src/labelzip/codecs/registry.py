"""Codec registry: name -> class, and the stable on-disk integer id of each codec.

Archives store both the name and the id; ids are constants that never change
meaning (a lesson from CompressAI's position-in-dict ids). Add new codecs with a
new id; never reuse one.
"""

from __future__ import annotations

import importlib
from typing import Any

from labelzip.codecs.base import Codec
from labelzip.errors import ConfigError

__all__ = ["CODEC_IDS", "available_codecs", "codec_class", "create_codec"]

# name -> (stable id, "module:Class"). Imported lazily so `import labelzip` stays light.
CODEC_IDS: dict[str, tuple[int, str]] = {
    "dense": (1, "labelzip.codecs.dense:DenseCodec"),
    "topk": (2, "labelzip.codecs.topk:TopKCodec"),
    "rskd": (3, "labelzip.codecs.rskd:RSKDCodec"),
    "vqae": (4, "labelzip.codecs.vq.codec:VQAECodec"),
}


def available_codecs() -> list[str]:
    return sorted(CODEC_IDS)


def codec_class(name: str) -> type[Codec]:
    """The codec class registered under ``name``."""
    if name not in CODEC_IDS:
        raise ConfigError(
            f"unknown codec {name!r}; choose one of {', '.join(available_codecs())}"
        )
    module_name, _, attr = CODEC_IDS[name][1].partition(":")
    cls: type[Codec] = getattr(importlib.import_module(module_name), attr)
    return cls


def create_codec(name: str, **options: Any) -> Codec:
    """Build an unfitted codec from its name and config options."""
    cls = codec_class(name)
    config_cls = cls.config_class
    try:
        config = config_cls(kind=name, **options)
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
