"""Registry of the label-store formats ``labelzip import`` / ``export`` know.

Name -> ``"module:Class"`` of a :class:`~labelzip.interop.base.StoreFormat`,
imported only when used, so listing the formats stays cheap and a format
whose reader library is missing fails with one line instead of at import.
"""

from __future__ import annotations

import importlib

from labelzip.errors import ConfigError
from labelzip.interop.base import StoreFormat

__all__ = ["FORMATS", "available_formats", "get_format", "resolve_format_name"]

# name -> "module:Class"; aliases map onto these in ALIASES.
FORMATS: dict[str, str] = {
    "fkd": "labelzip.interop.fkd:FKDFormat",
    "sre2l": "labelzip.interop.fkd_mix:SRe2LFormat",
    "lpld": "labelzip.interop.fkd_mix:LPLDFormat",
    "lpqld": "labelzip.interop.fkd_mix:LPQLDFormat",
    "gvbsm": "labelzip.interop.fkd_mix:GVBSMFormat",
    "edc": "labelzip.interop.fkd_mix:EDCFormat",
    "distillkit": "labelzip.interop.distillkit:DistillKitFormat",
    "megatron": "labelzip.interop.megatron:MegatronFormat",
    "nemo-aligner": "labelzip.interop.nemo_aligner:NemoAlignerFormat",
}

ALIASES: dict[str, str] = {"cda": "sre2l"}


def available_formats() -> list[str]:
    """Every name ``--format`` accepts (aliases included), sorted."""
    return sorted([*FORMATS, *ALIASES])


def resolve_format_name(name: str) -> str:
    """The registry name of ``name`` or one of its aliases.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ConfigError(
            f"unknown label-store format {name!r}; choose one of "
            f"{', '.join(available_formats())}"
        )
    return key


def get_format(name: str) -> StoreFormat:
    """An instance of the format registered under ``name`` (or an alias)."""
    key = resolve_format_name(name)
    module_name, _, attr = FORMATS[key].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"label-store format {key!r} is not available in this installation ({exc})"
        ) from exc
    fmt: StoreFormat = cls()
    return fmt
