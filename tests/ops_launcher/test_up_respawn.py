"""``hdpbf up`` restarts a worker that fails hard, on real RabbitMQ and
Redis.  Every worker is started with the fault-test hook HDPBF_FAIL_AT_SEQ=2: each one
raises right after block 2 is in its ledger and exits 70 without acknowledging; its
respawner (mesh/ops/respawn.py) starts it again, it rebuilds from its ledger (block 2
is not executed twice, so the hook does not fire again) and the mesh goes on."""
from __future__ import annotations

import pytest

from tests.meshkit import wait_until
from tests.services import wait_not_quiet

from tests.processes import kill_all, processes_of

from .launchkit import Launch, commit_updates, hdpbf

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NODES = ["node0", "node1", "node2", "node3"]


def test_up_restarts_a_worker_that_failed_hard_and_the_mesh_goes_on(tmp_path, broker_url,
                                                                    monkeypatch):
    wait_not_quiet("starting worker processes")
    launch = Launch(tmp_path / "hdpbf-data", broker_url)
    monkeypatch.setenv("HDPBF_FAIL_AT_SEQ", "2")
    res = launch.up()
    try:
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
        recorded = {name: launch.pid(name) for name in NODES}
        commit_updates(launch, 1)
        commit_updates(launch, 1)  # block 2: every worker fails hard once, is restarted

        def all_restarted():
            return all("exited 70 (our own bug, failed hard)" in launch.log(n) for n in NODES)
        wait_until(all_restarted, 60, lambda: "every worker to fail hard once and be "
                   "restarted; logs:\n" + "\n".join(launch.log(n)[-600:] for n in NODES))
        for name in NODES:
            log = launch.log(name)
            assert "injected bug at block 2" in log and "our own bug" in log, log[-2000:]
            assert log.count("exited 70") == 1, log[-2000:]  # block 2 is not executed twice

        commit_updates(launch, 3)
        wait_until(lambda: launch.status()[0] == 0, 60,
                   lambda: f"status healthy after the restarts: {launch.status()[1]}")
        code, report = launch.status()
        heights = {n["id"]: n["height"] for n in report["nodes"]}
        assert len(set(heights.values())) == 1 and heights[0] >= 3, heights
        # the recorded processes (the respawners) never changed: down still stops them
        assert {name: launch.pid(name) for name in NODES} == recorded
    finally:
        down = hdpbf("down", "--data-dir", str(launch.data_dir), timeout=120)
        left = processes_of("-", str(launch.data_dir))
        kill_all(left)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not left, f"processes of this up survived down (now killed): {left}"
