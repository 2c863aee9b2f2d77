"""The package's dependency rule, read from the imports of every module (docs/layout.md).

Layers, lowest first; a module may import modules of its own layer or below, never above:

0. ``scglmm._core`` (numerics on plain arrays: kernels, array API, inference, count access)
1. ``scglmm._logging``, ``scglmm._formula``, ``scglmm._layout``, ``scglmm._inputs``, ``scglmm.datasets``
2. ``scglmm.get``
3. ``scglmm.tl``, ``scglmm.pl``
4. ``scglmm.cli``, ``scglmm.__main__`` and the package's ``__init__``

Only the command line and the package's ``__init__`` import ``scglmm.tl``, and the graph of
imports between modules (module level and inside functions) has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "scglmm"

LAYERS = {
    "scglmm._core": 0,
    "scglmm._logging": 1,
    "scglmm._formula": 1,
    "scglmm._layout": 1,
    "scglmm._inputs": 1,
    "scglmm.datasets": 1,
    "scglmm.get": 2,
    "scglmm.tl": 3,
    "scglmm.pl": 3,
    "scglmm.cli": 4,
    "scglmm.__main__": 4,
    "scglmm": 4,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The scglmm modules that module ``name`` imports (anywhere in its body)."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "scglmm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                root = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{root}.{node.module}" if node.module else root
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "scglmm":
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            found |= set(subs) if len(subs) == len(node.names) else {mod, *subs}
    found.discard(name)
    return {m for m in found if m in MODULES}


def _layer(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


GRAPH = {name: _imports(name) for name in MODULES}


def test_every_module_has_a_layer():
    for name in MODULES:
        assert any(name == k or name.startswith(k + ".") for k in LAYERS), f"{name}: add it to LAYERS"


def test_imports_point_down():
    wrong = [(a, b) for a, deps in GRAPH.items() for b in deps if _layer(b) > _layer(a)]
    assert wrong == [], f"modules importing a layer above them: {wrong}"


def test_core_imports_only_core():
    wrong = [(a, b) for a, deps in GRAPH.items() if a.startswith("scglmm._core") for b in deps]
    wrong = [(a, b) for a, b in wrong if not b.startswith("scglmm._core")]
    assert wrong == []


def test_only_cli_and_package_import_tl():
    importers = {a for a, deps in GRAPH.items() for b in deps if b == "scglmm.tl" or b.startswith("scglmm.tl.")}
    importers = {a for a in importers if not a.startswith("scglmm.tl")}
    assert importers <= {"scglmm", "scglmm.cli", "scglmm.__main__"} | {m for m in MODULES if m.startswith("scglmm.cli")}


def test_no_cycles():
    # a package's __init__ re-exports its own modules: edges from a package to its submodules are
    # the package's namespace, not a dependency, and are left out
    graph = {a: {b for b in deps if not (_is_package(a) and b.startswith(a + "."))} for a, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_rule_is_checked_on_real_imports():
    # the reader finds relative imports at any depth (guards against a test that cannot fail)
    assert "scglmm._core._errors" in GRAPH["scglmm._layout"]
    assert "scglmm._layout" in GRAPH["scglmm._inputs"]
