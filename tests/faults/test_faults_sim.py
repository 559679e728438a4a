"""Every fault scenario (tests/faults/*.toml) on the in-process simulator: fast, no
broker.  The runner (runner.py) checks safety, that nothing acknowledged is lost and
that each fault is recovered from; recovery times are printed in ticks (pytest -s) and
merged into $HDPBF_FAULTS_REPORT when set."""
from __future__ import annotations

import pytest

from pbft_tasks.core.collector import VOTE_ROUTINGS

from .runner import play, scenario_files
from .scenario import load
from .sim_backend import SimBackend

FILES = scenario_files()


@pytest.mark.parametrize("votes", VOTE_ROUTINGS)
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario_on_the_simulator(path, votes):
    """Every scenario with both vote routings (pbft_tasks/core/collector.py)."""
    sc = load(path)
    outcome = play(sc, SimBackend(sc, votes=votes))
    assert outcome.ok, outcome.error
