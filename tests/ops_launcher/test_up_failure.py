"""``hdpbf up`` when a process cannot start: it says which and why, stops everything it
had started, and leaves no record behind (real RabbitMQ and Redis; never skipped)."""
from __future__ import annotations

import os

import pytest

from pbft_tasks.topology import init_mesh, node_key_path
from tests.processes import kill_all, processes_of
from tests.services import wait_not_quiet

from .launchkit import Launch

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_up_stops_what_it_started_when_a_worker_refuses_to_start(tmp_path, broker_url):
    wait_not_quiet("starting worker processes")
    launch = Launch(tmp_path / "hdpbf-data", broker_url)
    init_mesh(launch.data_dir, broker_url=broker_url, result_backend=launch.backend,
              readers=("api",), clients=("admin", "cmp1", "cmp2"))  # one per compute host
    os.chmod(node_key_path(launch.data_dir, 2), 0o644)  # node 2's worker exits with 78
    try:
        res = launch.up()
        assert res.returncode == 1, res.stdout
        assert "up failed: node2" in res.stdout and "refusing to start" in res.stdout, res.stdout
        assert "stopped what was started" in res.stdout
        assert not (launch.data_dir / "run" / "processes.json").exists()
        assert "refusing to start" in launch.log("node2")
    finally:
        left = processes_of("-", str(launch.data_dir))
        kill_all(left)
    assert not left, f"processes of the failed up survived (now killed): {left}"
