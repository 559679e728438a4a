"""Replica state has owners (docs/architecture.md; after etcd's ``raftLog`` and ``tracker``).

- The batcher (normalcase.py ``Batcher``), the window (checkpoints.py ``Window``), the
  view-change state (viewchange.py ``ViewChangeState``) and the catch-up state
  (catchup.py ``CatchUpState``) and the status exchange's (status.py ``StatusState``) each create their fields in their own ``__init__``, and
  only their own class changes them: no core module assigns, deletes or mutates
  (``append``, ``add``, ``pop``, ``setdefault``, ...) ``<x>.<owner>.<field>`` outside
  that owner's class, directly or through a local name bound to the owner or one of its
  fields.  The sub-protocol mixins read the owners and call their methods.
- ``Replica.__init__`` (with ``_reset_output``, which it calls) creates exactly the
  replica's own fields listed here, and no method of ``Replica`` or of its mixins
  assigns or mutates another field of the replica.
- The log (log.py ``Log``, the window's ``log``) owns the log entries: only ``Log`` and
  ``Entry`` itself write a field of an ``Entry`` (its pre-prepare, votes, ``executed``,
  ``prior``, ``sent_certificates``), whatever the name the entry is reached by; a
  container reached through ``getattr`` is not mutated outside them either (the checker
  could not tell whose it is).
- The owners have ``__slots__``, so no one adds a field to them by assigning it.
- Checked on the AST; the checker is shown to find each kind of violation.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pbft_tasks.core
from pbft_tasks.core.catchup import CatchUpState
from pbft_tasks.core.checkpoints import Window
from pbft_tasks.core.log import Entry, Log
from pbft_tasks.core.normalcase import Batcher
from pbft_tasks.core.replica import Replica, ReplicaConfig
from pbft_tasks.core.status import StatusState
from pbft_tasks.core.viewchange import ViewChangeState

CORE = Path(pbft_tasks.core.__file__).parent
FILES = sorted(CORE.glob("*.py"))

# the replica's attribute -> its owner class
OWNERS = {"batcher": "Batcher", "window": "Window", "vc": "ViewChangeState",
          "catchup": "CatchUpState", "statuses": "StatusState"}
# owners held by an owner: the window's log -> its class
NESTED_OWNERS = {"log": "Log"}
# the fields of a log entry, written only by the log and the entry itself
ENTRY_FIELDS = set(Entry.__slots__) - {"seq"}
ENTRY_WRITERS = {"Log", "Entry"}
# what Replica.__init__ may create: who it is, its view, what it executed, its clients
# and clock, the owners, and the output of the call in progress (_reset_output)
OWN_FIELDS = {"id", "cfg", "n", "f", "quorum", "need_prepares", "view", "last_exec", "head",
              "clients", "now", "stimuli", "awaiting", "admits", *OWNERS,
              "_executes", "_messages", "_evidences"}
REPLICA_CLASSES = {"Replica", "NormalCase", "Checkpoints", "CatchUp", "ViewChanges", "Collector",
                   "StatusExchange"}
MUTATORS = {"append", "extend", "insert", "add", "update", "discard", "remove", "pop",
            "popitem", "setdefault", "clear", "sort", "reverse"}


def chain(node: ast.AST) -> list[str]:
    """The attribute names from the root of ``node``, subscripts skipped:
    ``self.vc.view_changes[v][s]`` -> ['self', 'vc', 'view_changes']."""
    names = []
    while True:
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            names.append(node.id if isinstance(node, ast.Name) else "?")
            return names[::-1]


def targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.Tuple, ast.List)):
        return [t for e in node.elts for t in targets(e)]
    if isinstance(node, ast.Starred):
        return targets(node.value)
    return [node]


def aliases(func: ast.AST) -> dict[str, list[str]]:
    """Local names bound to an attribute chain in ``func``: ``w = self.window`` and
    ``b, w = self.batcher, self.window`` bind ``w`` to ['self', 'window']."""
    out: dict[str, list[str]] = {}
    for node in ast.walk(func):
        if not isinstance(node, ast.Assign):
            continue
        for t in node.targets:
            pairs = [(t, node.value)]
            if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(t.elts, node.value.elts))
            for name, value in pairs:
                if isinstance(name, ast.Name) and isinstance(value, (ast.Attribute, ast.Subscript)):
                    out[name.id] = chain(value)
                elif (isinstance(name, ast.Name) and isinstance(value, ast.Call)
                      and isinstance(value.func, ast.Name) and value.func.id == "getattr"
                      and value.args):
                    out[name.id] = chain(value.args[0]) + ["<getattr>"]
    return out


def writes(tree: ast.AST):
    """(class, function, chain, line, call) of every assignment, deletion and mutating
    call (``call`` True; ``chain`` is its receiver) in the methods of ``tree``'s classes
    (module-level functions have class None), local aliases resolved."""
    scopes = [(c.name, f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
              for f in c.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    scopes += [(None, f) for f in getattr(tree, "body", [])
               if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for cls, func in scopes:
        alias = aliases(func)
        for node in ast.walk(func):
            call = False
            if isinstance(node, ast.Assign):
                found = [t for tt in node.targets for t in targets(tt)]
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                found = [node.target]
            elif isinstance(node, ast.Delete):
                found = [t for tt in node.targets for t in targets(tt)]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in MUTATORS):
                found, call = [node.func.value], True
            else:
                continue
            for t in found:
                if isinstance(t, ast.Name):
                    continue  # a local variable
                names = chain(t)
                if names[0] in alias:
                    names = alias[names[0]] + names[1:]
                yield cls, func.name, names, node.lineno, call


def violations(source: str, filename: str = "<src>") -> list[str]:
    out = []
    for cls, func, names, line, call in writes(ast.parse(source)):
        where = f"{filename}:{line} {cls}.{func}"
        for k in range(1, len(names) - 1):
            owner = OWNERS.get(names[k]) or NESTED_OWNERS.get(names[k])
            if owner is not None and cls != owner:
                out.append(f"{where} changes {'.'.join(names)}, a field of {owner}")
        if cls not in ENTRY_WRITERS and any(n in ENTRY_FIELDS or n == "<getattr>" for n in names[1:]):
            out.append(f"{where} changes {'.'.join(names)}, a log entry's field (only the Log "
                       f"changes entries)")
        if cls in REPLICA_CLASSES and names[0] == "self" and len(names) > 1:
            if names[1] not in OWN_FIELDS:
                out.append(f"{where} changes self.{names[1]}, not a field of Replica "
                           f"(give it an owner, or list it as the replica's own)")
            elif (names[1] in OWNERS and len(names) == 2 and not call  # a call is the owner's method
                  and (cls, func) != ("Replica", "__init__")):
                out.append(f"{where} replaces the owner self.{names[1]}")
    return out


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_module_changes_another_owners_fields(path):
    assert violations(path.read_text(), path.name) == []


def test_replica_init_creates_only_its_own_fields():
    tree = ast.parse((CORE / "replica.py").read_text())
    replica = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "Replica")
    created = set()
    for f in replica.body:
        if isinstance(f, ast.FunctionDef) and f.name in ("__init__", "_reset_output"):
            for node in ast.walk(f):
                for t in (node.targets if isinstance(node, ast.Assign) else
                          [node.target] if isinstance(node, ast.AnnAssign) else []):
                    for e in targets(t):
                        if isinstance(e, ast.Attribute) and chain(e)[:1] == ["self"] and len(chain(e)) == 2:
                            created.add(e.attr)
    assert created == OWN_FIELDS
    r = Replica(1, ReplicaConfig(n=4))
    assert set(vars(r)) == OWN_FIELDS
    assert {name: type(getattr(r, name)).__name__ for name in OWNERS} == OWNERS


@pytest.mark.parametrize("owner", [Batcher, Window, ViewChangeState, CatchUpState, Log, StatusState],
                         ids=lambda c: c.__name__)
def test_owners_have_slots(owner):
    """No field can be added to an owner by assigning it from outside."""
    r = Replica(1, ReplicaConfig(n=4))
    obj = r.window.log if owner is Log else r.__dict__[next(k for k, v in OWNERS.items()
                                                           if v == owner.__name__)]
    assert not hasattr(obj, "__dict__")
    with pytest.raises(AttributeError):
        obj.not_a_field = 1


@pytest.mark.parametrize("body, found", [
    ("self.batcher.pending = []", "self.batcher.pending, a field of Batcher"),
    ("self.vc.attempts += 1", "self.vc.attempts, a field of ViewChangeState"),
    ("self.window.log[3] = None", "self.window.log, a field of Window"),
    ("del self.window.log[3]", "self.window.log, a field of Window"),
    ("self.catchup.helped.pop((1, 2))", "self.catchup.helped, a field of CatchUpState"),
    ("w = self.window\n        w.held.append(1)", "self.window.held, a field of Window"),
    ("b, w = self.batcher, self.window\n        b.next_seq = 2", "self.batcher.next_seq"),
    ("vcs = self.vc.view_changes\n        vcs[1] = {}", "self.vc.view_changes"),
    ("self.pending = []", "self.pending, not a field of Replica"),
    ("self.batcher = None", "replaces the owner self.batcher"),
    ("self.vc.view_changes.setdefault(1, {})[0] = None", "self.vc.view_changes"),
    ("self.window.log._entries[3] = None", "self.window.log._entries, a field of Log"),
    ("entry = self.window.entry(1)\n        entry.preprepare = None", "a log entry's field"),
    ("e = Entry(1)\n        e.prior = None", "a log entry's field"),
    ("self.window.log[3].commits[1] = None", "a log entry's field"),
    ("self.window.entry(1).prepares.pop(2)", "a log entry's field"),
    ("votes = getattr(entry, kind)\n        votes[1] = None", "a log entry's field"),
    ("e = self.window.log.get(1)\n        e.sent_certificates.add('x')", "a log entry's field"),
])
def test_the_checker_finds_a_module_changing_another_owners_fields(body, found):
    src = f"class NormalCase:\n    def _on_request(self, req, cause):\n        {body}\n"
    found_all = violations(src, "normalcase.py")
    assert any(found in v for v in found_all), found_all


def test_the_checker_lets_an_owner_change_its_own_fields():
    src = ("class Batcher:\n    def cut(self):\n        self.pending = []\n        self.next_seq += 1\n"
           "class NormalCase:\n    def _propose(self):\n        self.batcher.cut()\n"
           "        entry = self.window.entry(1)\n"
           "        self.window.log.add_vote(None)\n        self.vc.add(None)\n"
           "class Log:\n    def put(self, entry):\n        self._entries[entry.seq] = entry\n"
           "        entry.executed = True\n")
    assert violations(src) == []
