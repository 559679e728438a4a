"""Liveness after the primary dies (Castro-Liskov sec. 4.4), on real RabbitMQ with one
Celery worker per node.

Set up: 4 workers, updates committed in view 0.
Step: kill -9 the primary (node 0) and keep submitting; the client's timeout sends its
requests to every backup, their request timers expire, node 1 (= 1 mod 4) collects
2f+1 VIEW-CHANGEs and sends NEW-VIEW.
Check: view 1 is installed on the live nodes, the updates sent after the crash commit
without node 0, the three ledgers are identical and audit, and the time from the kill to
the first commit in the new view is printed.  Then node 0 restarts and catches up.
"""
from __future__ import annotations

import time

import pytest

from mesh.bench.consensus import drive

from tests.meshkit import assert_values, audit_node, wait_until

pytestmark = pytest.mark.broker


def test_primary_killed_new_view_installed_and_commits_resume(make_mesh):
    mesh = make_mesh(4)
    client = mesh.client(timeout=1.0)
    expected = {f"v0_{i}": i for i in range(100)}
    drive(client, 100, window=100, chunk=50, key_prefix="v0_", every=True, timeout=120)
    assert {s["view"] for s in mesh.local.statuses().values()} == {0}

    # step: the primary dies for good
    mesh.local.kill(0)
    t0 = time.perf_counter()
    first = drive(client, 1, window=1, chunk=1, key_prefix="v1_first", every=False, timeout=90)
    recovery = time.perf_counter() - t0
    drive(client, 99, window=99, chunk=50, key_prefix="v1_", every=False, timeout=90)
    expected.update({"v1_first0": 0}, **{f"v1_{i}": i for i in range(99)})
    print(f"\nview change: kill -9 of the primary -> first commit in the new view "
          f"{recovery:.2f}s (client timeout 1 s, request timer "
          f"{mesh.cfg.replica_config().view_change_ticks} ticks x {mesh.cfg.tick_ms} ms)")

    # check: the live nodes are in view 1 with one chain that holds everything
    assert first and first[0].result is not None
    live = {i: mesh.local.status(i) for i in (1, 2, 3)}
    assert {s["view"] for s in live.values()} == {1}, live
    wait_until(lambda: len({mesh.tip(i) for i in (1, 2, 3)}) == 1, 60,
               lambda: f"live nodes to converge: {mesh.tips()}")
    for i in (1, 2, 3):
        audit_node(mesh, i)

    # and the old primary, restarted, catches up to the same head
    mesh.local.restart(0)
    mesh.local.wait_ready([0], timeout=120)
    drive(client, 20, window=20, chunk=20, key_prefix="after", every=True, timeout=120)
    expected.update({f"after{i}": i for i in range(20)})
    mesh.wait_converged(timeout=120)
    assert_values(mesh, expected)
