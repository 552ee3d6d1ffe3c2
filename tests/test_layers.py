"""Imports run down the layers, and no module uses another's private names.

Walks every module of ``src/labelzip`` with :mod:`ast` (imports inside functions
included): ``archive`` never imports ``pipelines``, ``ops`` never imports
``codecs``, and no module imports a ``_private`` name from another labelzip
module or reads one off an imported labelzip module (``mod._name``).

Rate control (``labelzip.rate``) sits above ``codecs`` and ``archive``: neither
imports it, except that codecs may use its two leaves, ``rate.target`` (the
rate-value type of a codec config) and ``rate.search`` (the bisection of their
size models), which import no codec and no archive. ``rate`` itself never
imports the layers that use it (pipelines, selection, interop, lm, bench, cli).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "labelzip"

# (importing package, package it must not import)
FORBIDDEN = [
    ("labelzip.archive", "labelzip.pipelines"),
    ("labelzip.ops", "labelzip.codecs"),
    ("labelzip.archive", "labelzip.rate"),
    *[
        ("labelzip.rate", f"labelzip.{user}")
        for user in ("pipelines", "selection", "interop", "lm", "bench", "cli")
    ],
]

# The leaves of labelzip.rate a codec may import, and what they may import.
RATE_LEAVES = ("labelzip.rate.target", "labelzip.rate.search")
LEAF_IMPORTS = ("labelzip.accounting", "labelzip.errors")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module_name(path), path, ast.parse(path.read_text(), str(path))


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import statement, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            yield node.lineno, source
            for alias in node.names:  # `from pkg import submodule`
                yield node.lineno, f"{source}.{alias.name}"


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_import_runs_up_the_layers() -> None:
    bad = [
        f"{path.relative_to(SRC)}:{line} imports {name}"
        for module, path, tree in _modules()
        for low, high in FORBIDDEN
        if _inside(module, low)
        for line, name in _imports(module, path, tree)
        if _inside(name, high)
    ]
    assert not bad, "\n".join(bad)


def test_codecs_use_only_the_leaves_of_rate_control() -> None:
    bad = [
        f"{path.relative_to(SRC)}:{line} imports {name}"
        for module, path, tree in _modules()
        if _inside(module, "labelzip.codecs")
        for line, name in _imports(module, path, tree)
        if _inside(name, "labelzip.rate")
        and name != "labelzip.rate"  # `from labelzip.rate.x import y` names it too
        and not any(_inside(name, leaf) for leaf in RATE_LEAVES)
    ]
    bad += [
        f"{path.relative_to(SRC)}:{line} imports {name}"
        for module, path, tree in _modules()
        if module in RATE_LEAVES
        for line, name in _imports(module, path, tree)
        if _inside(name, "labelzip")
        and not any(_inside(name, ok) for ok in (*LEAF_IMPORTS, module))
    ]
    assert not bad, "\n".join(bad)


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> labelzip module, for ``import labelzip.x as y`` and
    ``from labelzip import x`` (x a module or package)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _inside(alias.name, "labelzip") and alias.asname:
                    names[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = SRC.joinpath(*full.split("."))
                if _inside(full, "labelzip") and (
                    target.with_suffix(".py").is_file() or target.is_dir()
                ):
                    names[alias.asname or alias.name] = full
    return names


def test_no_private_name_is_used_across_modules() -> None:
    bad = []
    for module, path, tree in _modules():
        where = path.relative_to(SRC)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(module, path, node)
                if not _inside(source, "labelzip") or source == module:
                    continue
                bad += [
                    f"{where}:{node.lineno} imports {alias.name} from {source}"
                    for alias in node.names
                    if _private(alias.name)
                ]
        aliases = _module_aliases(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                bad.append(
                    f"{where}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"
                )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("from labelzip.pipelines.relabel import x", True),
        ("def f():\n    from labelzip.pipelines import relabel", True),
        ("import labelzip.pipelines.relabel_types", True),
        ("from ..pipelines import relabel", True),
        ("from labelzip.codecs.base import x", False),
    ],
)
def test_the_walk_sees_every_import_form(source: str, found: bool) -> None:
    path = PACKAGE / "archive" / "writer.py"
    names = [n for _, n in _imports("labelzip.archive.writer", path, ast.parse(source))]
    assert any(_inside(n, "labelzip.pipelines") for n in names) is found
