"""Test support: the import statements of a source file, read from its syntax tree (never executed), lazy imports
inside functions included. tests/unit/test_packaging.py checks the distributions and folders they name,
tests/unit/test_imports.py the direction of the imports between ptune's own modules."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """One imported module: `import a.b as c` → Import("a.b", (), 1, "c"); `from a.b import x, y` →
    Import("a.b", ("x", "y"), 1, None). `line` is where the statement starts."""

    module: str
    names: tuple[str, ...]
    line: int
    alias: str | None = None


def imports(path: Path, tree: ast.Module | None = None) -> list[Import]:
    """Every absolute import in `path` (relative ones are not used in this repository), in file order."""
    found = []
    for node in ast.walk(tree or ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno, alias.asname) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append(Import(node.module, tuple(alias.name for alias in node.names), node.lineno))
    return sorted(found, key=lambda i: i.line)


def top_level_names(path: Path) -> set[str]:
    """The first component of every module `path` imports (`torch`, `ptune`, `tools`, ...)."""
    return {i.module.split(".")[0] for i in imports(path)}
