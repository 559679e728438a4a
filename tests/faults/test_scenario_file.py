"""The scenario validator (tests/faults/scenario.py): every shipped file loads, and a
bad file is refused before anything runs, with an error naming the file and field."""
from __future__ import annotations

import pytest

from .proxy import CuttableProxy
from .runner import scenario_files
from .scenario import KILLED_PRIMARY, ScenarioError, load, parse

BASE = {"description": "d", "nodes": 4, "requests": 100}


def scenario(**over):
    data = dict(BASE)
    steps = over.pop("steps", None)
    data.update(over)
    if steps is not None:
        data["step"] = steps
    return parse(data, "t")


def refused(match: str, **over):
    with pytest.raises(ScenarioError, match=match) as exc:
        scenario(**over)
    assert str(exc.value).startswith("t: "), "the error must name the file"
    return str(exc.value)


def test_every_shipped_scenario_loads():
    names = {p.stem for p in scenario_files()}
    for p in scenario_files():
        load(p)
    required = {"kill_restart_backup", "kill_primary", "pause_beyond_window", "cut_off_backup",
                "restart_broker", "equivocating_primary", "silent_backup"}
    assert required <= names, f"missing scenarios: {required - names}"
    assert any(load(p).nodes == 7 for p in scenario_files()), "an n=7 scenario with two faults"


def test_a_good_scenario_parses():
    sc = scenario(settings={"checkpoint_interval": 4, "log_window": 8, "tick_ms": 2},
                  byzantine={"3": ["silent"]}, expect={"view_at_least": 0},
                  steps=[{"after": 10, "do": "restart_broker"}])
    assert sc.byzantine == {3: ("silent",)} and sc.f == 1
    assert sc.core_settings() == {"checkpoint_interval": 4, "log_window": 8}
    assert [s.label() for s in sc.steps] == ["restart_broker"]


@pytest.mark.parametrize("over, field", [
    ({"colour": "red"}, "colour: unknown key"),
    ({"nodes": 3}, "nodes: must be 4..64"),
    ({"nodes": "4"}, "nodes: must be an integer"),
    ({"requests": 0}, "requests: must be"),
    ({"settings": {"checkpoint_intervall": 4}}, "settings.checkpoint_intervall: unknown setting"),
    ({"settings": {"checkpoint_interval": 4, "log_window": 6}}, "settings: log_window"),
    ({"byzantine": {"4": "silent"}}, r"byzantine.4: node must be one of 0..3"),
    ({"byzantine": {"1": "sneaky"}}, "byzantine.1: unknown behaviour 'sneaky'"),
    ({"byzantine": {"1": ["forge", "nosig"]}}, "byzantine.1: .*exclude each other"),
    ({"byzantine": {"1": "silent", "2": "silent"}}, "byzantine: 2 Byzantine nodes, but n=4 tolerates only f=1"),
    ({"expect": {"view_at_least": 2, "view_at_most": 1}}, "expect: view_at_least is above"),
    ({"expect": {"views": 1}}, "expect.views: unknown expectation"),
])
def test_bad_top_level_fields_are_refused(over, field):
    refused(field, **over)


@pytest.mark.parametrize("steps, field", [
    ([{"after": 1, "do": "explode", "node": 1}], r"step\[0\].do: unknown action 'explode'"),
    ([{"after": 1, "do": "kill"}], r"step\[0\].node: kill needs a node"),
    ([{"after": 1, "do": "kill", "node": 4}], r"step\[0\].node: must be 0..3"),
    ([{"after": 1, "do": "restart_broker", "node": 1}], r"step\[0\].node: restart_broker takes no node"),
    ([{"after": 101, "do": "restart_broker"}], r"step\[0\].after: must be 0..100"),
    ([{"do": "restart_broker"}], r"step\[0\].after: is required"),
    ([{"after": 1, "do": "kill", "node": 1, "when": 3}], r"step\[0\].when: unknown key"),
    ([{"after": 5, "do": "kill", "node": 1}, {"after": 4, "do": "restart", "node": 1}],
     r"step\[1\].after: steps must be in order"),
    ([{"after": 1, "do": "restart", "node": 1}], r"step\[0\].node: cannot restart node 1: it is up, not down"),
    ([{"after": 1, "do": "pause", "node": 1}, {"after": 2, "do": "heal", "node": 1}],
     r"step\[1\].node: cannot heal node 1: it is paused, not cut"),
    ([{"after": 1, "do": "kill", "node": 1}, {"after": 2, "do": "kill", "node": 1}],
     r"step\[1\].node: cannot kill node 1: it is down"),
    ([{"after": 1, "do": "kill", "node": 1}, {"after": 2, "do": "pause", "node": 2}],
     r"step\[1\]: 2 faulty nodes at once \(1 \(down\), 2 \(paused\)\), but n=4 tolerates only f=1"),
    ([{"after": 1, "do": "kill", "node": 1}, {"after": 2, "do": "kill_primary"}],
     r"step\[1\]: 2 faulty nodes at once .*the killed primary"),
    ([{"after": 1, "do": "restart", "node": KILLED_PRIMARY}], r"step\[0\].node: no node killed by kill_primary"),
    ([{"after": 1, "do": "pause", "node": 2}], r"step: node 2 is still paused at the end; add a resume"),
    ([{"after": 1, "do": "cut", "node": 2}], r"step: node 2 is still cut at the end; add a heal"),
    ([{"after": 1, "do": "kill", "node": 2, "lose_queue": True}],
     r"step\[0\].lose_queue: only restart, resume, heal can lose the queue"),
    ([{"after": 1, "do": "pause", "node": 2}, {"after": 2, "do": "resume", "node": 2, "lose_queue": 1}],
     r"step\[1\].lose_queue: must be true or false"),
])
def test_bad_steps_are_refused(steps, field):
    refused(field, steps=steps)


