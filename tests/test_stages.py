"""The per-stage CPU accounting of a node's task runs (pbft_tasks/stages.py), through the
real lean strategy and a real NodeRuntime on an embedded mesh."""
from __future__ import annotations

import threading

from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import init_mesh
from pbft_tasks.stages import STAGES, StageClock


def burn(ms: float) -> None:
    import time
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


def test_laps_charge_the_time_since_the_previous_reading_to_their_stage():
    c = StageClock()
    c.begin()
    burn(3)
    c.lap("verify")
    burn(1)
    c.end("ack")
    assert c.runs == 1
    assert c.ns["verify"] >= 3e6 and 1e6 <= c.ns["ack"] < c.ns["verify"]
    assert set(c.snapshot()["ns"]) == set(STAGES)


def test_laps_outside_a_run_or_from_another_thread_are_ignored():
    c = StageClock()
    c.lap("step")  # no run: nothing
    c.begin()
    t = threading.Thread(target=lambda: (burn(2), c.lap("ledger")))
    t.start()
    t.join()
    c.end("ack")
    assert c.ns["step"] == 0 and c.ns["ledger"] == 0 and c.runs == 1


def test_a_node_reports_its_stages_in_its_status(tmp_path):
    init_mesh(tmp_path, nodes=4)
    with EmbeddedMesh(str(tmp_path / "mesh.json")) as mesh:
        rt = mesh.nodes[1]
        client = mesh.client(timeout=5.0)
        # embedded mode has no strategy: wrap each delivery to node 1 in a run, as it does
        handle = rt.handle

        def as_a_run(wire, expected=None):
            rt.stages.begin()
            try:
                return handle(wire, expected)
            finally:
                rt.stages.end("ack")

        mesh.transport.nodes[1] = as_a_run
        client.put("k", 1, timeout=10)
        stages = rt.status()["cpu_stages"]
        assert stages["runs"] >= 3  # a pre-prepare, prepares, commits
        for stage in ("parse", "verify", "step", "ledger", "sign", "publish"):
            assert stages["ns"][stage] > 0, stage
