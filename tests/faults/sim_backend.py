"""The in-process backend of the fault runner: pbft_tasks/core/sim.py's Cluster, driven
round by round, with the perturbations of a scenario mapped onto it.

What each action means here, and why it matches the real mesh (tests/faults/mesh_backend.py):
- kill: ``Cluster.crash`` -- the replica's memory is gone, its persisted records and
  blocks stay, and messages to it wait in the network as in its durable RabbitMQ queue.
  The last few messages it took are queued again (a killed worker never acknowledged
  them: ``task_acks_late``, so RabbitMQ redelivers them).
- restart: ``Cluster.restart`` (a new Replica from the persisted records, ``Resume``).
- pause / resume: the node takes no messages and does not tick (SIGSTOP stops its tick
  thread too) but keeps its memory; its messages wait for it.
- cut / heal: the worker loses its broker connection and cannot get a new one.  Its
  durable queue keeps what peers send it; it cannot publish either (kombu retries the
  publish with the node's lock held, so the node stands still), so here a cut is a pause
  whose unacknowledged messages are delivered again at the heal.
- restart_broker: every connection drops; queues are durable and messages persistent,
  so nothing queued is lost, and every node gets its unacknowledged messages again.
- kill_primary: kill the primary of the view most live honest replicas are in.
- lose_queue (with restart/resume/heal): everything waiting for the node is dropped.

Time is ticks: one round delivers everything deliverable in FIFO order, answers
state-transfer fetches and ticks every running replica once.  The client here behaves
like mesh/client.py: it sends to the primary it believes in, accepts f+1 matching
results and sends a request to every replica when it has waited too long.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from pbft_tasks.core.chain import GENESIS
from pbft_tasks.core.messages import Request
from pbft_tasks.core.quorum import primary, weak_quorum
from pbft_tasks.core.sim import Cluster, Envelope

# Timers of the simulated replicas, in ticks: a request waits CLIENT_TIMEOUT before the
# client sends it to everyone, as the real client (1 s) does against the replicas'
# request timer (500 ticks of 2 ms = 1 s).
SIM_TIMERS = dict(retransmit_ticks=10, view_change_ticks=20, status_ticks=20)
CLIENT_TIMEOUT = 20
REDELIVER = 4          # messages a worker took but had not acknowledged when cut off
# Messages a node handles per tick.  A worker handles ~2.5k messages/s; a sim tick
# stands for ~25 real ticks (the timers above are 1/25 of the real ones), i.e. ~50 ms.
# Bounding it makes a backlog take time to work through, while timers run, as it does
# on the real mesh.
CAPACITY = 120


class FaultCluster(Cluster):
    """A Cluster that remembers what each node took last, so that it can be delivered
    again, and counts blocks installed by state transfer."""

    def __init__(self, n: int, behaviours: dict | None = None, **cfg: Any):
        super().__init__(n, behaviours=behaviours, **cfg)
        self.recent = {i: deque(maxlen=REDELIVER) for i in range(n)}
        self.installed: Counter = Counter()

    def deliver(self, index: int = 0) -> None:
        env = self.network[index]
        if self.nodes[env.to].up:
            self.recent[env.to].append(env)
        super().deliver(index)

    def flow(self, capacity: int) -> int:
        """Deliver in FIFO order, at most ``capacity`` messages to each node; what the
        delivered messages cause joins the queue and may be delivered in the same call."""
        used: Counter = Counter()
        k = delivered = 0
        while k < len(self.network):
            to = self.network[k].to
            if self.nodes[to].up and used[to] < capacity:
                used[to] += 1
                delivered += 1
                self.deliver(k)
            else:
                k += 1
        return delivered

    def redeliver(self, i: int) -> int:
        """Queue again, ahead of everything, what node i took last (duplicates)."""
        again = [Envelope(e.to, e.msg, e.origin) for e in self.recent[i]]
        self.network[:0] = again
        self.recent[i].clear()
        return len(again)

    def serve_fetches(self) -> int:
        before = {i: len(n.blocks) for i, n in enumerate(self.nodes)}
        served = super().serve_fetches()
        for i, node in enumerate(self.nodes):
            self.installed[i] += len(node.blocks) - before[i]
        return served


@dataclass
class SimPending:
    request: Request
    key: str
    value: Any
    sent_at: int
    last_sent: int
    votes: dict = field(default_factory=dict)      # sender -> result
    views: dict = field(default_factory=dict)      # sender -> view of its reply
    done_at: int | None = None
    done_view: int | None = None


class SimBackend:
    name = "sim"
    unit = "ticks"
    time_limit = 2000      # ticks without an acknowledgement, or to settle, before failing

    def __init__(self, scenario, votes: str = "all-to-all"):
        self.sc = scenario
        cfg = dict(SIM_TIMERS, **scenario.core_settings(), votes=votes)  # vote routing: core/collector.py
        behaviours = {i: ",".join(b) for i, b in scenario.byzantine.items()}
        self.c = FaultCluster(scenario.nodes, behaviours=behaviours, **cfg)
        self.byzantine = set(scenario.byzantine)
        self.paused: set[int] = set()
        self.down: set[int] = set()
        self.cut: set[int] = set()
        self.client = "faults"
        self.ts = 0
        self.view = 0
        self.pending: dict[int, SimPending] = {}
        self.replies_seen = 0
        self.ticks = 0
        self.f = scenario.f

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def now(self) -> float:
        return self.ticks

    # -- client ----------------------------------------------------------------------------
    def submit(self, items: list[tuple[str, Any]]) -> list[SimPending]:
        out = []
        to = primary(self.view, self.sc.nodes)
        for key, value in items:
            self.ts += 1
            req = Request(self.client, self.ts, {"op": "put", "key": key, "value": value,
                                                 "expires_at": None})
            p = SimPending(req, key, value, self.ticks, self.ticks)
            self.pending[self.ts] = p
            self.c.inject(to, req, origin=self.client)
            out.append(p)
        return out

    def _client_poll(self) -> list[SimPending]:
        done = []
        replies = self.c.replies[self.client]
        for rep in replies[self.replies_seen:]:
            self.view = max(self.view, rep.view)
            for r in rep.results:
                p = self.pending.get(r["timestamp"])
                if p is None or rep.sender in p.votes:
                    continue
                p.votes[rep.sender] = r["result"]
                p.views[rep.sender] = rep.view
                same = [s for s, v in p.votes.items() if v == r["result"]]
                if p.done_at is None and len(same) >= weak_quorum(self.sc.nodes):
                    p.done_at = self.ticks
                    p.done_view = min(p.views[s] for s in same)
                    done.append(p)
        self.replies_seen = len(replies)
        for p in done:
            del self.pending[p.request.timestamp]
        for p in self.pending.values():  # waited too long: send it to every replica
            if self.ticks - p.last_sent >= CLIENT_TIMEOUT:
                p.last_sent = self.ticks
                for i in range(self.sc.nodes):
                    self.c.inject(i, p.request, origin=self.client)
        return done

    def advance(self) -> list[SimPending]:
        """One round: deliver, answer fetches, tick; returns newly acknowledged updates."""
        self.c.flow(CAPACITY)
        self.c.serve_fetches()
        self.c.tick()
        self.ticks += 1
        return self._client_poll()

    def resend_pending(self) -> None:
        for p in self.pending.values():
            p.last_sent = self.ticks
            for i in range(self.sc.nodes):
                self.c.inject(i, p.request, origin=self.client)

    # -- perturbations ----------------------------------------------------------------------
    def kill(self, i: int) -> None:
        self.c.redeliver(i)
        self.c.crash(i)
        self.down.add(i)

    def restart(self, i: int) -> None:
        self.c.restart(i)
        self.down.discard(i)

    def pause(self, i: int) -> None:
        self.c.nodes[i].up = False
        self.paused.add(i)

    def resume(self, i: int) -> None:
        self.c.nodes[i].up = True
        self.paused.discard(i)

    def cut_off(self, i: int) -> None:
        self.c.nodes[i].up = False
        self.cut.add(i)

    def heal(self, i: int) -> None:
        self.c.redeliver(i)
        self.c.nodes[i].up = True
        self.cut.discard(i)

    def lose_queue(self, i: int) -> None:
        """Everything waiting for node i is gone (its queue purged)."""
        self.c.network = [e for e in self.c.network if e.to != i]
        self.c.recent[i].clear()

    def restart_broker(self) -> None:
        for i in range(self.sc.nodes):
            if self.c.nodes[i].up:
                self.c.redeliver(i)

    def kill_broker_node(self, queue: str) -> str:
        """A cluster node dies: the connections through it drop and what they had
        delivered unacknowledged is redelivered (quorum queues lose nothing)."""
        self.restart_broker()
        return "a broker node"

    def restart_broker_node(self) -> None:
        """The node rejoins; the mesh's traffic never depended on it."""

    # -- observations -------------------------------------------------------------------------
    def live(self) -> list[int]:
        return [i for i in range(self.sc.nodes)
                if i not in self.down | self.paused | self.cut]

    def views(self) -> dict[int, int]:
        return {i: self.c.nodes[i].replica.view for i in self.live()
                if self.c.nodes[i].replica is not None}

    def tips(self) -> dict[int, tuple[int, str]]:
        return {i: (self.c.height(i), self.c.head(i)) for i in range(self.sc.nodes)}

    def hash_at(self, i: int, height: int) -> str:
        return GENESIS if height == 0 else self.c.nodes[i].blocks[height - 1]["hash"]

    def values(self, i: int, keys: list[str]) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for b in self.c.nodes[i].blocks:
            for k, r in enumerate(b["requests"]):
                if k in b["skip"]:
                    continue
                op = r["op"]
                if op.get("op") == "put":
                    state[op["key"]] = op["value"]
                elif op.get("op") == "delete":
                    state.pop(op["key"], None)
        return {k: state.get(k, "<missing>") for k in keys}

    def installed(self) -> dict[int, int]:
        return {i: self.c.installed[i] for i in range(self.sc.nodes) if self.c.installed[i]}

    def diagnose(self) -> str:
        lines = []
        for i, node in enumerate(self.c.nodes):
            r = node.replica
            state = ("down" if i in self.down else "paused" if i in self.paused
                     else "cut" if i in self.cut else "up")
            detail = (f"view {r.view}{' (changing)' if r.vc.in_view_change else ''} executed "
                      f"{r.last_exec} h {r.window.h}" if r is not None else "no replica")
            lines.append(f"  node {i} ({state}): {detail}, {len(node.evidence)} evidence")
        lines.append(f"  in flight: {len(self.c.network)} messages, "
                     f"{len(self.pending)} updates unanswered")
        return "\n".join(lines)

    def audit(self, i: int) -> None:
        prev = GENESIS
        for k, b in enumerate(self.c.nodes[i].blocks, start=1):
            assert b["seq"] == k and b["prev"] == prev, f"node {i}: chain broken at {k}"
            prev = b["hash"]
