"""State transfer on real RabbitMQ: a worker paused (SIGSTOP) while the others run
several checkpoint windows ahead, whose queued messages are then lost (its queue is
purged, as for a node cut off from the broker), catches up to the same head after
SIGCONT.  Without the purge the durable queue alone would bring it back in order.

Set up: 4 workers with a small window (checkpoint every 4 seqs, window 8, batches of 8).
Step: SIGSTOP node 3; 400 updates commit with 3 of 4 (about 50 seqs, six windows);
purge node.3; SIGCONT.  The peers' next checkpoints tell it (f+1 of them) that it is
behind, it fetches the committed blocks
(pbft.fetch / pbft.blocks), checks every signature and installs them.
Check: the same height and head on all 4, every value on every node, every chain
audits with its certificates; the catch-up time is printed.
"""
from __future__ import annotations

import signal
import time

import pytest

from mesh.bench.consensus import drive

from tests.meshkit import assert_values, audit_node, wait_until

pytestmark = pytest.mark.broker


def test_paused_worker_catches_up_by_state_transfer(make_mesh):
    mesh = make_mesh(4, checkpoint_interval=4, log_window=8, max_batch=8)
    client = mesh.client(timeout=2.0)
    drive(client, 40, window=40, chunk=20, key_prefix="before", every=True, timeout=120)
    expected = {f"before{i}": i for i in range(40)}

    mesh.local.kill(3, signal.SIGSTOP)
    try:
        drive(client, 400, window=100, chunk=50, key_prefix="paused", every=False, timeout=180)
        expected.update({f"paused{i}": i for i in range(400)})
        lead = max(mesh.tip(i)[0] for i in (0, 1, 2))
        assert lead - mesh.tip(3)[0] > 2 * 8, "node 3 should be more than two windows behind"
        with mesh.local.app.connection_for_write() as conn:
            lost = conn.default_channel.queue_purge("node.3")
        print(f"\nnode 3 lost {lost} queued messages")
    finally:
        mesh.local.kill(3, signal.SIGCONT)
    t0 = time.perf_counter()
    # a little traffic so that fresh checkpoints reach node 3
    drive(client, 40, window=40, chunk=20, key_prefix="after", every=False, timeout=120)
    expected.update({f"after{i}": i for i in range(40)})
    wait_until(lambda: len({mesh.tip(i) for i in range(4)}) == 1, 120,
               lambda: f"node 3 to catch up: {mesh.tips()}")
    print(f"\nstate transfer: node 3 caught up {time.perf_counter() - t0:.2f}s after SIGCONT "
          f"(height {mesh.tip(3)[0]})")
    status = mesh.local.status(3)
    assert status["installed"] > 0, "node 3 should have caught up by installing fetched blocks"
    assert status["rejected"].get("bad_state_transfer", 0) == 0
    print(f"state transfer: {status['installed']} blocks installed on node 3")
    for i in range(4):
        audit_node(mesh, i)
    assert_values(mesh, expected)
