"""``hdpbf up`` / ``status`` / ``down`` and Flower on real RabbitMQ and Redis, 4 nodes.

One launch is shared by the module (starting 8 processes costs seconds on two cores);
the tests run in file order and the destructive ones (kill -9 a worker, ``down``) come
last.  Every check reads what an operator would: the commands' exit codes and JSON,
Flower's HTTP API and /metrics, the API reader's HTTP answers, the process table.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess

import psutil
import pytest

from tests.meshkit import wait_until
from tests.processes import alive
from tests.services import http_get

from .launchkit import commit_updates, hdpbf

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NAMES = ["node0", "node1", "node2", "node3", "cmp1", "cmp2", "api", "flower"]
PBFT_TASKS = ("pbft.request", "pbft.preprepare", "pbft.prepare", "pbft.commit")


def heights(launch) -> dict[int, int | None]:
    return {n["id"]: n["height"] for n in launch.status()[1]["nodes"]}


def test_up_starts_every_process_with_its_log_and_status_is_healthy(launched):
    run = launched.run()
    assert [p["name"] for p in run["processes"]] == NAMES
    for p in run["processes"]:
        assert p["pid"] > 0 and p["start_ticks"] and p["command"]
        assert (launched.data_dir / "logs" / f"{p['name']}.log").exists()
        assert psutil.Process(p["pid"]).cmdline() == p["command"], p["name"]
    worker = next(p for p in run["processes"] if p["name"] == "node2")["command"]
    # task events only once Flower turns them on (test_flower_metrics_count_pbft_tasks_by_name)
    assert worker[worker.index("-Q") + 1] == "node.2" and "-E" not in worker
    # No secret on any command line: Flower's password and the broker's are elsewhere.
    password = launched.flower_auth()[1]
    assert not any(password in a or "guest:guest" in a
                   for p in run["processes"] for a in p["command"])
    assert stat.S_IMODE(os.stat(launched.data_dir / "flower.auth").st_mode) == 0o600
    assert "flower.auth" in launched.up_result.stdout

    code, report = launched.status()
    assert code == 0, report
    assert report["healthy"] is True
    assert [n["id"] for n in report["nodes"]] == [0, 1, 2, 3]
    for n in report["nodes"]:
        assert n["healthy"] and n["process"] == "running" and n["answered"], n
        assert n["view"] == 0 and n["lag"] == 0
    assert {p["name"]: p["healthy"] for p in report["processes"]} == {
        "cmp1": True, "cmp2": True, "api": True, "flower": True}
    # Each node's Prometheus endpoint (pbft_tasks/metrics.py) on the base the test chose.
    for n in report["nodes"]:
        assert n["metrics"] == f"http://127.0.0.1:{launched.metrics_base + n['id']}/metrics"
        assert n["head_age_s"] is not None, n


def test_up_twice_refuses_and_shows_status(launched):
    before = launched.run()
    res = launched.up()
    assert res.returncode == 1, res.stdout
    assert "Already up" in res.stdout and "hdpbf down" in res.stdout
    assert "max height" in res.stdout and "other processes" in res.stdout  # hdpbf status
    assert launched.run() == before


def test_updates_reach_every_node_and_status_shows_equal_heights(launched):
    start = max(h or 0 for h in heights(launched).values())
    commit_updates(launched, 5)
    final = wait_until(lambda: (lambda hs: hs if len(set(hs.values())) == 1
                                and min(hs.values()) > start else None)(heights(launched)),
                       30, lambda: f"equal heights above {start}; now {heights(launched)}",
                       interval=0.3)
    code, report = launched.status()
    assert code == 0 and len({n["head"] for n in report["nodes"]}) == 1, report
    assert all(n["lag"] == 0 for n in report["nodes"]), final


def test_flower_api_lists_every_node_worker_on_its_own_queue(launched):
    url = f"http://127.0.0.1:{launched.flower_port}/api/workers"
    assert http_get(url)[0] == 401  # basic auth is on
    auth = launched.flower_auth()

    def workers():
        code, body = http_get(url, auth)
        assert code == 200, body
        found = json.loads(body)
        return found if len(found) == 4 and all(w.get("active_queues") for w in found.values()) else None

    found = wait_until(workers, 30, "Flower to list 4 workers with their queues", interval=0.5)
    by_node = {name.split("@")[0]: w for name, w in found.items()}
    assert sorted(by_node) == ["node0", "node1", "node2", "node3"], sorted(found)
    for i in range(4):
        queues = [q["name"] for q in by_node[f"node{i}"]["active_queues"]]
        assert queues == [f"node.{i}"], (i, queues)


def test_flower_metrics_count_pbft_tasks_by_name(launched):
    # Workers send task events from when Flower turns them on (its enable_events, at its
    # start and every 5 s): updates committed before that are not counted, so one more
    # update is committed on every look until Flower counts every pbft task.
    def counts():
        commit_updates(launched, 1)
        code, body = http_get(f"http://127.0.0.1:{launched.flower_port}/metrics")
        assert code == 200
        seen: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line.startswith("flower_events_total{") and 'type="task-succeeded"' in line:
                task = line.split('task="', 1)[1].split('"', 1)[0]
                seen[task] = seen.get(task, 0) + float(line.rsplit(" ", 1)[1])
        return seen if all(seen.get(t, 0) > 0 for t in PBFT_TASKS) else None

    seen = wait_until(counts, 30, "Flower's /metrics to count every pbft task", interval=0.5)
    # 4 replicas: each block is 3 prepares and 4 commits received per node.
    assert seen["pbft.commit"] >= seen["pbft.preprepare"] and seen["pbft.prepare"] > 0, seen


def test_api_reader_answers_step_2_then_step_1_after_the_commit(launched):
    url = f"http://127.0.0.1:{launched.api_port}/console/vm-launch?host=cmp1"
    code, body = http_get(url)
    assert code == 200, body
    first = json.loads(body)
    assert first["step"] == 2 and first["connect_info"]["host"] == "cmp1"
    token = first["connect_info"]["token"]

    def step1():
        answer = json.loads(http_get(url)[1])
        return answer if answer["step"] == 1 else None

    second = wait_until(step1, 20, "the API reader to answer from its ledger (step 1)")
    assert second["connect_info"]["token"] == token
    assert second["connect_info"] == first["connect_info"]
    assert http_get(f"http://127.0.0.1:{launched.api_port}/console/unknown-vm")[0] == 400
    api = next(p for p in launched.status()[1]["processes"] if p["name"] == "api")
    assert api["metrics"] == f"http://127.0.0.1:{launched.metrics_base + 4}/metrics"
    assert api["step2_calls"] >= 1 and api["step1_answers"] >= 1, api


def test_kill_9_of_a_worker_makes_status_unhealthy(launched):
    victim = launched.pid("node3")
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not alive(victim), 10, "node3 to die")
    code, report = launched.status("--timeout", "1.5")
    assert code == 1 and report["healthy"] is False
    bad = {n["id"]: n for n in report["nodes"] if not n["healthy"]}
    assert list(bad) == [3], report["nodes"]
    assert bad[3]["process"] == "gone" and bad[3]["answered"] is False
    res = hdpbf("status", "--data-dir", str(launched.data_dir), "--timeout", "1.5")
    assert res.returncode == 1 and "UNHEALTHY" in res.stdout


def test_down_stops_exactly_what_up_started(launched):
    # An unrelated process whose pid a stale record names (as after pid reuse).
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        run = launched.run()
        pids = {p["name"]: p["pid"] for p in run["processes"]}
        ghost = dict(run["processes"][0], name="ghost", pid=bystander.pid)
        run["processes"].append(ghost)
        (launched.data_dir / "run" / "processes.json").write_text(json.dumps(run))

        res = hdpbf("down", "--data-dir", str(launched.data_dir))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "pid reused (left alone)" in res.stdout
        assert bystander.poll() is None, "down killed an unrelated process"
        for name, pid in pids.items():
            assert not alive(pid), name
        assert not (launched.data_dir / "run" / "processes.json").exists()

        again = hdpbf("down", "--data-dir", str(launched.data_dir))
        assert again.returncode == 0 and "nothing to stop" in again.stdout
        code, report = launched.status()
        assert code == 1 and report["running"] is False
    finally:
        bystander.kill()
        bystander.wait()


def test_up_again_reuses_the_mesh_and_its_ledgers(launched):
    """After ``down``, ``up`` on the same data dir starts the same mesh (no new keys, no
    purge) and the nodes come back at the height they had."""
    mesh_json = (launched.data_dir / "mesh.json").read_text()
    with open(launched.data_dir / "data" / "node0" / "ledger.sqlite", "rb"):
        pass  # the ledger is still there
    res = launched.up()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "new mesh" not in res.stdout and launched.run()["new_mesh"] is False
    assert (launched.data_dir / "mesh.json").read_text() == mesh_json
    code, report = launched.status()
    assert code == 0, report
    assert len({n["height"] for n in report["nodes"]}) == 1 and report["max_height"] >= 2
