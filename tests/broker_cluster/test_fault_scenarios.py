"""The fault scenarios that need a broker cluster (``broker_nodes`` in tests/faults/*.toml:
kill_broker_node / restart_broker_node), played by the same runner and checks as every
other scenario, on real workers over this module's 3-node RabbitMQ cluster, with both
vote routings (pbft_tasks/core/collector.py)."""
from __future__ import annotations

import pytest

from pbft_tasks.core.collector import VOTE_ROUTINGS
from tests.faults.mesh_backend import MeshBackend
from tests.faults.runner import play, scenario_files
from tests.faults.scenario import load
from tests.meshkit import Mesh

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CLUSTER = [s for s in (load(p) for p in scenario_files()) if s.broker_nodes > 1]


def test_a_broker_node_scenario_exists():
    assert CLUSTER, "a scenario with kill_broker_node is required (kill_broker_node.toml)"


@pytest.mark.parametrize("votes", VOTE_ROUTINGS)
@pytest.mark.parametrize("sc", CLUSTER, ids=[s.name for s in CLUSTER])
def test_broker_node_scenario_on_a_real_cluster(sc, votes, whole, tmp_path):
    assert sc.broker_nodes == len(whole.nodes), "this module's cluster has 3 nodes"
    meshes: list[Mesh] = []

    def make_mesh(n: int, start: bool = True, **settings):
        m = Mesh(tmp_path / f"mesh{len(meshes)}", n, whole.broker_url, queue_type="quorum",
                 **settings)
        meshes.append(m)
        return m.start() if start else m

    try:
        outcome = play(sc, MeshBackend(sc, make_mesh, cluster=whole, votes=votes))
    finally:
        for m in meshes:
            m.stop()
    assert outcome.ok, outcome.error
