"""1,000 updates through real workers end in identical, audited, certified ledgers.

Set up: n worker processes on the local RabbitMQ; one MeshClient over the broker.
Step: ``bench_consensus.drive`` submits 1,000 puts and waits for a reply from every node.
Check: all n ledgers have one height and head hash; every key reads back with its value
on every node; each chain passes ``audit_chain``; each block's certificate holds 2f+1
commits from distinct replicas that verify against the mesh's keys.
"""
from __future__ import annotations

import pytest

from mesh.bench.consensus import drive

from tests.meshkit import assert_values, audit_node

pytestmark = pytest.mark.broker

UPDATES = 1000


@pytest.mark.parametrize("n", [4, 7])
def test_1000_updates_commit_identically_on_every_node(make_mesh, n):
    mesh = make_mesh(n)
    client = mesh.client()

    done = drive(client, UPDATES, window=500, chunk=100, key_prefix="k", every=True,
                 timeout=180)

    assert len(done) == UPDATES
    assert all(p.all_at is not None and len(p.votes) == n for p in done)
    # Every node replied only after appending the block, so the ledgers are final now.
    tips = mesh.tips()
    assert len(set(tips.values())) == 1, f"ledgers differ: {tips}"
    height, _ = tips[0]
    assert height >= 1
    assert_values(mesh, {f"k{i}": i for i in range(UPDATES)})
    for i in range(n):
        assert audit_node(mesh, i) == height
    statuses = mesh.local.statuses(timeout=30)
    assert {s["height"] for s in statuses.values()} == {height}
    assert all(not s["rejected"] for s in statuses.values()), \
        {i: s["rejected"] for i, s in statuses.items()}
    # No client sending: no node sending either (no retransmission loop).
    mesh.wait_quiet(timeout=30)
