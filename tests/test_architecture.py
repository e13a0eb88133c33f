"""The project's layering, read from the import statements of its sources.

The core (`lanmt_cli/`) decodes through the interface it owns (`lanmt_cli.decoding`,
`lanmt_cli.registry`) and never imports the built-in decoders (`decoders/`, installed as
`lanmt_cli.decoders`), which are found through entry points like any plugin's. Training code
lives in `trainers/`: the core library does not import it (only the `train` command does).
No two modules import each other, directly or round a longer loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the package it installs as (pyproject.toml's package-dir)
FOLDERS = {
    "lanmt_cli": "lanmt_cli",
    "decoders": "lanmt_cli.decoders",
    "trainers": "lanmt_cli.trainers",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    """Every module of the package by its installed name."""
    return {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every name an import statement of `path` may load, at any depth (function bodies too):
    `from a.b import c` gives a.b and a.b.c, since c may be a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    mods = sources()
    return {m: {d for d in imports(p) if d in mods and d != m} for m, p in mods.items()}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_only_the_built_in_decoders_import_each_other():
    """Nothing outside decoders/ imports them: the core, trainers and commands use
    lanmt_cli.decoding and lanmt_cli.registry."""
    offenders = {
        m: sorted(d for d in deps if within(d, "lanmt_cli.decoders"))
        for m, deps in project_graph().items()
        if not within(m, "lanmt_cli.decoders")
    }
    assert {m: d for m, d in offenders.items() if d} == {}
    # and the interface is where the core finds it
    graph = project_graph()
    assert "lanmt_cli.registry" in graph["lanmt_cli.translator"]
    assert "lanmt_cli.decoding" in graph["lanmt_cli.registry"]


def test_the_core_library_does_not_import_training_code():
    allowed = {"lanmt_cli.commands.train"}  # the command that trains
    offenders = {
        m: sorted(d for d in deps if within(d, "lanmt_cli.trainers"))
        for m, deps in project_graph().items()
        if not within(m, "lanmt_cli.trainers") and m not in allowed
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_modules_import_each_other():
    assert cycles(project_graph()) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