def test_a_byzantine_node_and_a_crash_are_two_faults_too_many_for_n4_but_not_n7():
    steps = [{"after": 1, "do": "kill", "node": 1}, {"after": 2, "do": "restart", "node": 1}]
    refused(r"step\[0\]: 2 faulty nodes at once \(1 \(down\), 3 \(byzantine\)\)",
            byzantine={"3": "equivocate"}, steps=steps)
    sc = scenario(nodes=7, byzantine={"3": "equivocate"}, steps=steps)
    assert sc.f == 2


def test_a_returning_node_may_lose_its_queue():
    sc = scenario(steps=[{"after": 1, "do": "cut", "node": 2},
                         {"after": 2, "do": "heal", "node": 2, "lose_queue": True}])
    assert [s.label() for s in sc.steps] == ["cut 2", "heal 2 (queue lost)"]


def test_killing_a_byzantine_node_counts_it_once():
    sc = scenario(byzantine={"1": "silent"}, steps=[{"after": 1, "do": "kill", "node": 1}])
    assert [s.label() for s in sc.steps] == ["kill 1"]


def test_a_file_with_bad_toml_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("nodes = = 4\n")
    with pytest.raises(ScenarioError, match="broken.toml: not valid TOML"):
        load(p)


def test_proxy_url_keeps_credentials_and_vhost():
    proxy = CuttableProxy()
    try:
        assert proxy.url_for("amqp://guest:guest@127.0.0.1:5672/hdpbf-it-1") == \
            f"amqp://guest:guest@127.0.0.1:{proxy.port}/hdpbf-it-1"
        assert proxy.url_for("amqp://127.0.0.1:5672//") == f"amqp://127.0.0.1:{proxy.port}//"
    finally:
        proxy.close()


@pytest.mark.parametrize("over, field", [
    ({"steps": [{"after": 1, "do": "kill_broker_node"}]},
     r"step\[0\].do: kill_broker_node needs broker_nodes >= 3"),
    ({"broker_nodes": 3, "steps": [{"after": 1, "do": "kill_broker_node"},
                                   {"after": 2, "do": "kill_broker_node"}]},
     r"step\[1\].do: 2 of 3 broker nodes down at once: no majority left"),
    ({"broker_nodes": 3, "steps": [{"after": 1, "do": "restart_broker_node"}]},
     r"step\[0\].do: restart_broker_node, but no broker node is down"),
    ({"broker_nodes": 3, "steps": [{"after": 1, "do": "restart_broker"}]},
     r"step\[0\].do: restart_broker stops the single broker"),
    ({"broker_nodes": 3, "steps": [{"after": 1, "do": "kill_broker_node", "node": 1}]},
     r"step\[0\].node: kill_broker_node takes no node"),
    ({"broker_nodes": 0}, "broker_nodes: must be 1..9"),
])
def test_broker_node_faults_need_a_cluster_and_keep_its_majority(over, field):
    refused(field, **over)


def test_a_broker_node_may_die_and_come_back_on_a_cluster_of_five_twice():
    sc = scenario(broker_nodes=5, steps=[{"after": 1, "do": "kill_broker_node"},
                                         {"after": 2, "do": "kill_broker_node"},
                                         {"after": 3, "do": "restart_broker_node"}])
    assert sc.broker_nodes == 5 and [s.do for s in sc.steps][-1] == "restart_broker_node"
