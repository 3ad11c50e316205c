"""Imports between ptune's own modules run one way, read from the source (lazy imports inside functions too):

- no cycle between modules (a cycle is two modules that can only be understood, and changed, together);
- a family module (`ptune/families/<family>.py`) never looks families up in `ptune.families.registry`: the
  registry knows the families, not the other way round;
- code outside `ptune/families/` never imports one family's module: `ptune.families.registry` and
  `ptune.families.base` are the generic entry points;
- no module uses another module's private names (`from ptune.x import _y`, `module._y`);
- the runtime (training, serving, data, model, inference) never imports the benchmark code, nor tools/;
- every imported ptune module exists, and no module is over 420 lines.
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

from tests.imports import imports

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ptune"
# Entry points of ptune.families for the rest of ptune; every other module there is one family's.
FAMILY_ENTRY_POINTS = {"ptune.families", "ptune.families.base", "ptune.families.registry"}
# Stages the benchmark code measures: they must run without it.
RUNTIME_STAGES = ("config", "data", "families", "infer", "io", "model", "score", "serve", "train")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in SOURCES.items()}


def ancestors(name: str) -> set[str]:
    """The packages Python imports before module `name` runs (`ptune`, `ptune.train` for ptune.train.recipe):
    an import of one of them (`from ptune import __version__`) adds nothing to the graph."""
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def imported_modules(name: str) -> dict[str, int]:
    """The ptune modules `name` imports (`from ptune.a import b` is ptune.a.b where that is a module), each
    with the line of its first import; its own ancestor packages left out."""
    found: dict[str, int] = {}
    for i in imports(SOURCES[name], TREES[name]):
        if not i.module.startswith("ptune"):
            continue
        targets = [f"{i.module}.{n}" if f"{i.module}.{n}" in SOURCES else i.module for n in i.names or [""]]
        for target in targets:
            if target in SOURCES and target != name and target not in ancestors(name):
                found.setdefault(target, i.line)
    return found


GRAPH = {name: imported_modules(name) for name in SOURCES}


def where(name: str, target: str) -> str:
    return f"{SOURCES[name].relative_to(REPO)}:{GRAPH[name][target]} imports {target}"


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [closed_path(graph, component) for component in components]


def closed_path(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first inside the component)."""
    start, members = component[0], set(component)
    previous = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def test_cycles_finds_each_component_once():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"f": 1}, "f": {"e": 1}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle_between_ptune_modules():
    found = [
        " -> ".join(cycle) + "  (" + "; ".join(where(a, b) for a, b in pairwise(cycle)) + ")"
        for cycle in cycles(GRAPH)
    ]
    assert found == []


def is_family_module(name: str) -> bool:
    return name.startswith("ptune.families.") and name not in FAMILY_ENTRY_POINTS


def test_family_modules_never_import_the_registry():
    found = [
        where(name, "ptune.families.registry")
        for name in SOURCES
        if is_family_module(name) and "ptune.families.registry" in GRAPH[name]
    ]
    assert found == []


def test_generic_code_never_imports_a_family_module():
    found = [
        where(name, target)
        for name in SOURCES
        if not name.startswith("ptune.families")
        for target in GRAPH[name]
        if is_family_module(target)
    ]
    assert found == []


def private(attribute: str) -> bool:
    return attribute.startswith("_") and not attribute.startswith("__")


def private_uses(name: str) -> list[str]:
    """`from ptune.x import _y` and `x._y` (x bound to another ptune module) in module `name`."""
    path, found = SOURCES[name].relative_to(REPO), []
    bound: dict[str, str] = {}  # local name -> the ptune module it is bound to
    for i in imports(SOURCES[name], TREES[name]):
        if not i.module.startswith("ptune"):
            continue
        if not i.names:
            bound[i.alias or "ptune"] = i.module if i.alias else "ptune"
        for n in i.names:
            if f"{i.module}.{n}" in SOURCES:
                bound[n] = f"{i.module}.{n}"
            elif private(n) and i.module != name:
                found.append(f"{path}:{i.line} imports {i.module}.{n}")
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = dotted(node.value)
            if owner and owner.split(".")[0] in bound:
                head, *rest = owner.split(".")
                module = ".".join([bound[head], *rest])
                if module in SOURCES and module != name:
                    found.append(f"{path}:{node.lineno} uses {module}.{node.attr}")
    return found


def dotted(node: ast.expr) -> str | None:
    """`a.b.c` of an attribute chain on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = dotted(node.value)
        return f"{owner}.{node.attr}" if owner else None
    return None


def test_no_module_uses_another_modules_private_names():
    assert [use for name in SOURCES for use in private_uses(name)] == []


def test_the_runtime_never_imports_the_benchmarks():
    """ptune.bench measures training and serving; nothing they run may need it (nor tools/, tests/: see
    test_packaging)."""
    runtime = [n for n in SOURCES if n.split(".")[1:2] and n.split(".")[1] in RUNTIME_STAGES]
    assert len(runtime) > 40
    found = [where(n, t) for n in runtime for t in GRAPH[n] if t.startswith("ptune.bench")]
    assert found == []


def test_every_ptune_import_names_a_module_that_exists():
    """A module moved without its importers (a lazy import inside a function fails only when it runs)."""
    missing = [
        f"{SOURCES[name].relative_to(REPO)}:{i.line} imports {i.module}"
        for name in SOURCES
        for i in imports(SOURCES[name], TREES[name])
        if i.module.split(".")[0] == "ptune" and i.module not in SOURCES
    ]
    assert missing == []


MAX_LINES = 420  # ~400: a module a reader takes in at once


def test_no_module_is_longer_than_a_reader_takes_in():
    long = {
        str(path.relative_to(REPO)): n
        for path in SOURCES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
