"""Our own bug fails hard: a real worker whose node runtime raises
exits at once with EX_SOFTWARE (70), does not go on with a half-stepped replica, and,
restarted, rebuilds from its durable records and catches up with the others.

Set up: 4 workers, small batches; node 1 (a backup) started with HDPBF_FAIL_AT_SEQ=3, a
fault-test hook that raises inside the runtime right after block 3 is in its ledger and
before any message of that step is sent (pbft_tasks/celery_app.py).
Step: updates until node 1 dies; more while it is down (3 of 4 = 2f+1 keep
committing); restart it without the hook; more updates.
Check: exit code 70 and the log's "our own bug" line; block 3 is durable and nothing
after it was executed; after the restart all four ledgers are identical, every value
reads back everywhere and every chain audits with its certificates.
"""
from __future__ import annotations

import pytest

from tests.meshkit import assert_values, audit_node, wait_until

pytestmark = pytest.mark.broker

VICTIM = 1
FAIL_AT = 3


def _puts(mesh, client, prefix: str, count: int, expected: dict) -> None:
    batch = client.submit([client.put_request(f"{prefix}{i}", i) for i in range(count)])
    expected.update({f"{prefix}{i}": i for i in range(count)})
    mesh.wait_replies(client, batch, timeout=90)
    client.forget(batch)


def test_a_bug_in_the_runtime_stops_the_worker_and_it_restarts_from_its_records(make_mesh):
    mesh = make_mesh(4, start=False, max_batch=8, checkpoint_interval=4, log_window=16)
    mesh.local.extra_env[VICTIM] = {"HDPBF_FAIL_AT_SEQ": str(FAIL_AT)}
    mesh.start()
    client = mesh.client(timeout=2.0)
    expected: dict = {}

    _puts(mesh, client, "before", 80, expected)  # >= 10 blocks of 8: past block 3
    proc = mesh.local.procs[VICTIM]
    wait_until(lambda: proc.poll() is not None, 60, f"node {VICTIM} to exit on its injected bug")
    assert proc.returncode == 70, mesh.log_text(VICTIM)[-3000:]
    log = mesh.log_text(VICTIM)
    assert "our own bug" in log and f"injected bug at block {FAIL_AT}" in log, log[-3000:]
    assert "Traceback" in log  # the bug is logged with its traceback, once, loudly
    assert mesh.tip(VICTIM)[0] == FAIL_AT, "nothing may be executed after the bug"

    _puts(mesh, client, "down", 40, expected)  # the other three go on

    del mesh.local.extra_env[VICTIM]
    mesh.local.restart(VICTIM)
    mesh.local.wait_ready([VICTIM], timeout=120)
    _puts(mesh, client, "after", 40, expected)

    others = [i for i in range(mesh.n) if i != VICTIM]

    def caught_up():
        mesh.check_no_storm()
        tips = mesh.tips()
        return len({tips[i] for i in range(mesh.n)}) == 1

    wait_until(caught_up, 120, lambda: f"node {VICTIM} to catch up; {mesh.describe_tips()}",
               interval=0.2)
    height, _ = mesh.wait_converged(timeout=30)
    assert height > FAIL_AT and mesh.tip(VICTIM) == mesh.tip(others[0])
    assert_values(mesh, expected)
    for i in range(mesh.n):
        assert audit_node(mesh, i) == height
