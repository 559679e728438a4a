"""The real backend of the fault runner: n Celery workers (mesh.ops.launcher.LocalMesh) on
the real RabbitMQ, one client (mesh/client.py), ledgers read from each node's SQLite.

What each action does here (the simulator mirrors it, sim_backend.py):
- kill: ``kill -9`` of the worker (``LocalMesh.kill``).  Its durable queue keeps what
  peers send; what it took without acknowledging (``task_acks_late``) is redelivered.
- restart: a new worker process for the node (same ledger, same extra env), then
  ``wait_ready``; the recovery time counts from the moment the process is started.
- pause / resume: SIGSTOP / SIGCONT to the worker's process group: it keeps its
  connections and memory, takes nothing and does not tick.
- cut / heal: the worker talks to RabbitMQ through a CuttableProxy (proxy.py, started
  for every node a scenario cuts, ``HDPBF_BROKER_URL``); ``cut`` drops its connections
  and refuses new ones until ``heal``.  The worker's consumer and publisher retry on
  their own; nothing is done to help them.
- restart_broker: ``rabbitmqctl stop_app`` then, always (``finally``, SIGTERM
  included), ``start_app``; then the workers are waited for (``pbft.status``) and the
  client gets a new connection and reply queue (its auto-delete queue died with the
  broker) and sends every unanswered request to every replica.
- kill_primary: the runner asks the live nodes their view and kills its primary.
- lose_queue (with restart/resume/heal): ``node.<i>`` is purged just before.

The client (timeout 1 s) sends to the primary it believes in; an update unanswered
after the timeout goes to every replica, and again every RETRY_S while unanswered (the
paper's client keeps retransmitting; MeshClient.wait does it once).
"""
from __future__ import annotations

import signal
import time
from typing import Any
from urllib.parse import urlsplit

from mesh.client import BrokerClientTransport
from pbft_tasks.core.chain import GENESIS

from tests.meshkit import audit_node
from tests.services import rabbit_app_stopped

from .proxy import CuttableProxy

CLIENT_TIMEOUT = 1.0
RETRY_S = 2.0
POLL_S = 0.2


