"""Dependencies point down and never run in a circle.

Layers, lowest first: the pure core (``pbft_tasks.core``), the ledger (``ledger``), the
adapters (every other ``pbft_tasks`` module: Celery tasks, signing, transports, the node
runtime, mesh configuration and keys, metrics), then the mesh side (``mesh``: command
line, OpenStack side, benches, audit, operations).  A module may import its own layer
or a lower one, never a higher one.

Read from the source with ``ast``, every ``import`` statement of every module counts,
including those inside functions: a lazy import is still a dependency, it only moves the
moment it is paid.  Two graphs are checked for circles:
- the dependency graph (all imports): no two project modules may depend on each other,
  directly or through others;
- the import-time graph (imports that run when a module is imported, plus the packages
  Python runs first: importing ``a.b.c`` from outside ``a.b`` executes ``a/b/__init__.py``).
  A circle here is the one that bites: a module asked for a name while half initialised.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ledger", "pbft_tasks", "mesh")
LAYERS = ("core", "ledger", "adapters", "mesh")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def layer(module: str) -> str:
    if module == "pbft_tasks.core" or module.startswith("pbft_tasks.core."):
        return "core"
    if module.split(".")[0] == "ledger":
        return "ledger"
    if module.split(".")[0] == "pbft_tasks":
        return "adapters"
    return "mesh"


def _project_module(name: str) -> str | None:
    """The project module NAME denotes (a module, or the package an attribute is of)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported project module, line, runs at import time) for each import of MODULE."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
                continue
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(child, False)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _project_module(alias.name)
                    if target:
                        found.append((target, child.lineno, at_import))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = module.split(".") if is_pkg else module.split(".")[:-1]
                    parts = parts[:len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                for alias in child.names:
                    target = _project_module(f"{base}.{alias.name}") or _project_module(base)
                    if target:
                        found.append((target, child.lineno, at_import))
            visit(child, at_import)

    visit(tree, True)
    return [(t, line, now) for t, line, now in found if t != module]


IMPORTS = {m: _imports(m) for m in MODULES}


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def dependency_graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in IMPORTS[m]} for m in MODULES}


def import_time_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        own = set(_ancestors(m)) | {m}
        edges = set()
        for target, _, now in IMPORTS[m]:
            if not now:
                continue
            edges.add(target)
            edges.update(a for a in _ancestors(target) if a not in own and a in MODULES)
        graph[m] = edges - {m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_scan_sees_the_project():
    """Guards the test itself: it found the modules and their imports."""
    assert {"pbft_tasks.core.replica", "ledger.store", "pbft_tasks.celery_app", "mesh.cli",
            "pbft_tasks.topology"} <= set(MODULES)
    deps = dependency_graph()
    assert "pbft_tasks.core.messages" in deps["pbft_tasks.signing"]
    assert "pbft_tasks.core.chain" in deps["ledger.memory"]
    # a function-local import is a dependency (pbft_tasks/__init__.py imports the app lazily)
    assert "pbft_tasks.celery_app" in deps["pbft_tasks"]
    assert "pbft_tasks.celery_app" not in import_time_graph()["pbft_tasks"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    mine = LAYERS.index(layer(module))
    wrong = sorted({f"line {line}: {target} ({layer(target)})" for target, line, _ in IMPORTS[module]
                    if LAYERS.index(layer(target)) > mine})
    assert not wrong, f"{module} ({layer(module)}) imports a higher layer: {wrong}"


def test_no_dependency_circle():
    assert cycles(dependency_graph()) == []


def test_no_import_time_circle():
    assert cycles(import_time_graph()) == []


def test_the_checks_can_fail():
    """A circle and an upward import made up here are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("pbft_tasks.core.replica") == "core" and layer("pbft_tasks.topology") == "adapters"
    assert LAYERS.index(layer("mesh.cli")) > LAYERS.index(layer("ledger.store"))
