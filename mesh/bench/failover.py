"""Broker-node failover under load: kill the node leading the primary's queue, measure.

``hdpbf bench failover --kills 5`` starts a 3-node RabbitMQ cluster (mesh/ops/broker_cluster.py)
and a 4-node mesh on it with quorum queues, drives updates through one client, and
``kill -9``s the broker node that leads the primary's queue (``node.0``) ``--kills``
times, each time once the previous victim has rejoined.  Figures, never assertions:

- ``pause_s`` per kill: the longest stretch with no new block on node 1's ledger that
  begins at or after the kill and ends before the load does (PBFT under steady load
  commits every few ms, so that stretch is the pause the kill caused);
- ``acknowledged``: updates that got f+1 matching replies; ``lost``: acknowledged
  updates missing (or with another value) in some node's ledger at the end.

``hdpbf bench consensus --broker-nodes 3`` (mesh/bench/commands.py) runs the consensus bench on
the single broker and then on a fresh cluster with quorum queues, in one run
(``run_cluster_vs_single``).

The tests (tests/broker_cluster/) use ``drive_with_kills`` on their own meshes.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import click

from ..client import MeshClient, Pending
from ..ops.broker_cluster import BrokerCluster, ClusterError
from .consensus import drive, write_json
from .missing import UNAVAILABLE, Missing, reason
from .stats import percentile


class CommitWatch:
    """Samples one ledger's height every ``interval`` s in a thread of its own and keeps
    the times at which it grew (a read-only SQLite reader: the worker is the writer)."""

    def __init__(self, ledger_path: str | os.PathLike, interval: float = 0.01):
        self.path = Path(ledger_path)
        self.interval = interval
        self.grew_at: list[float] = []
        self.height = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-watch", daemon=True)

    def __enter__(self) -> "CommitWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from ledger.reader import LedgerReader
        reader = None
        while not self._stop.wait(self.interval):
            try:
                if reader is None:
                    reader = LedgerReader(self.path)
                h = reader.height()
            except Exception:  # not created yet, or busy: look again
                continue
            if h > self.height:
                self.height = h
                self.grew_at.append(time.monotonic())
        if reader is not None:
            reader.close()

    def pause_after(self, t: float, until: float) -> float | None:
        """The longest stretch without a new block in [t, until], starting at t; None
        when no block came after t at all (the mesh never resumed)."""
        times = [x for x in self.grew_at if t < x <= until]
        if not times:
            return None
        gaps, last = [], t
        for x in times:
            gaps.append(x - last)
            last = x
        return max(gaps)


def drive_with_kills(client: MeshClient, cluster: BrokerCluster, per_kill: int, kills: int,
                     watch: CommitWatch, queue: str = "node.0", vhost: str = "/",
                     window: int = 200, chunk: int = 50, timeout: float = 300.0,
                     say: Callable[[str], None] = print) -> dict:
    """``kills`` segments of ``per_kill`` puts each, then one more.  In each segment, once
    a third of it is acknowledged, kill -9 the broker node leading ``queue`` and restart
    it in the background; the next segment starts when it has rejoined (two nodes down
    of three would be no quorum: a different test).  Returns the acknowledged requests
    and each kill, with ``pause_s`` measured on ``watch`` within its segment."""
    events: list[dict] = []
    done: list[Pending] = []
    restarts: list[threading.Thread] = []

    def restart(node_name: str, ev: dict) -> None:
        t0 = time.monotonic()
        try:
            cluster.restart_node(node_name)
            ev["rejoined_s"] = round(time.monotonic() - t0, 2)
        except ClusterError as exc:
            ev["restart_error"] = str(exc)

    for k in range(kills + 1):
        for th in restarts:
            th.join(timeout=180)
        if k:
            cluster.wait_members(len(cluster.nodes), timeout=120)
        state = {"acked": 0, "killed": k == kills}

        def progress(finished: int) -> None:
            state["acked"] += finished
            if state["killed"] or state["acked"] < max(1, per_kill // 3):
                return
            leader = cluster.queue_leader(queue, vhost)
            if leader is None:
                return
            state["killed"] = True
            t_kill = time.monotonic()
            cluster.kill_node(leader)
            ev = {"node": leader, "at_acked": len(done) + state["acked"], "t": t_kill}
            events.append(ev)
            say(f"killed broker node {leader} (leader of {queue}) after "
                f"{ev['at_acked']} acknowledged")
            th = threading.Thread(target=restart, args=(leader, ev), daemon=True)
            th.start()
            restarts.append(th)

        seg = drive(client, per_kill, window=window, chunk=chunk, key_prefix=f"fo{k}-",
                    every=False, timeout=timeout, progress=progress)
        done += seg
        if events and events[-1].get("segment") is None:
            ev = events[-1]
            ev["segment"] = k
            seg_end = time.monotonic() - (time.perf_counter() - max(p.done_at for p in seg))
            pause = watch.pause_after(ev["t"], seg_end)
            ev["pause_s"] = None if pause is None else round(pause, 3)
    for th in restarts:
        th.join(timeout=180)
    return {"done": done, "kills": events}


def lost_updates(readers: list[Any], done: list[Pending]) -> int:
    """Acknowledged puts whose value is not in every given ledger reader."""
    lost = 0
    for p in done:
        op = p.request.op
        for r in readers:
            if r.get_value(op["key"], default=None) != op["value"]:
                lost += 1
                break
    return lost


def run(kills: int = 5, per_kill: int = 600, nodes: int = 4, cluster_dir: str | None = None,
        data_dir: str | None = None, backend: str | None = None, say: Callable = print) -> dict:
    """The failover bench: its own cluster and mesh, both removed at the end."""
    from ledger.reader import LedgerReader
    from pbft_tasks.signing import Verifier

    from pbft_tasks.topology import client_keys, init_mesh, load_client_identity, node_keys

    from ..client import BrokerClientTransport
    from ..ops.launcher import LocalMesh

    cdir = cluster_dir or tempfile.mkdtemp(prefix="hdpbf-cluster-")
    cluster = BrokerCluster.plan_free(cdir, 3, prefix=f"b{os.getpid()}c")
    t0 = time.monotonic()
    cluster.up()
    say(f"3 broker nodes up in {time.monotonic() - t0:.1f}s ({cdir})")
    base = data_dir or tempfile.mkdtemp(prefix="hdpbf-failover-")
    mesh = None
    try:
        kw = {"result_backend": backend} if backend else {}
        cfg = init_mesh(base, nodes=nodes, force=True, broker_url=cluster.urls[0], **kw)
        cfg.broker_url, cfg.queue_type = cluster.broker_url, "quorum"
        cfg.save(f"{base}/mesh.json")
        mesh = LocalMesh(f"{base}/mesh.json")
        mesh.purge()
        mesh.start()
        mesh.wait_ready(timeout=90)
        client = MeshClient("admin", load_client_identity(cfg, "admin"), cfg.n,
                            Verifier(node_keys(cfg), client_keys(cfg)), timeout=1.0)
        client.transport = BrokerClientTransport(mesh.app, client)
        drive(client, 50, window=10, chunk=10, key_prefix="warm", every=False)
        count = per_kill * (kills + 1)
        with CommitWatch(cfg.node_data_dir(1) / "ledger.sqlite") as watch:
            out = drive_with_kills(client, cluster, per_kill, kills, watch, say=say)
        client.transport.close()
        done, events = out["done"], out["kills"]
        pauses = [e["pause_s"] for e in events if e.get("pause_s") is not None]
        readers = [LedgerReader(cfg.node_data_dir(i) / "ledger.sqlite") for i in range(cfg.n)]
        missing = Missing()
        try:
            converged = _wait_converged(readers, timeout=60)
            heads = {(r.height(), r.head()) for r in readers}
            # a node still behind is not a loss: "lost" is only counted on ledgers that
            # agree, and missing (with their heights) when they did not come to agree
            lost = lost_updates(readers, done) if converged else None
            if not converged:
                missing.note("lost", f"the ledgers did not converge within 60 s: heights "
                                     f"{[r.height() for r in readers]}")
        finally:
            for r in readers:
                r.close()
        missing.say(say)
        return {
            "broker_nodes": len(cluster.nodes), "nodes": nodes, "kills": len(events),
            "kills_asked": kills, "requests": count,
            "acknowledged": len(done), "lost": lost,
            "pause_s_p50": round(percentile(pauses, 50), 3) if pauses else None,
            "pause_s_max": round(max(pauses), 3) if pauses else None,
            "never_resumed": len(events) - len(pauses),
            "identical_ledgers": len(heads) == 1,
            "client_reconnects": client.transport.reconnects,
            "events": [{k: v for k, v in e.items() if k != "t"} for e in events],
            "missing": dict(missing),
        }
    finally:
        if mesh is not None:
            mesh.stop()
        cluster.down()


def _wait_converged(readers: list[Any], timeout: float) -> bool:
    """Whether every ledger holds one (height, head) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while len({(r.height(), r.head()) for r in readers}) > 1:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_cluster_vs_single(broker_nodes: int = 3, say: Callable = print, **bench_kw: Any) -> dict:
    """``bench consensus`` on the single broker, then on a fresh ``broker_nodes`` cluster
    with quorum queues, in one run: the cluster's figures, plus ``broker_nodes`` and the
    single broker's ``single_broker_*`` figures for the ratio."""
    from . import consensus as bc
    say("-- single broker (classic queues)")
    single = bc.run(console=None, **bench_kw)
    cdir = tempfile.mkdtemp(prefix="hdpbf-cluster-")
    cluster = BrokerCluster.plan_free(cdir, broker_nodes, prefix=f"b{os.getpid()}c")
    say(f"-- {broker_nodes}-node cluster (quorum queues, publisher confirms)")
    try:
        cluster.up()
        kw = dict(bench_kw, broker=cluster.broker_url, queue_type="quorum")
        result = bc.run(console=None, **kw)
    except (*UNAVAILABLE, ClusterError) as exc:  # the single broker's run is kept
        say(f"-- {broker_nodes}-node cluster: FAILED: {reason(exc)}")
        return {**{f"single_broker_{k}": single[k] for k in
                   ("tx_per_s", "commit_p50_ms", "low_load_cpu_ms_per_request")},
                "broker_nodes": broker_nodes, "nodes": single["nodes"], "votes": single["votes"],
                "failed": reason(exc), "single_broker": single}
    finally:
        cluster.down()
    result["broker_nodes"] = broker_nodes
    result["single_broker_tx_per_s"] = single["tx_per_s"]
    result["single_broker_commit_p50_ms"] = single["commit_p50_ms"]
    result["single_broker_cpu_ms_per_request"] = single["low_load_cpu_ms_per_request"]
    result["tx_per_s_ratio_to_single"] = round(result["tx_per_s"] / single["tx_per_s"], 3)
    return result


@click.command("failover")
@click.option("--kills", type=int, default=5, show_default=True,
              help="How many times to kill -9 the broker node leading node.0's queue.")
@click.option("--per-kill", type=int, default=600, show_default=True,
              help="Updates acknowledged between kills (load = per-kill x (kills + 1)).")
@click.option("--json", "json_path", default=None, metavar="FILE")
def failover(kills: int, per_kill: int, json_path: str | None) -> None:
    """Kill broker nodes under load on a 3-node cluster: pause, acknowledged, lost."""
    if kills < 1 or per_kill < 10:
        raise click.BadParameter("--kills must be >= 1 and --per-kill >= 10")
    try:
        r = run(kills=kills, per_kill=per_kill, say=click.echo)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({k: v for k, v in r.items() if k != "events"}))
    for e in r["events"]:
        click.echo(f"  kill {e['node']} after {e['at_acked']}: pause {e['pause_s']} s, "
                   f"rejoined in {e.get('rejoined_s')} s")
    write_json(r, json_path)
