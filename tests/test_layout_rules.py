"""Layout rules of the numerics layer (issue 12): ``scglmm._core`` imports nothing of scglmm outside
itself, and the imports between its modules have no cycle (one dependency direction)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "scglmm" / "_core"
PACKAGE = "scglmm._core"


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of the modules (or of the names in them) imported by a module, including
    imports under ``TYPE_CHECKING`` and inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of ``scglmm._core`` it imports (a name imported from a package counts
    as its submodule when there is one)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = {m for m in _imports(name, path) if m in mods and m != name}
        # importing a submodule runs its packages' __init__ first: not an edge of the layout
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def test_the_rules_see_every_module() -> None:
    mods = _modules()
    assert f"{PACKAGE}._api" in mods and f"{PACKAGE}.kernels._block" in mods
    assert f"{PACKAGE}.kernels._optimise" in _graph()[f"{PACKAGE}.kernels._block"]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_core_imports_nothing_of_scglmm_outside_core(name: str) -> None:
    outside = sorted(
        m for m in _imports(name, _modules()[name]) if m.split(".")[0] == "scglmm" and not m.startswith(PACKAGE)
    )
    assert outside == [], f"{name} imports {outside}"


def test_no_import_cycles_within_core() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
