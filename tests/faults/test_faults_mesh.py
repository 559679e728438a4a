"""Every fault scenario (tests/faults/*.toml) on the real mesh: n Celery workers on the
real RabbitMQ (marked broker and slow; they FAIL, never skip, without the services).
The same runner as on the simulator checks the same properties; recovery times are
printed in seconds (pytest -s) and merged into $HDPBF_FAULTS_REPORT when set.

Every scenario runs with both vote routings (pbft_tasks/core/collector.py), as on the
simulator: all-to-all, and the primary as collector of PREPAREs and COMMITs.

The broker-restart scenario disturbs everything on this RabbitMQ, so it runs last, in a
test of its own, and waits while /tmp/hdpbf-quiet exists (someone is benchmarking)."""
from __future__ import annotations

import pytest

from pbft_tasks.core.collector import VOTE_ROUTINGS
from tests.services import wait_not_quiet

from .mesh_backend import MeshBackend
from .runner import play, scenario_files
from .scenario import load

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SCENARIOS = [load(p) for p in scenario_files()]
# Scenarios on a broker cluster run in tests/broker_cluster/test_fault_scenarios.py.
ORDINARY = [s for s in SCENARIOS if "restart_broker" not in s.actions() and s.broker_nodes == 1]
BROKER = [s for s in SCENARIOS if "restart_broker" in s.actions()]


def _play(sc, make_mesh, votes: str):  # noqa: F811
    outcome = play(sc, MeshBackend(sc, make_mesh, votes=votes))
    assert outcome.ok, outcome.error


@pytest.mark.parametrize("votes", VOTE_ROUTINGS)
@pytest.mark.parametrize("sc", ORDINARY, ids=[s.name for s in ORDINARY])
def test_scenario_on_the_real_mesh(sc, votes, make_mesh):  # noqa: F811
    _play(sc, make_mesh, votes)


def test_broker_restart_scenarios_exist():
    assert BROKER, "a scenario that restarts RabbitMQ is required (restart_broker.toml)"


@pytest.mark.parametrize("votes", VOTE_ROUTINGS)
@pytest.mark.parametrize("sc", BROKER, ids=[s.name for s in BROKER])
def test_broker_restart_scenario_on_the_real_mesh_last(sc, votes, make_mesh):  # noqa: F811
    wait_not_quiet()  # before the mesh starts, not with updates in flight
    _play(sc, make_mesh, votes)