class MeshBackend:
    name = "mesh"
    unit = "s"
    time_limit = 60.0      # seconds without an acknowledgement, or to settle, before failing

    def __init__(self, scenario, make_mesh, cluster=None, votes: str = "all-to-all"):
        self.sc = scenario
        # broker_nodes > 1: ``make_mesh`` builds meshes on this RabbitMQ cluster
        # (mesh/ops/broker_cluster.py, tests/broker_cluster/) with quorum queues.
        self.cluster = cluster
        self.killed_broker_nodes: list[str] = []
        if scenario.broker_nodes > 1 and cluster is None:
            raise AssertionError(f"{scenario.name} needs a {scenario.broker_nodes}-node broker "
                                 f"cluster (tests/broker_cluster/test_fault_scenarios.py)")
        self.mesh = make_mesh(scenario.nodes, start=False, votes=votes, **scenario.settings)
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.cut: set[int] = set()
        self.proxies: dict[int, CuttableProxy] = {}
        self.client = None
        self.outstanding: dict[int, Any] = {}    # timestamp -> Pending not yet acknowledged
        self.sent_all: dict[int, float] = {}     # timestamp -> last send to every replica
        for i, names in scenario.byzantine.items():
            self.mesh.local.extra_env.setdefault(i, {})["HDPBF_BYZANTINE"] = ",".join(names)
        target = urlsplit(self.mesh.cfg.broker_url)
        for i in sorted({s.node for s in scenario.steps if s.do == "cut"}):
            proxy = CuttableProxy((target.hostname or "127.0.0.1", target.port or 5672))
            self.proxies[i] = proxy
            self.mesh.local.extra_env.setdefault(i, {})["HDPBF_BROKER_URL"] = \
                proxy.url_for(self.mesh.cfg.broker_url)

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.mesh.start()
        self.client = self.mesh.client(timeout=CLIENT_TIMEOUT)
        self._watch_views(self.client)

    def stop(self) -> None:
        for i in list(self.paused):
            try:
                self.mesh.local.kill(i, signal.SIGCONT)
            except (ProcessLookupError, KeyError):
                pass
        for proxy in self.proxies.values():
            proxy.heal()
        try:
            self.mesh.stop()
        finally:
            for proxy in self.proxies.values():
                proxy.close()

    def now(self) -> float:
        return time.perf_counter()

    # -- client -----------------------------------------------------------------------------
    def _watch_views(self, client) -> None:
        """Note the view of each reply, so the runner can tell a commit in a new view."""
        plain = client.on_reply

        def on_reply(wire: Any) -> None:
            plain(wire)
            if not isinstance(wire, dict) or not isinstance(wire.get("results"), list):
                return
            for r in wire["results"]:
                p = client.pending.get(r.get("timestamp")) if isinstance(r, dict) else None
                if p is None or wire.get("sender") not in p.votes:
                    continue
                p.views.setdefault(wire["sender"], wire.get("view", 0))
                if p.done_at is not None and p.done_view is None:
                    same = [s for s, v in p.votes.items() if v == p.result]
                    p.done_view = min(p.views.get(s, 0) for s in same)

        client.on_reply = on_reply

    def submit(self, items: list[tuple[str, Any]]) -> list:
        batch = self.client.submit([self.client.put_request(k, v) for k, v in items])
        for p, (k, v) in zip(batch, items):
            p.key, p.value, p.views, p.done_view = k, v, {}, None
            self.outstanding[p.request.timestamp] = p
        return batch

    def advance(self) -> list:
        """Poll replies for POLL_S, retransmitting what waited too long."""
        now = time.perf_counter()
        stale = [p for p in self.outstanding.values()
                 if p.done_at is None and now - p.sent_at > CLIENT_TIMEOUT
                 and now - self.sent_all.get(p.request.timestamp, 0.0) > RETRY_S]
        if stale:
            self._send_to_all(stale)
        end = now + POLL_S
        while time.perf_counter() < end:
            self.client.transport.poll(0.05)
        done = [p for p in self.outstanding.values() if p.done_at is not None]
        for p in done:
            del self.outstanding[p.request.timestamp]
            self.sent_all.pop(p.request.timestamp, None)
        self.client.forget(done)
        return done

    def _send_to_all(self, batch: list) -> None:
        now = time.perf_counter()
        for p in batch:
            self.sent_all[p.request.timestamp] = now
        self.client.send_to_all(batch, now)

    # -- perturbations -------------------------------------------------------------------------
    def kill(self, i: int) -> None:
        self.mesh.local.kill(i)
        self.down.add(i)

    def restart(self, i: int) -> None:
        self.mesh.local.restart(i)
        self.down.discard(i)
        self.mesh.local.wait_ready([i], timeout=120)

    def pause(self, i: int) -> None:
        self.mesh.local.kill(i, signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        self.mesh.local.kill(i, signal.SIGCONT)
        self.paused.discard(i)

    def cut_off(self, i: int) -> None:
        self.proxies[i].cut()
        self.cut.add(i)

    def heal(self, i: int) -> None:
        self.proxies[i].heal()
        self.cut.discard(i)

    def lose_queue(self, i: int) -> None:
        """Purge ``node.<i>`` (what it had prefetched, unacknowledged, stays with it)."""
        with self.mesh.local.app.connection_for_write() as conn:
            conn.default_channel.queue_purge(f"node.{i}")

    def restart_broker(self) -> float:
        """Stop and start RabbitMQ; returns the outage (stop_app -> workers ready)."""
        t0 = time.perf_counter()
        with rabbit_app_stopped():
            pass
        self.mesh.local.wait_ready(self.live(), timeout=120)
        outage = time.perf_counter() - t0
        try:
            self.client.transport.close()
        except Exception:
            pass   # its connection died with the broker
        self.client.transport = BrokerClientTransport(self.mesh.app, self.client)
        self.mesh._transports.append(self.client.transport)
        waiting = [p for p in self.outstanding.values() if p.done_at is None]
        if waiting:
            self._send_to_all(waiting)
        return outage

    def kill_broker_node(self, queue: str) -> str:
        """kill -9 the cluster node leading ``queue``; workers and client fail over."""
        leader = self.cluster.queue_leader(queue)
        if leader is None:
            raise AssertionError(f"{queue} has no quorum queue leader to kill")
        self.cluster.kill_node(leader)
        self.killed_broker_nodes.append(leader)
        return leader

    def restart_broker_node(self) -> None:
        self.cluster.restart_node(self.killed_broker_nodes.pop())
        self.cluster.wait_members(len(self.cluster.nodes))

    # -- observations ---------------------------------------------------------------------------
    def live(self) -> list[int]:
        return [i for i in range(self.sc.nodes) if i not in self.down | self.paused | self.cut]

    def views(self) -> dict[int, int]:
        live = set(self.live())
        got = self.mesh.local.poll_statuses(timeout=3.0)
        return {i: s["view"] for i, s in got.items() if s is not None and i in live}

    def tips(self) -> dict[int, tuple[int, str]]:
        return self.mesh.tips()

    def hash_at(self, i: int, height: int) -> str:
        if height == 0:
            return GENESIS
        with self.mesh.reader(i) as r:
            block = r.block(height)
        return block["hash"] if block else "<none>"

    def values(self, i: int, keys: list[str]) -> dict[str, Any]:
        with self.mesh.reader(i) as r:
            return {k: r.get_value(k, default="<missing>") for k in keys}

    def installed(self) -> dict[int, int]:
        live = set(self.live())
        got = self.mesh.local.poll_statuses(timeout=3.0)
        return {i: s["installed"] for i, s in got.items()
                if s is not None and i in live and s["installed"]}

    def diagnose(self) -> str:
        """Each node's status and the last warnings of its log (the pytest temp dir
        holding the logs is gone a few sessions later)."""
        got = self.mesh.local.poll_statuses(timeout=2.0)
        lines = []
        for i in range(self.sc.nodes):
            s = got.get(i)
            state = ("down" if i in self.down else "paused" if i in self.paused
                     else "cut" if i in self.cut else "up")
            info = (f"view {s['view']} height {s['height']} h {s['h']} rejected {s['rejected']}"
                    if s else "no status")
            lines.append(f"  node {i} ({state}): {info}")
            try:
                warn = [ln for ln in self.mesh.log_text(i).splitlines()
                        if "WARNING/" in ln or "ERROR/" in ln or "CRITICAL/" in ln]
            except OSError:
                warn = []
            lines += [f"    {ln[:200]}" for ln in warn[-4:]]
        lines.append(f"  logs: {self.mesh.local.log_dir}")
        return "\n".join(lines)

    def audit(self, i: int) -> None:
        try:
            audit_node(self.mesh, i)
        except (Exception, BaseException) as exc:  # pytest.fail raises a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise AssertionError(f"node {i}'s ledger fails its audit: {exc}") from None
