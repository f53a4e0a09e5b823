"""The package's layers, checked from its source: no module imports another that (directly or
through others) imports it back, and no layer imports one above it.

Layers, bottom to top: the top-level helpers (errors, files, units, utils, runtime, _deps) <
``data`` < ``model`` < ``simulation`` < ``train`` < ``analysis`` < ``cli``. Imports inside
functions count too: a lazy import hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mf_lightning"
LAYERS = ["data", "model", "simulation", "train", "analysis", "cli"]
BASE = {"errors", "files", "units", "utils", "runtime", "_deps"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> Dict[str, Set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from pkg import name`: the module pkg.name if there is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # an attribute path: its module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # the package's public API (mf_lightning/__init__): above everything
    if parts[1] in BASE:
        return -1
    return LAYERS.index(parts[1])


def test_no_import_cycles():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"modules importing each other: {cycles}"


def test_no_layer_imports_a_layer_above_it():
    graph = import_graph()
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if layer_of(t) > layer_of(m) and not (layer_of(m) == -1 and t == "mf_lightning._deps"))
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_is_a_package(layer):
    assert (PACKAGE / layer / "__init__.py").is_file()


def test_every_cli_module_is_a_console_script_named_after_it():
    """A tool is ``mf_lightning/cli/<tool>.py`` with a ``main`` and the console script
    ``mf-<tool>``: a new tool without its script line (or a script pointing elsewhere) fails here."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {}
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("main", "cli")]
        if path.stem.startswith("_") or not mains or path.stem == "demo":
            continue
        entry = "cli" if any(n.name == "cli" for n in mains) else "main"
        expected[f"mf-{path.stem}"] = f"mf_lightning.cli.{path.stem}:{entry}"
    assert scripts == expected
