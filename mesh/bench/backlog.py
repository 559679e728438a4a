"""A node's worker draining a backlog of protocol messages: does the prefetch stall?

``hdpbf bench backlog --broker-nodes 3 --prefetch 1,4,64`` for each prefetch: a 4-node
mesh (on a fresh local 3-node cluster with quorum queues, or on ``--broker`` with
classic queues for ``--broker-nodes 1``), node 1's worker killed, ``--updates`` puts
committed by the other three (f = 1), so ``node.1`` holds a backlog of protocol
messages; then node 1's worker is started again and ``node.1``'s depth is sampled every
20 ms.  ``drain_msgs_per_s`` = the backlog over the time from the first message taken to
node 1's ledger at the others' height (the worker's start-up is not counted).  Blocks
are kept small (``max_batch`` 8) so that a few thousand updates leave thousands of
messages behind.  Plain Celery stalls with a solo worker and a small prefetch on a
classic queue (prefetch 1: 5-10 tasks/s); this is the same question on the mesh's own messages and queues.  Figures, never assertions.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable

import click

from ..ops.broker_cluster import BrokerCluster, ClusterError
from .consensus import drive, write_json
from .missing import UNAVAILABLE, reason


def _depth(app: Any, queue: str) -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def drain_once(broker: str, queue_type: str, prefetch: int, updates: int,
               backend: str | None = None, say: Callable = print, max_batch: int = 8) -> dict:
    from ledger.reader import LedgerReader
    from pbft_tasks.signing import Verifier
    from pbft_tasks.topology import client_keys, init_mesh, load_client_identity, node_keys

    from ..client import BrokerClientTransport, MeshClient
    from ..ops.launcher import LocalMesh

    base = tempfile.mkdtemp(prefix="hdpbf-backlog-")
    kw = {"result_backend": backend} if backend else {}
    cfg = init_mesh(base, nodes=4, force=True, broker_url=broker, queue_type=queue_type, **kw)
    cfg.max_batch = max_batch
    cfg.save(f"{base}/mesh.json")
    mesh = LocalMesh(f"{base}/mesh.json")
    mesh.prefetch = prefetch
    mesh.purge()
    mesh.start()
    try:
        mesh.wait_ready(timeout=90)
        client = MeshClient("admin", load_client_identity(cfg, "admin"), cfg.n,
                            Verifier(node_keys(cfg), client_keys(cfg)))
        client.transport = BrokerClientTransport(mesh.app, client)
        drive(client, 20, window=10, chunk=10, key_prefix="warm", every=True)
        mesh.kill(1)
        drive(client, updates, window=500, chunk=100, key_prefix="b", every=False)
        backlog = _depth(mesh.app, "node.1")
        with LedgerReader(cfg.node_data_dir(0) / "ledger.sqlite") as r:
            target = r.height()
        t_restart = time.monotonic()
        mesh.restart(1)
        started = emptied = None
        deadline = t_restart + 600
        reader = LedgerReader(cfg.node_data_dir(1) / "ledger.sqlite")
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                if started is None and _depth(mesh.app, "node.1") < backlog:
                    started = now
                if started is not None and reader.height() >= target:
                    emptied = now
                    break
                time.sleep(0.02)
        finally:
            reader.close()
        client.transport.close()
        out = {"queue_type": queue_type, "prefetch": prefetch, "updates": updates,
               "max_batch": max_batch, "backlog_messages": backlog, "blocks": target,
               "start_to_first_take_s": None if started is None else round(started - t_restart, 2),
               "drain_s": None if emptied is None or started is None else round(emptied - started, 3)}
        out["drain_msgs_per_s"] = (round(backlog / out["drain_s"], 1) if out["drain_s"] else None)
        say(f"queue {queue_type}, prefetch {prefetch}: {backlog} messages drained in "
            f"{out['drain_s']} s ({out['drain_msgs_per_s']} msg/s; {target} blocks)")
        return out
    finally:
        mesh.stop()


def run(prefetches: list[int], updates: int = 2000, broker_nodes: int = 3,
        broker: str | None = None, say: Callable = print) -> dict:
    from pbft_tasks.topology import DEFAULT_BROKER_URL
    cluster = None
    if broker_nodes > 1:
        cluster = BrokerCluster.plan_free(tempfile.mkdtemp(prefix="hdpbf-cluster-"),
                                          broker_nodes, prefix=f"b{os.getpid()}c")
        cluster.up()
        broker, queue_type = cluster.broker_url, "quorum"
    else:
        broker, queue_type = broker or DEFAULT_BROKER_URL, "classic"
    try:
        runs = []
        for p in prefetches:
            try:
                runs.append(drain_once(broker, queue_type, p, updates, say=say))
            except UNAVAILABLE as exc:  # this prefetch did not make it; the others go on
                say(f"queue {queue_type}, prefetch {p}: FAILED: {reason(exc)}")
                runs.append({"queue_type": queue_type, "prefetch": p, "updates": updates,
                             "failed": reason(exc)})
    finally:
        if cluster is not None:
            cluster.down()
    return {"broker_nodes": broker_nodes, "queue_type": queue_type, "runs": runs}


@click.command("backlog")
@click.option("--prefetch", "prefetches", default="1,64", show_default=True,
              help="comma-separated worker prefetch values to compare")
@click.option("--updates", type=click.IntRange(100, 100_000), default=2000, show_default=True,
              help="updates committed while node 1 is down (its backlog)")
@click.option("--broker-nodes", type=click.IntRange(1, 9), default=3, show_default=True,
              help="3: a fresh local cluster with quorum queues; 1: --broker, classic queues")
@click.option("--broker", default=None, metavar="URL", help="the single broker (--broker-nodes 1)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def backlog(prefetches: str, updates: int, broker_nodes: int, broker: str | None,
            json_path: str | None) -> None:
    """A restarted worker draining its backlog, per prefetch: msg/s (does it stall?)."""
    try:
        values = [int(p) for p in prefetches.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter("--prefetch takes integers, e.g. 1,4,64") from None
    if not values or min(values) < 1:
        raise click.BadParameter("--prefetch takes integers >= 1, e.g. 1,4,64")
    try:
        r = run(values, updates, broker_nodes, broker, say=click.echo)
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    write_json(r, json_path)
