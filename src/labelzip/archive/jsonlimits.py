"""Parse the JSON of an archive header with bounds on nesting, integers and floats.

Both JSON documents of an archive (the safetensors header and the labelzip
document inside it) come from the file, so a reader must not trust their
shape: Python's :func:`json.loads` raises ``RecursionError`` on deep nesting,
``ValueError`` on integers of more than 4300 digits, turns ``1e400`` into
``inf`` (``int(inf)`` then raises ``OverflowError``) and keeps the last of
duplicate keys, where another reader (safetensors' own Rust parser) may keep
the first. :func:`load_json` turns every one of these into one
:class:`~labelzip.errors.ArchiveFormatError` before any value is used.
"""

from __future__ import annotations

import json
import math
from typing import Any

from labelzip.errors import ArchiveFormatError

__all__ = ["MAX_JSON_DEPTH", "MAX_JSON_INT", "load_json"]

# Deepest nesting accepted: the safetensors header needs 3, a labelzip document
# about 6 (user metadata holding the relabel view recipe).
MAX_JSON_DEPTH = 32
# Largest integer magnitude accepted: every count and offset is an int64.
MAX_JSON_INT = 2**63 - 1
# An int64 has at most 19 digits; a sign makes 20 characters.
_MAX_INT_CHARS = 20


class _Refused(ValueError):
    """A value the bounded parser refuses (converted to ArchiveFormatError)."""


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise _Refused(f"integer of {len(text)} characters")
    value = int(text)
    if abs(value) > MAX_JSON_INT:
        raise _Refused(f"integer {value} outside the int64 range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} is not finite as a float")
    return value


def _parse_constant(text: str) -> float:
    raise _Refused(f"{text} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {key[:60]!r} appears twice in one object")
        out[key] = value
    return out


def _check_depth(value: Any, limit: int) -> None:
    """Iteratively (no recursion) check that ``value`` nests at most ``limit`` deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise _Refused(f"nested deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def load_json(text: str | bytes, what: str) -> Any:
    """Parse ``text`` with every bound of this module.

    ``what`` starts the error message (``"<what>: <reason>"``).

    Raises:
        ArchiveFormatError: invalid JSON, nesting deeper than
            :data:`MAX_JSON_DEPTH`, an integer outside int64, a non-finite
            number (``1e400``, ``NaN``, ``Infinity``) or a repeated key.
    """
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_unique_keys,
        )
        _check_depth(value, MAX_JSON_DEPTH)
    except RecursionError:
        raise ArchiveFormatError(
            f"{what}: nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveFormatError(f"{what}: {exc}") from exc
    return value
