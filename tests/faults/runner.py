"""One runner for the fault scenarios (tests/faults/*.toml, format in scenario.py): it
plays a file on a backend -- the in-process simulator (sim_backend.py) or 4+ real
Celery workers on RabbitMQ (mesh_backend.py) -- and checks what PBFT promises.

Theory of operation.  The runner keeps ``window`` updates in flight (each a put of a
key of its own) and counts acknowledgements (f+1 matching replies).  A step fires as
soon as ``after`` updates are acknowledged, so faults land mid-load.  After the last
update it keeps the mesh going (a trickle of probe updates while something still has to
recover: a view change needs requests, a lagging node needs fresh checkpoints) until
every recovery is measured and the honest live nodes agree, then checks.

Checked for every scenario, on both backends:
- every update is acknowledged (the mesh as a whole stays live);
- every honest live node ends in one view: a node that came back takes part again
  (PBFT gives a replica that moved to a higher view alone no way back);
- safety: every honest ledger (live or down) is a prefix of one chain -- the block at
  each of its heights has the hash the longest honest chain has there;
- no acknowledged update is lost: each acknowledged key reads back with its value on
  every honest node that is up at the end, and those nodes have one height and head;
- liveness after each fault, measured in the backend's unit (ticks or seconds):
  kill_primary -> the first update acknowledged in a newer view; restart / resume /
  heal -> the node reaches the height the others had when it came back (by state
  transfer, blocks installed, when the step says ``lose_queue``); broker
  restart -> first acknowledgement, and every node at the height of the moment the
  broker came back; kill_broker_node -> first acknowledgement; restart_broker_node ->
  every live node at the height of the moment the node was back in the cluster;
- the file's ``[expect]``: ``view_at_least`` / ``view_at_most`` for every honest live node.

Results (outcome, recovery times, blocks installed by state transfer) are printed and,
with ``HDPBF_FAULTS_REPORT=path`` or ``--json path``, merged into a JSON report keyed
``<backend>/<scenario>``.

    python -m tests.faults.runner tests/faults/*.toml [--json report.json]   # simulator
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbft_tasks.core.quorum import primary

from .scenario import KILLED_PRIMARY, Scenario, load

HERE = Path(__file__).parent
REPORT_ENV = "HDPBF_FAULTS_REPORT"


class ScenarioFailed(AssertionError):
    """A scenario ran but a property did not hold (the message says which and where)."""


@dataclass
class Recovery:
    step: str                 # the step's label, e.g. "kill_primary"
    measure: str              # what is measured, e.g. "kill -> first commit in view 1"
    kind: str                 # new_view | catch_up | first_commit | all_caught_up
    node: int | None
    started: float
    target: int = 0           # height to reach (catch_up, all_caught_up)
    old_view: int = 0
    value: float | None = None

    @property
    def done(self) -> bool:
        return self.value is not None


@dataclass
class Outcome:
    scenario: str
    backend: str
    unit: str
    ok: bool = False
    error: str | None = None
    acknowledged: int = 0
    probes: int = 0
    recoveries: list = field(default_factory=list)
    installed: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    duration: float = 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["recoveries"] = [{"step": r.step, "measure": r.measure, "node": r.node,
                            "value": None if r.value is None else round(r.value, 3)}
                           for r in self.recoveries]
        return d

    def lines(self) -> list[str]:
        head = (f"[{self.backend}] {self.scenario}: {'ok' if self.ok else 'FAILED'} "
                f"({self.acknowledged} acknowledged, {self.probes} probes, "
                f"{self.duration:.1f} {self.unit})")
        out = [head]
        for r in self.recoveries:
            v = "not reached" if r.value is None else f"{r.value:.2f} {self.unit}"
            out.append(f"    {r.measure}: {v}")
        if self.installed:
            out.append(f"    blocks installed by state transfer: {self.installed}")
        if self.final:
            out.append(f"    final: {self.final}")
        if self.error:
            out.append(f"    error: {self.error}")
        return out


class Runner:
    def __init__(self, scenario: Scenario, backend: Any, limit: float | None = None,
                 probe_chunk: int | None = None):
        self.sc = scenario
        self.b = backend
        self.limit = limit if limit is not None else getattr(backend, "time_limit", 20_000)
        self.out = Outcome(scenario.name, backend.name, backend.unit)
        self.expected: dict[str, Any] = {}
        self.inflight: list = []
        self.sent = 0
        self.killed_primary: int | None = None
        self.lost_queue: set[int] = set()   # nodes that must catch up by state transfer
        k = scenario.settings.get("checkpoint_interval", 64)
        self.probe_chunk = probe_chunk or max(1, min(scenario.window, k))

    # -- the run -----------------------------------------------------------------------
    def run(self) -> Outcome:
        t0 = self.b.now()
        try:
            self.b.start()
            self._load()
            self._settle()
            self._check()
            self.out.ok = True
        except AssertionError as exc:  # ScenarioFailed, or a backend's own check
            self.out.error = str(exc) + self._diagnosis()
        except Exception as exc:  # e.g. a worker that does not come back: still reported
            self.out.error = (f"{self.sc.name} on {self.b.name}: {type(exc).__name__}: {exc}"
                              + self._diagnosis())
        finally:
            self.out.duration = self.b.now() - t0
            try:
                self.out.installed = self.b.installed()
            except Exception as exc:  # a node that cannot answer any more
                self.out.installed = {"error": repr(exc)}
            self.b.stop()
        return self.out

    def _diagnosis(self) -> str:
        try:
            return "\n" + self.b.diagnose()
        except Exception as exc:
            return f"\n(no diagnosis: {exc!r})"

    def _fail(self, msg: str) -> ScenarioFailed:
        return ScenarioFailed(f"{self.sc.name} on {self.b.name}: {msg}")

    def _deadline_check(self, start: float, what: str) -> None:
        if self.b.now() - start > self.limit:
            try:
                views = self.b.views()
            except Exception as exc:
                views = repr(exc)
            raise self._fail(f"no {what} within {self.limit} {self.b.unit}; "
                             f"tips {self._describe_tips()}, views of live nodes {views}")

    def _submit(self, count: int, prefix: str) -> None:
        items = [(f"{self.sc.name}-{prefix}{self.sent + i}", self.sent + i) for i in range(count)]
        self.sent += count
        self.inflight += self.b.submit(items)

    def _advance(self) -> int:
        done = self.b.advance()
        for p in done:
            self.expected[p.key] = p.value
            for r in self.out.recoveries:
                if r.kind in ("new_view", "first_commit") and r.value is None:
                    if r.kind == "first_commit" or (p.done_view or 0) > r.old_view:
                        r.value = p.done_at - r.started if p.done_at >= r.started else 0.0
        acked = {id(p) for p in done}
        self.inflight = [p for p in self.inflight if id(p) not in acked]
        self._watch()
        return len(done)

    def _load(self) -> None:
        steps = list(self.sc.steps)
        start = self.b.now()
        want = self.sc.expect.get("view_at_least")
        if want and self.sc.byzantine and "kill_primary" not in self.sc.actions():
            # a faulty primary from the start: how long until the mesh is rid of it
            self.out.recoveries.append(Recovery(
                "byzantine", f"start of load -> first commit in a view >= {want}",
                "new_view", None, start, old_view=want - 1))
        while True:
            while steps and steps[0].after <= self.out.acknowledged:
                self._do(steps.pop(0))
                start = self.b.now()  # a step may take long (a restart, a broker outage)
            if self.out.acknowledged >= self.sc.requests and not steps:
                return
            room = self.sc.window - len(self.inflight)
            todo = self.sc.requests - self.sent
            if room > 0 and todo > 0:
                self._submit(min(room, todo), "u")
            acked = self._advance()
            if acked:
                self.out.acknowledged += acked
                start = self.b.now()  # the limit is on a stall, not on the whole load
            self._deadline_check(start, f"new acknowledgement (got {self.out.acknowledged} "
                                        f"of {self.sc.requests})")

    def _settle(self) -> None:
        """Probe updates while a recovery measured by a commit is pending; then wait for
        one head with no traffic at all: a node that is behind catches up from its
        peers' statuses (pbft_tasks/core/status.py), not from fresh requests."""
        start = self.b.now()
        while True:
            pending = [r for r in self.out.recoveries if not r.done]
            if not pending and not self.inflight and self._converged():
                return
            if not self.inflight and any(r.kind in ("new_view", "first_commit") for r in pending):
                self._submit(self.probe_chunk, "probe")
                self.out.probes += self.probe_chunk
            self._advance()
            self._deadline_check(start, "recovery, one head and one view on the honest live nodes "
                                        f"(pending: {[r.measure for r in pending]})")

    # -- steps ----------------------------------------------------------------------------
    def _do(self, step) -> None:
        b = self.b
        if step.do == "kill_primary":
            view = self._view()
            node = primary(view, self.sc.nodes)
            b.kill(node)
            self.killed_primary = node
            self.out.recoveries.append(Recovery(
                f"kill_primary (node {node}, view {view})",
                f"kill of primary {node} -> first commit in a view > {view}",
                "new_view", node, b.now(), old_view=view))
            return
        node = self.killed_primary if step.node == KILLED_PRIMARY else step.node
        if step.do == "kill":
            b.kill(node)
        elif step.do == "pause":
            b.pause(node)
        elif step.do == "cut":
            b.cut_off(node)
        elif step.do in ("restart", "resume", "heal"):
            target = self._lead(exclude=node)
            if step.lose_queue:
                b.lose_queue(node)
                self.lost_queue.add(node)
            began = b.now()
            getattr(b, step.do)(node)
            verb = {"restart": "restart", "resume": "SIGCONT", "heal": "reconnect"}[step.do]
            lost = ", queue lost" if step.lose_queue else ""
            self.out.recoveries.append(Recovery(
                f"{step.do} {node}", f"{verb} of node {node}{lost} -> at height {target}",
                "catch_up", node, began, target=target))
        elif step.do == "kill_broker_node":
            victim = b.kill_broker_node(f"node.{primary(self._view(), self.sc.nodes)}")
            began = b.now()  # from the kill itself, not from finding the leader
            self.out.recoveries.append(Recovery(
                f"kill_broker_node ({victim})",
                "kill -9 of the broker node leading the primary's queue -> first commit",
                "first_commit", None, began))
        elif step.do == "restart_broker_node":
            b.restart_broker_node()
            back = b.now()
            target = self._lead()
            self.out.recoveries.append(Recovery(
                "restart_broker_node", f"broker node rejoined -> every live node at height {target}",
                "all_caught_up", None, back, target=target))
        elif step.do == "restart_broker":
            began = b.now()
            outage = b.restart_broker()
            back = b.now()
            target = self._lead()
            self.out.recoveries.append(Recovery(
                "restart_broker", f"broker outage (stop_app -> start_app -> workers ready)",
                "outage", None, began, value=outage if outage is not None else back - began))
            self.out.recoveries.append(Recovery(
                "restart_broker", "broker back -> first commit", "first_commit", None, back))
            self.out.recoveries.append(Recovery(
                "restart_broker", f"broker back -> every live node at height {target}",
                "all_caught_up", None, back, target=target))
        self._watch()

    def _view(self) -> int:
        views = self.b.views()
        honest = [v for i, v in views.items() if i not in self.sc.byzantine]
        if not honest:
            raise self._fail("no honest live node to ask for the view")
        return Counter(honest).most_common(1)[0][0]

    # -- observations -----------------------------------------------------------------------
    def _honest(self) -> list[int]:
        return [i for i in range(self.sc.nodes) if i not in self.sc.byzantine]

    def _honest_live(self) -> list[int]:
        live = set(self.b.live())
        return [i for i in self._honest() if i in live]

    def _lead(self, exclude: int | None = None) -> int:
        tips = self.b.tips()
        return max((tips[i][0] for i in self._honest_live() if i != exclude), default=0)

    def _watch(self) -> None:
        todo = [r for r in self.out.recoveries if not r.done and r.kind in ("catch_up", "all_caught_up")]
        if not todo:
            return
        tips = self.b.tips()
        now = self.b.now()
        for r in todo:
            nodes = [r.node] if r.kind == "catch_up" else self._honest_live()
            if all(tips[i][0] >= r.target for i in nodes):
                r.value = now - r.started

    def _converged(self) -> bool:
        """One height and head, and one view, on the honest live nodes."""
        tips = self.b.tips()
        if len({tips[i] for i in self._honest_live()}) != 1:
            return False
        views = self.b.views()
        return len({views.get(i) for i in self._honest_live()}) == 1

    def _describe_tips(self) -> dict:
        try:
            return {i: (h, head[:10]) for i, (h, head) in self.b.tips().items()}
        except Exception as exc:
            return {"error": repr(exc)}

    # -- checks -------------------------------------------------------------------------
    def _check(self) -> None:
        if self.out.acknowledged < self.sc.requests:
            raise self._fail(f"only {self.out.acknowledged} of {self.sc.requests} updates acknowledged")
        tips = self.b.tips()
        honest = self._honest()
        longest = max(honest, key=lambda i: tips[i][0])
        for i in honest:
            h, head = tips[i]
            if self.b.hash_at(longest, h) != head:
                raise self._fail(f"SAFETY: node {i}'s chain (height {h}, head {head[:12]}) is "
                                 f"not a prefix of node {longest}'s (height {tips[longest][0]})")
            self.b.audit(i)
        live = self._honest_live()
        heads = {i: tips[i] for i in live}
        if len(set(heads.values())) != 1:
            raise self._fail(f"honest live nodes did not converge: {self._describe_tips()}")
        keys = sorted(self.expected)
        for i in live:
            got = self.b.values(i, keys)
            wrong = {k: got[k] for k in keys if got[k] != self.expected[k]}
            if wrong:
                raise self._fail(f"LOST UPDATES: node {i}: {len(wrong)} of {len(keys)} "
                                 f"acknowledged keys read back wrong, e.g. {dict(list(wrong.items())[:3])}")
        views = self.b.views()
        honest_views = {i: views.get(i) for i in live}
        if len(set(honest_views.values())) != 1:
            raise self._fail(f"LIVENESS: honest live nodes are in different views "
                             f"{honest_views}: a node that came back did not rejoin")
        height = next(iter(heads.values()))[0]
        self.out.final = {"height": height, "views": honest_views, "live": live}
        lo, hi = self.sc.expect.get("view_at_least"), self.sc.expect.get("view_at_most")
        if lo is not None and any(v < lo for v in honest_views.values()):
            raise self._fail(f"expected every honest live node in a view >= {lo}: {honest_views}")
        if hi is not None and any(v > hi for v in honest_views.values()):
            raise self._fail(f"expected every honest live node in a view <= {hi}: {honest_views}")
        missing = [r.measure for r in self.out.recoveries if not r.done]
        if missing:
            raise self._fail(f"not measured: {missing}")
        installed = self.b.installed()
        for i in sorted(self.lost_queue & set(live)):
            if not installed.get(i):
                raise self._fail(f"node {i} lost its queue but installed no block by state "
                                 f"transfer (installed: {installed})")


def write_report(outcome: Outcome, path: str | None = None) -> None:
    """Merge ``outcome`` into the JSON report at ``path`` (or $HDPBF_FAULTS_REPORT)."""
    path = path or os.environ.get(REPORT_ENV)
    if not path:
        return
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        report = {}
    report[f"{outcome.backend}/{outcome.scenario}"] = outcome.to_json()
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def play(scenario: Scenario, backend: Any, report: str | None = None) -> Outcome:
    """Run one scenario on one backend, print and report its outcome."""
    outcome = Runner(scenario, backend).run()
    print("\n" + "\n".join(outcome.lines()), flush=True)
    write_report(outcome, report)
    return outcome


def scenario_files() -> list[Path]:
    return sorted(HERE.glob("*.toml"))


def main(argv: list[str] | None = None) -> int:
    from .sim_backend import SimBackend
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="scenario files (default: all)")
    ap.add_argument("--json", help="merge the outcomes into this JSON report")
    args = ap.parse_args(argv)
    failed = 0
    for path in args.files or scenario_files():
        sc = load(path)
        failed += not play(sc, SimBackend(sc), args.json).ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
