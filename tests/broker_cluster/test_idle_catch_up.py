"""A node whose broker node dies catches up in an idle mesh once it is back.

Set up: a real 3-node RabbitMQ cluster with quorum queues and a 4-node mesh of real
workers; node 3's worker knows one broker node only, the others the whole list.
Step: kill -9 that broker node; the other three replicas commit k blocks (k below and
above the checkpoint interval); node 3's queue is purged meanwhile, so nothing queued
can bring it up to date; restart the broker node and send nothing more.
Check: node 3's worker reconnects and reaches the others' head by state transfer, in
the others' view, from its peers' statuses alone (pbft_tasks/core/status.py).  How long
that took from the broker node answering again is printed, not asserted.
"""
from __future__ import annotations

import time

import pytest
from kombu import Connection

from mesh.bench.consensus import drive
from tests.meshkit import Mesh, audit_node

pytestmark = [pytest.mark.broker, pytest.mark.slow]

INTERVAL = 8
BEHIND = 3  # the node pinned to one broker node


@pytest.mark.parametrize("k", [INTERVAL - 3, 3 * INTERVAL + 1], ids=["below-interval", "above-interval"])
def test_a_node_whose_broker_node_died_reaches_the_head_of_an_idle_mesh(whole, tmp_path, k):
    mesh = Mesh(tmp_path / "mesh", 4, whole.broker_url, queue_type="quorum",
                checkpoint_interval=INTERVAL, log_window=2 * INTERVAL)
    pinned = whole.nodes[-1]
    mesh.local.extra_env[BEHIND] = {"HDPBF_BROKER_URL": pinned.url}
    others = [n for n in whole.nodes if n.name != pinned.name]
    try:
        mesh.start(timeout=120)
        client = mesh.client(timeout=1.0)
        drive(client, 3, window=1, chunk=1, key_prefix="pre", every=True)
        height, _ = mesh.wait_converged(timeout=60)

        whole.kill_node(pinned.name)
        drive(client, k, window=1, chunk=1, key_prefix="dark", every=False, timeout=180)
        with Connection(others[0].url) as conn:  # what was queued for node 3 is lost
            conn.default_channel.queue_purge(f"node.{BEHIND}")
        assert mesh.tip(BEHIND)[0] == height

        began = time.monotonic()
        whole.restart_node(pinned.name, timeout=240)
        up = time.monotonic()
        tip, _ = mesh.wait_converged(timeout=120)
        done = time.monotonic()
        print(f"\nnode {BEHIND}, {k} blocks behind with its queue purged: at the head "
              f"{done - up:.2f} s after its broker node answered again ({done - began:.2f} s "
              f"after its restart began)")
        assert tip == height + k
        statuses = mesh.local.statuses(timeout=30)
        assert statuses[BEHIND]["installed"] > 0  # by state transfer: its queue was purged
        assert {s["view"] for s in statuses.values()} == {statuses[0]["view"]}
        for i in range(mesh.n):
            assert audit_node(mesh, i) == tip
        whole.wait_members(3)
    finally:
        mesh.stop()
