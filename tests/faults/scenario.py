"""Fault scenarios as data (after CometBFT's e2e manifests; docs/testing.md): parse and
validate one ``tests/faults/*.toml`` file.

Owns: the file format and every rule a file must obey before anything runs.  A bad file
raises ``ScenarioError`` naming the file and the field (``kill_primary.toml: step[2].node:
...``); nothing is guessed or defaulted silently.

Format (TOML, read with the standard library's tomllib)::

    description = "the primary is killed mid-load; a view change must install view 1"
    nodes = 4             # n >= 4; f = (n-1)//3
    requests = 300        # updates the scenario submits (each a put of its own key)
    window = 30           # optional: updates kept in flight (default 30)
    broker_nodes = 3      # optional: a RabbitMQ cluster of this many nodes with quorum
                          # queues (default 1: the machine's own RabbitMQ)
    [settings]            # optional: mesh.json / ReplicaConfig settings
    checkpoint_interval = 4
    [byzantine]           # optional: node id -> behaviour name(s) (pbft_tasks/core/byzantine.py)
    3 = "silent"
    [[step]]
    after = 100           # fires once this many updates are acknowledged (f+1 replies)
    do = "kill"           # see ACTIONS
    node = 2
    [[step]]
    after = 200
    do = "restart"
    node = 2
    lose_queue = true     # optional, restart/resume/heal only: its queue is purged first
    [expect]              # optional
    view_at_least = 1

Rules checked here:
- only known keys, of the right type, at every level;
- ``settings`` make a valid ReplicaConfig for ``nodes``;
- node ids are in 0..nodes-1; behaviours are known names;
- steps are in order of ``after`` (0..requests); a node is killed/paused/cut only when
  up and restarted/resumed/healed only when it is in that state; ``restart`` with
  ``node = "killed_primary"`` restarts whichever node the last ``kill_primary`` killed;
- at no moment are more than f nodes faulty (Byzantine, down, paused or cut; the node a
  ``kill_primary`` takes counts as one more, since which node it is is known only at run
  time), so the scenario is one PBFT must survive, safely and live;
- no node is still paused or cut at the end (a killed node may stay down);
- ``kill_broker_node`` (kill -9 of the cluster node leading the primary's queue) and
  ``restart_broker_node`` (start the last one killed again) need ``broker_nodes >= 3``,
  and never leave a majority of the cluster down (quorum queues would stop: a
  different test, tests/broker_cluster/); ``restart_broker`` (stop_app of the single
  broker) is for ``broker_nodes = 1`` only;
- ``lose_queue`` only on restart, resume or heal.  A node's durable queue normally
  keeps all it missed, so it catches up by working through it; a lost queue (purged, as
  after losing the broker's disk) leaves state transfer as its only way back.

Timing is in acknowledged updates, not wall-clock time, so one file means the same on
the in-process simulator and on the real mesh (tests/faults/runner.py).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbft_tasks.core.byzantine import BEHAVIOURS as _BEHAVIOURS
from pbft_tasks.core.byzantine import parse_behaviours
from pbft_tasks.core.quorum import max_faulty
from pbft_tasks.core.replica import ReplicaConfig

ACTIONS = ("kill", "restart", "pause", "resume", "cut", "heal", "kill_primary",
           "restart_broker", "kill_broker_node", "restart_broker_node")
BROKER_NODE_ACTIONS = ("kill_broker_node", "restart_broker_node")
NODE_ACTIONS = {"kill", "restart", "pause", "resume", "cut", "heal"}
BEHAVIOURS = tuple(sorted(_BEHAVIOURS))
# Settings shared by mesh.json and the pure core's ReplicaConfig.
CORE_SETTINGS = ("checkpoint_interval", "log_window", "max_batch", "batch_timeout_ticks",
                 "pipeline")
MESH_ONLY_SETTINGS = ("tick_ms",)
KILLED_PRIMARY = "killed_primary"
TOP_KEYS = {"description", "nodes", "requests", "window", "settings", "byzantine", "step",
            "expect", "broker_nodes"}
STEP_KEYS = {"after", "do", "node", "lose_queue"}
RETURNS = ("restart", "resume", "heal")   # the actions that may take lose_queue
EXPECT_KEYS = {"view_at_least", "view_at_most"}
DEFAULT_WINDOW = 30


class ScenarioError(ValueError):
    """A scenario file breaks a rule; the message names the file and the field."""


@dataclass(frozen=True)
class Step:
    after: int
    do: str
    node: int | str | None = None   # an id, KILLED_PRIMARY, or None (kill_primary, broker)
    lose_queue: bool = False        # restart/resume/heal: the node's queue is purged first

    def label(self) -> str:
        label = self.do if self.node is None else f"{self.do} {self.node}"
        return label + (" (queue lost)" if self.lose_queue else "")


@dataclass
class Scenario:
    name: str
    description: str
    nodes: int
    requests: int
    window: int = DEFAULT_WINDOW
    settings: dict = field(default_factory=dict)
    byzantine: dict = field(default_factory=dict)   # node id -> tuple of behaviour names
    steps: list = field(default_factory=list)
    expect: dict = field(default_factory=dict)
    path: Path | None = None
    broker_nodes: int = 1

    @property
    def f(self) -> int:
        return max_faulty(self.nodes)

    def core_settings(self) -> dict:
        return {k: v for k, v in self.settings.items() if k in CORE_SETTINGS}

    def actions(self) -> set[str]:
        return {s.do for s in self.steps}


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: not valid TOML: {exc}") from None
    return parse(data, path.stem, path)


def parse(data: dict, name: str, path: Path | None = None) -> Scenario:
    where = f"{path.name if path else name}"

    def fail(fld: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{where}: {fld}: {msg}")

    def integer(value: Any, fld: str, lo: int, hi: int | None = None) -> int:
        if type(value) is not int:
            raise fail(fld, f"must be an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise fail(fld, f"must be {rng}, got {value}")
        return value

    unknown = set(data) - TOP_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    for required in ("description", "nodes", "requests"):
        if required not in data:
            raise fail(required, "is required")
    if not isinstance(data["description"], str) or not data["description"].strip():
        raise fail("description", "must be a non-empty string")
    n = integer(data["nodes"], "nodes", 4, 64)
    requests = integer(data["requests"], "requests", 1, 100_000)
    window = integer(data.get("window", DEFAULT_WINDOW), "window", 1, 10_000)
    sc = Scenario(name=name, description=data["description"].strip(), nodes=n,
                  requests=requests, window=window, path=path,
                  broker_nodes=integer(data.get("broker_nodes", 1), "broker_nodes", 1, 9))

    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise fail("settings", "must be a table")
    for k, v in settings.items():
        if k not in CORE_SETTINGS + MESH_ONLY_SETTINGS:
            raise fail(f"settings.{k}", f"unknown setting (known: "
                                        f"{', '.join(CORE_SETTINGS + MESH_ONLY_SETTINGS)})")
        integer(v, f"settings.{k}", 0 if k in ("batch_timeout_ticks", "pipeline") else 1)
    sc.settings = dict(settings)
    try:
        ReplicaConfig(n=n, **sc.core_settings())
    except ValueError as exc:
        raise fail("settings", str(exc)) from None

    byz = data.get("byzantine", {})
    if not isinstance(byz, dict):
        raise fail("byzantine", "must be a table of node id = behaviour")
    for key, value in byz.items():
        fld = f"byzantine.{key}"
        try:
            node = int(key)
        except ValueError:
            raise fail(fld, "the key must be a node id") from None
        if not 0 <= node < n or str(node) != key:
            raise fail(fld, f"node must be one of 0..{n - 1}")
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
            raise fail(fld, "must be a behaviour name or a list of them")
        for b in names:
            if b not in BEHAVIOURS:
                raise fail(fld, f"unknown behaviour {b!r} (known: {', '.join(BEHAVIOURS)})")
        try:
            parse_behaviours(names)
        except ValueError as exc:
            raise fail(fld, str(exc)) from None
        sc.byzantine[node] = tuple(names)
    if len(sc.byzantine) > sc.f:
        raise fail("byzantine", f"{len(sc.byzantine)} Byzantine nodes, but n={n} tolerates "
                                f"only f={sc.f}")

    raw_steps = data.get("step", [])
    if not isinstance(raw_steps, list):
        raise fail("step", "must be an array of tables ([[step]])")
    for k, raw in enumerate(raw_steps):
        fld = f"step[{k}]"
        if not isinstance(raw, dict):
            raise fail(fld, "must be a table")
        unknown = set(raw) - STEP_KEYS
        if unknown:
            raise fail(f"{fld}.{sorted(unknown)[0]}", f"unknown key (known: "
                                                      f"{', '.join(sorted(STEP_KEYS))})")
        for required in ("after", "do"):
            if required not in raw:
                raise fail(f"{fld}.{required}", "is required")
        after = integer(raw["after"], f"{fld}.after", 0, requests)
        do = raw["do"]
        if do not in ACTIONS:
            raise fail(f"{fld}.do", f"unknown action {do!r} (known: {', '.join(ACTIONS)})")
        node = raw.get("node")
        if do in NODE_ACTIONS:
            if node is None:
                raise fail(f"{fld}.node", f"{do} needs a node")
            if not (do == "restart" and node == KILLED_PRIMARY):
                node = integer(node, f"{fld}.node", 0, n - 1)
        elif node is not None:
            raise fail(f"{fld}.node", f"{do} takes no node")
        lose = raw.get("lose_queue", False)
        if type(lose) is not bool:
            raise fail(f"{fld}.lose_queue", f"must be true or false, got {lose!r}")
        if lose and do not in RETURNS:
            raise fail(f"{fld}.lose_queue", f"only {', '.join(RETURNS)} can lose the queue")
        if sc.steps and after < sc.steps[-1].after:
            raise fail(f"{fld}.after", f"steps must be in order of 'after' ({after} < "
                                       f"{sc.steps[-1].after})")
        sc.steps.append(Step(after, do, node, lose))
    _check_states(sc, fail)
    _check_broker_nodes(sc, fail)

    expect = data.get("expect", {})
    if not isinstance(expect, dict):
        raise fail("expect", "must be a table")
    for k, v in expect.items():
        if k not in EXPECT_KEYS:
            raise fail(f"expect.{k}", f"unknown expectation (known: {', '.join(sorted(EXPECT_KEYS))})")
        integer(v, f"expect.{k}", 0)
    if expect.get("view_at_least", 0) > expect.get("view_at_most", 1 << 30):
        raise fail("expect", "view_at_least is above view_at_most")
    sc.expect = dict(expect)
    return sc


def _check_states(sc: Scenario, fail) -> None:
    """Play the steps on node states (up/down/paused/cut) and count faults."""
    state = {i: "up" for i in range(sc.nodes)}
    primary_down = False   # a kill_primary victim that is still down

    need = {"restart": "down", "resume": "paused", "heal": "cut"}
    becomes = {"kill": "down", "restart": "up", "pause": "paused", "resume": "up",
               "cut": "cut", "heal": "up"}
    for k, s in enumerate(sc.steps):
        fld = f"step[{k}]"
        if s.do == "kill_primary":
            if primary_down:
                raise fail(f"{fld}.do", "a second kill_primary while the first victim is down "
                                        "(restart it first: node = \"killed_primary\")")
            primary_down = True
        elif s.node == KILLED_PRIMARY:
            if not primary_down:
                raise fail(f"{fld}.node", "no node killed by kill_primary is down")
            primary_down = False
        elif s.do in becomes:
            want = need.get(s.do, "up")
            if state[s.node] != want:
                raise fail(f"{fld}.node", f"cannot {s.do} node {s.node}: it is "
                                          f"{state[s.node]}, not {want}")
            state[s.node] = becomes[s.do]
        faulty = {i for i, st in state.items() if st != "up"} | set(sc.byzantine)
        total = len(faulty) + (1 if primary_down else 0)
        if total > sc.f:
            who = ", ".join(f"{i} ({'byzantine' if i in sc.byzantine and state[i] == 'up' else state[i]})"
                            for i in sorted(faulty))
            if primary_down:
                who += ", the killed primary"
            raise fail(fld, f"{total} faulty nodes at once ({who}), but n={sc.nodes} "
                            f"tolerates only f={sc.f}")
    left = {i: st for i, st in state.items() if st in ("paused", "cut")}
    if left:
        i, st = next(iter(left.items()))
        raise fail("step", f"node {i} is still {st} at the end; add a "
                           f"{'resume' if st == 'paused' else 'heal'} step")


def _check_broker_nodes(sc: Scenario, fail) -> None:
    """Broker-node faults need a cluster and never take its majority."""
    down = 0
    tolerated = (sc.broker_nodes - 1) // 2
    for k, s in enumerate(sc.steps):
        fld = f"step[{k}].do"
        if s.do == "restart_broker" and sc.broker_nodes > 1:
            raise fail(fld, "restart_broker stops the single broker; on a cluster use "
                            "kill_broker_node / restart_broker_node")
        if s.do not in BROKER_NODE_ACTIONS:
            continue
        if sc.broker_nodes < 3:
            raise fail(fld, f"{s.do} needs broker_nodes >= 3 (a cluster), got {sc.broker_nodes}")
        if s.do == "kill_broker_node":
            down += 1
            if down > tolerated:
                raise fail(fld, f"{down} of {sc.broker_nodes} broker nodes down at once: no "
                                f"majority left (at most {tolerated})")
        else:
            if down == 0:
                raise fail(fld, "restart_broker_node, but no broker node is down")
            down -= 1


def load_all(directory: str | Path) -> list[Scenario]:
    return [load(p) for p in sorted(Path(directory).glob("*.toml"))]
