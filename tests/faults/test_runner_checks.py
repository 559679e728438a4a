"""The runner's checks can fail: the simulator backend with one thing broken on purpose
(a forked ledger, a lost update, a node that never comes back, a lone view) must make
the scenario fail with the property named."""
from __future__ import annotations

from .runner import Runner
from .scenario import parse
from .sim_backend import SimBackend

SETTINGS = {"checkpoint_interval": 4, "log_window": 8, "max_batch": 4}


def scenario(steps=(), **over):
    data = {"description": "d", "nodes": 4, "requests": 40, "settings": SETTINGS,
            "step": list(steps), **over}
    return parse(data, "t")


def run(backend_cls, sc):
    out = Runner(sc, backend_cls(sc), limit=300).run()
    assert not out.ok, "the sabotage went unnoticed"
    return out.error


def test_a_healthy_run_passes():
    sc = scenario()
    assert Runner(sc, SimBackend(sc)).run().ok


def test_a_forked_ledger_is_a_safety_failure():
    class Forked(SimBackend):
        def hash_at(self, i, height):  # node 0 (the longest chain) has other blocks
            real = super().hash_at(i, height)
            return "f" * 64 if i == 0 and height > 3 else real
    assert "SAFETY: node" in run(Forked, scenario())


def test_an_acknowledged_update_missing_on_a_node_is_lost():
    class Forgetful(SimBackend):
        def values(self, i, keys):
            got = super().values(i, keys)
            if i == 1:
                got[keys[0]] = "<missing>"
            return got
    assert "LOST UPDATES: node 1: 1 of 40" in run(Forgetful, scenario())


def test_a_node_that_never_catches_up_fails_the_scenario():
    class NoRestart(SimBackend):
        def restart(self, i):
            self.down.discard(i)   # says it is back, but the replica stays down
    steps = [{"after": 10, "do": "kill", "node": 2}, {"after": 60, "do": "restart", "node": 2}]
    err = run(NoRestart, scenario(steps, requests=80, window=4))
    assert "no recovery, one head and one view on the honest live nodes" in err


def test_a_node_alone_in_another_view_fails_the_scenario():
    class Lonely(SimBackend):
        def views(self):
            v = super().views()
            v[3] = v[3] + 4
            return v
    err = run(Lonely, scenario())
    assert "one view" in err and "3: 4" in err
