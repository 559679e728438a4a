"""The core does no I/O and is deterministic (docs/architecture.md, "The parts").

- No module in pbft_tasks/core imports a broker, database, crypto, clock, randomness,
  socket, thread or OS module (checked on the AST, so a lazy import inside a function
  counts too, and so does ``__import__`` / ``importlib``).
- Two runs of the same Cluster script return identical action lists, in this process
  and in a process with another hash seed.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pbft_tasks.core
from pbft_tasks.core.actions import Broadcast, Evidence, Execute, Persist, Send, SendClient
from pbft_tasks.core.messages import to_wire
from pbft_tasks.core.sim import Cluster

CORE = Path(pbft_tasks.core.__file__).parent
FORBIDDEN = {"celery", "kombu", "sqlite3", "sqlitedict", "nacl", "ray", "time", "random",
             "socket", "redis", "os", "threading", "oslo_messaging", "importlib",
             "asyncio", "subprocess", "multiprocessing", "datetime", "secrets", "uuid",
             "signal", "select", "selectors", "logging", "io", "pathlib", "shutil"}
FILES = sorted(CORE.glob("*.py"))


def imported_modules(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("__import__", "exec", "eval", "open")):
            found.append(f"<call {node.func.id}>")
    return found


def test_core_files_are_found():
    names = {p.name for p in FILES}
    assert {"messages.py", "replica.py", "normalcase.py", "checkpoints.py", "catchup.py",
            "viewchange.py", "sim.py", "quorum.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_core_imports_no_io(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [m for m in imported_modules(tree)
           if m.startswith("<call") or m.split(".")[0] in FORBIDDEN]
    assert bad == [], f"{path.name} imports {bad}"


def test_import_checker_sees_lazy_and_aliased_imports():
    src = ("def f():\n    import time as t\n    from os import path\n"
           "    __import__('random')\n")
    found = imported_modules(ast.parse(src))
    assert found == ["time", "os", "<call __import__>"]


# -- determinism -----------------------------------------------------------------

def encode(action) -> dict:
    """A canonical, order-independent form of an action (records sorted by key)."""
    def msg(m):
        return to_wire(m)
    if isinstance(action, Persist):
        body = {"records": {k: action.records[k] for k in sorted(action.records)}}
    elif isinstance(action, Execute):
        body = {"seq": action.seq, "block": action.block,
                "cert": [msg(c) for c in action.certificate]}
    elif isinstance(action, Send):
        body = {"to": action.to, "msg": msg(action.msg)}
    elif isinstance(action, Broadcast):
        body = {"msg": msg(action.msg)}
    elif isinstance(action, SendClient):
        body = {"client": action.client, "msg": msg(action.msg)}
    elif isinstance(action, Evidence):
        body = {"sender": action.sender, "reason": action.reason, "detail": action.detail}
    else:  # pragma: no cover - a new action type needs a line here
        raise AssertionError(f"unknown action {action!r}")
    return {"kind": type(action).__name__, "cause": action.cause, **body}


class Recorder(Cluster):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.trace: list = []

    def _apply(self, i, actions):
        self.trace.append([i, [encode(a) for a in actions]])
        super()._apply(i, actions)


def script() -> list:
    """A fixed script with batching, checkpoints, a crash, duplicates, a reorder, a
    drop, retransmission and a Byzantine replica."""
    from pbft_tasks.core.messages import Commit, Prepare
    c = Recorder(4, checkpoint_interval=2, log_window=4, max_batch=2,
                 batch_timeout_ticks=1, retransmit_ticks=3)
    c.byzantine.add(3)
    for ts in range(1, 6):
        c.request("a", ts, f"k{ts}", ts)
        c.request("b", ts, "shared", {"v": ts}, to=ts % 3)
    c.deliver(0)
    c.duplicate(0)
    c.network.reverse()
    for _ in range(5):
        c.deliver(0)
    c.drop(0)
    c.inject(1, Prepare(0, 1, "ab" * 32, 3))
    c.inject(2, Commit(0, 1, "cd" * 32, 3))
    c.crash(2)
    c.stabilize()
    c.restart(2)
    c.run()
    c.tick(4)
    c.request("a", 3, "k3", 3)  # a retransmission
    c.run()
    return c.trace


def test_two_runs_give_identical_actions():
    first, second = script(), script()
    assert len(first) > 50
    assert first == second


def test_actions_do_not_depend_on_the_hash_seed():
    """Set iteration order of strings changes with PYTHONHASHSEED; the actions must not."""
    here = json.dumps(script(), sort_keys=True)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]);"
            "from core.test_purity import script;"
            "print(json.dumps(script(), sort_keys=True))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    tests_dir = str(Path(__file__).parent.parent)
    out = subprocess.run([sys.executable, "-c", code, tests_dir], env=env,
                         capture_output=True, text=True, check=True,
                         cwd=str(CORE.parent.parent))
    assert out.stdout.strip() == here
