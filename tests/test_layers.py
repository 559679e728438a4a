"""Dependencies point down and never run in a circle: import-linter's contracts in
pyproject.toml (``[tool.importlinter]``), run here so the suite keeps them.

Layers, lowest first: the pure core (``pbft_tasks.core``), the ledger (``ledger``), the
adapters (every other ``pbft_tasks`` module), the mesh side (``mesh``).  import-linter
reads every import of every module, a lazy one inside a function too (it only moves
the moment a dependency is paid), and follows chains through other modules.  Its
``acyclic_siblings`` contract forbids circles between siblings at every depth, which
covers both a circle of modules and a circle that bites at import time through a
package's ``__init__``.  One case no contract type covers is checked here on
import-linter's own import graph (grimp): a module importing the package it sits in,
whose ``__init__`` may be half run at that moment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
ROOTS = ("pbft_tasks", "ledger", "mesh")
CONTRACTS = ("mesh on the adapters on the ledger",
             "the core imports nothing of the project outside itself",
             "no circles between modules or packages")


def own_package_imports(graph) -> list[str]:
    return sorted(f"{m} -> {p}" for m in graph.modules
                  for p in graph.find_modules_directly_imported_by(m) if m.startswith(p + "."))


def test_the_contracts_hold():
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0


def test_no_module_imports_the_package_it_is_in():
    graph = grimp.build_graph(*ROOTS)
    assert "pbft_tasks.celery_app" in graph.find_modules_directly_imported_by("pbft_tasks"), \
        "the graph misses a function-local import (pbft_tasks/__init__.py imports the app lazily)"
    assert own_package_imports(graph) == []


FAKE_PACKAGES = ("pbft_tasks", "pbft_tasks.core", "ledger", "mesh", "mesh.bench")
FAKE_MODULES = {
    "pbft_tasks.core.replica": "def step():\n    import pbft_tasks.node  # lazy, still a dependency\n",
    "pbft_tasks.node": "import mesh.cli\n",
    "ledger.store": "from pbft_tasks.core import replica\nimport ledger\n",
    "mesh.cli": "import mesh.bench.run\n",
    "mesh.bench.run": "from mesh import ops\n",
    "mesh.ops": "from mesh import cli\n",
}


def test_the_checks_can_fail(tmp_path):
    """A made-up project of the same names breaking every rule is caught by the
    project's own configuration."""
    for package in FAKE_PACKAGES:
        folder = tmp_path.joinpath(*package.split("."))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
    for module, text in FAKE_MODULES.items():
        *folders, name = module.split(".")
        tmp_path.joinpath(*folders, f"{name}.py").write_text(text)
    # a process of its own, started in the made-up tree: this one has the real packages
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")
    res = subprocess.run([sys.executable, "-c", code, str(PYPROJECT)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    for name in CONTRACTS:
        assert f"{name} BROKEN" in res.stdout, res.stdout
    assert "pbft_tasks.node -> mesh.cli" in res.stdout            # an adapter imports mesh
    assert "pbft_tasks.core.replica -> pbft_tasks.node" in res.stdout  # the core, lazily
    listing = subprocess.run(
        [sys.executable, "-c", "import grimp, sys; from tests.test_layers import "
         "own_package_imports; print(own_package_imports(grimp.build_graph(*sys.argv[1:])))",
         *ROOTS], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() == "['ledger.store -> ledger']"
