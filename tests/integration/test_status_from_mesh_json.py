"""``hdpbf status`` for a mesh it did not start: from its mesh.json alone, every node
asked over the broker (what compose's healthchecks and client run; tests/compose runs it
in the real stack).  Before, status knew only meshes started by ``hdpbf up`` and said
``not running: nothing recorded`` for any other.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mesh.cli import main

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def status(*args: str, env: dict | None = None):
    res = CliRunner().invoke(main, ["status", *args], env=env)
    return res.exit_code, res.output


def test_status_of_a_mesh_from_its_mesh_json(make_mesh, tmp_path, monkeypatch):
    mesh = make_mesh(4)
    client = mesh.client(timeout=5.0)
    client.put("seen", 1, timeout=20)
    mesh.wait_converged(timeout=60, at_least=1)
    config = str(mesh.config_path)

    code, out = status("--config", config, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert [(n["id"], n["healthy"], n["height"]) for n in report["nodes"]] == \
        [(i, True, report["max_height"]) for i in range(4)]
    assert report["max_height"] >= 1

    # $HDPBF_CONFIG, as in a compose container, with no `hdpbf up` record where it runs
    monkeypatch.chdir(tmp_path)
    code, out = status(env={"HDPBF_CONFIG": config})
    assert code == 0 and "all healthy" in out, out

    mesh.local.kill(2)
    code, out = status("--config", config, "--json", "--timeout", "2")
    assert code == 1
    nodes = {n["id"]: n for n in json.loads(out)["nodes"]}
    assert not nodes[2]["healthy"] and "no pbft.status answer" in nodes[2]["reason"]
    assert all(nodes[i]["healthy"] for i in (0, 1, 3))
    # a healthcheck judges its own node only
    assert status("--config", config, "--node", "0", "--timeout", "2")[0] == 0
    assert status("--config", config, "--node", "2", "--timeout", "2")[0] == 1
    code, out = status("--config", config, "--node", "9")
    assert code == 2 and "not in" in out, out


def test_status_through_another_broker_address(make_mesh):
    """--broker/--backend (or HDPBF_BROKER_URL): mesh.json names the broker as the
    stack's network knows it; the host reaches it at a published port."""
    mesh = make_mesh(4)
    cfg = mesh.cfg
    broken = mesh.base / "elsewhere.json"
    data = json.loads(mesh.config_path.read_text())
    data["broker_url"] = "amqp://guest:guest@127.0.0.1:1//"
    broken.write_text(json.dumps(data))
    code, out = status("--config", str(broken), "--json", "--timeout", "2")
    assert code == 1 and json.loads(out)["broker_error"], out
    code, out = status("--config", str(broken), "--timeout", "2",
                       env={"HDPBF_BROKER_URL": cfg.broker_url})
    assert code == 0 and "all healthy" in out, out


def test_status_trace_follows_a_request_across_the_nodes(make_mesh):
    """``hdpbf status --trace --follow CLIENT/TS``: every node answers ``pbft.trace``
    over the broker, and on every node the request's seq was pre-prepared (or, on the
    primary, the request received), voted on and executed, each step with its own id."""
    mesh = make_mesh(4)
    client = mesh.client(timeout=5.0)
    req = client.put_request("traced", 1)
    client.wait(client.submit([req]), 20)
    mesh.wait_converged(timeout=60, at_least=1)
    key = f"{req.client}/{req.timestamp}"
    code, out = status("--config", str(mesh.config_path), "--trace", "--follow", key, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert sorted(report["trace"]) == ["0", "1", "2", "3"]
    followed = report["followed"]["nodes"]
    for node, entries in followed.items():
        stimuli = [e["stimulus"] for e in entries]
        assert any(x.startswith("execute n") for e in entries for x in e["actions"]), (node, stimuli)
        assert any(s.startswith("Commit ") for s in stimuli), (node, stimuli)
        assert all(e["id"].startswith(f"{node}.") for e in entries)
    assert f"Request {key}" in [e["stimulus"] for e in followed["0"]]
    code, out = status("--config", str(mesh.config_path), "--trace", "--last", "5")
    assert code == 0 and "stimuli" in out, out
