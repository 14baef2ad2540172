"""The layering of CONTRIBUTING.md holds: a lower layer never imports a higher one.

Every ``import mmssl.…`` / ``from mmssl… import`` of every module (function-local ones too;
not those under ``if TYPE_CHECKING:``, which annotations alone use) is read with :mod:`ast`, so
a layering break fails here instead of waiting for a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmssl"

#: CONTRIBUTING.md's table, lowest first; a module may import its own layer and those below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("settings", "errors", "io"),
    ("objectives", "nn"),
    ("data",),
    ("methods",),
    ("evaluation",),
    ("config",),
    ("runs",),
    ("analysis",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mmssl" and parts[1] in RANK else None


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    type_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                 for statement in node.body for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # annotations only: no import at run time
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, target) for line, target in found if target.startswith("mmssl")]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if layer_of(module_name(p)))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    name = module_name(path)
    own = layer_of(name)
    assert own is not None
    upward = [f"line {line}: {target}" for line, target in imported_modules(path, name)
              if (layer := layer_of(target)) is not None and RANK[layer] > RANK[own]]
    assert not upward, f"{name} ({own}) imports a higher layer: {upward}"


def test_every_layer_is_a_package_member() -> None:
    for names in LAYERS:
        for name in names:
            assert (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file(), name
    assert len(MODULES) > 50
