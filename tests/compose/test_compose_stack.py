"""``docker compose up`` for real: the stack of compose/docker-compose.yml on a private
Docker daemon, driven by the commands of docs/operations/compose.md.

The tests run in file order on one stack (each leaves it as the next expects): up without
init stops before creating anything; init builds the image; every service healthy; a put
through the client service read back and audited on every node; ``hdpbf status`` inside
the stack and from the host; Flower's workers; Prometheus's targets and the dashboards'
queries; an upgrade builds once, and its ``up``, after a ``down``, keeps ledgers and
RabbitMQ's queues; a
killed node comes back and catches up; a node's ledger backed up and restored; the
cluster profile; a full ``down``; and every command of the operator page was run.
Grafana has no stand-in (no Debian package): it is not started (``--scale grafana=0``).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from compose_stack import DOC, doc_commands, wait_until

pytestmark = pytest.mark.slow

DC = "docker compose -f compose/docker-compose.yml"
NO_GRAFANA = "--scale grafana=0"
NODES = range(4)
UP = f"{DC} up -d --wait"


def all_healthy(project, profiles: str = "") -> dict:
    """Every running service of the stack healthy (or running, for those without a
    healthcheck); the rows, for the assertion message."""
    rows = project.services(profiles)
    bad = {s: (r["State"], r.get("Health")) for s, r in rows.items()
           if r["State"] != "running" or r.get("Health") not in ("", "healthy", None)}
    assert not bad, f"not healthy: {bad}"
    return rows


def status_json(project) -> dict:
    res = project.compose("--profile client run --rm client hdpbf status --json")
    assert res.stdout.strip(), res.stderr
    return json.loads(res.stdout)


def get_on(project, node: int, key: str) -> subprocess.CompletedProcess:
    return project.sh(f"{DC} exec node{node} hdpbf get {key}", check=False)


# -- start ------------------------------------------------------------------------------

def test_up_without_init_stops_before_creating_anything(project):
    project.sh("cp compose/.env.example compose/.env")
    (project.dir / "compose" / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in project.values.items()))
    res = project.sh(UP, extra=NO_GRAFANA, check=False)
    assert res.returncode != 0
    assert "mesh/mesh.env" in res.stderr, res.stderr
    made = project.dk.docker("ps", "-aq").stdout.split()
    nets = [n for n in project.dk.docker("network", "ls", "-q", "--filter", "name=compose").stdout.split()]
    assert made == [] and nets == [], f"containers {made}, networks {nets} created before failing"


def test_init_builds_the_image_and_up_brings_every_service_up_healthy(project):
    res = project.sh(f"{DC} --profile init run --rm init", timeout=900)
    built = re.findall(r"^\s*(\S+)\s+Built", res.stdout + res.stderr, re.M)
    assert built in ([], ["init"]), built
    for name in ("mesh.json", "mesh.env", "keys/client-admin.key", "keys/node3.key"):
        assert (project.dir / "compose" / "mesh" / name).is_file(), name
    project.sh(UP, extra=NO_GRAFANA, timeout=600)
    rows = all_healthy(project)
    assert {f"node{i}" for i in NODES} | {"follower1", "flower", "nova-api", "rabbitmq"} <= set(rows)
    project.sh(f"{DC} ps")


# -- use ----------------------------------------------------------------------------------

def test_put_through_the_client_read_and_audited_on_every_node(project):
    res = project.sh(f"{DC} --profile client run --rm client hdpbf put greeting '\"hello\"'")
    assert "committed 'greeting'" in res.stdout, res.stdout
    for i in NODES:
        wait_until(lambda: get_on(project, i, "greeting").returncode == 0, 60,
                   f"node {i} to have 'greeting'")
        assert get_on(project, i, "greeting").stdout.startswith('"hello"')
    project.sh(f"{DC} exec node1 hdpbf get greeting")
    for i in NODES:
        res = project.sh(f"{DC} exec node{i} hdpbf verify --node {i}")
        assert "intact" in res.stdout, res.stdout
    project.sh(f"{DC} exec node1 hdpbf verify --node 1")


def test_status_from_mesh_json_inside_the_stack_and_from_the_host(project):
    res = project.sh(f"{DC} --profile client run --rm client hdpbf status")
    assert "all healthy" in res.stdout, res.stdout
    res = project.sh(f"{DC} exec node0 hdpbf status --node 0")
    assert "all healthy (node 0)" in res.stdout, res.stdout
    res = project.sh('(set -a; . compose/.env; '
                     'HDPBF_BROKER_URL="amqp://$RABBITMQ_USER:$RABBITMQ_PASSWORD@127.0.0.1:$RABBITMQ_PORT//" '
                     'HDPBF_RESULT_BACKEND="redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0" '
                     'hdpbf status --config compose/mesh/mesh.json)')
    assert "all healthy" in res.stdout, res.stdout
    report = status_json(project)
    assert [n["id"] for n in report["nodes"] if n["healthy"]] == list(NODES)
    assert [f["name"] for f in report["followers"] if f["healthy"]] == ["follower1"]
    # what the healthchecks run, and their last answer (docker inspect keeps it)
    config = json.loads(project.compose("config --format json").stdout)
    for svc in ("node2", "follower1"):
        assert "hdpbf status" in " ".join(config["services"][svc]["healthcheck"]["test"])
        cid = project.compose(f"ps -q {svc}").stdout.strip()
        health = json.loads(project.dk.docker("inspect", cid).stdout)[0]["State"]["Health"]
        assert health["Status"] == "healthy" and "all healthy" in health["Log"][-1]["Output"]


def test_flower_lists_one_worker_per_node(project):
    v = project.values
    workers = wait_until(lambda: project.http("FLOWER_PORT", "/api/workers?refresh=1",
                                              auth=(v["FLOWER_USER"], v["FLOWER_PASSWORD"])),
                         60, "Flower's /api/workers")
    names = sorted(w.split("@")[0] for w in workers)
    assert names == [f"node{i}" for i in NODES], names
    for name, info in workers.items():
        queues = [q["name"] for q in info.get("active_queues") or []]
        assert f"node.{name.split('@')[0][4:]}" in queues, (name, queues)


def test_prometheus_scrapes_every_target_and_every_dashboard_query_runs(project):
    def targets_up():
        active = project.http("PROMETHEUS_PORT", "/api/v1/targets")["data"]["activeTargets"]
        down = [t["scrapeUrl"] for t in active if t["health"] != "up"]
        return (len(active) == 7 and not down) or None
    wait_until(targets_up, 90, "every Prometheus target up (4 nodes, follower1, nova-api, flower)")
    import urllib.parse
    variables = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m",
                 "${node}": ".+", "$node": ".+"}  # what Grafana substitutes
    exprs = []
    for path in sorted((project.dir / "dashboards").glob("*.json")):
        def walk(x):
            if isinstance(x, dict):
                if isinstance(x.get("expr"), str):
                    exprs.append((path.name, x["expr"]))
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)
        walk(json.loads(path.read_text()))
    assert exprs, "no dashboard query found"
    for fname, expr in exprs:
        for var, value in variables.items():
            expr = expr.replace(var, value)
        res = project.http("PROMETHEUS_PORT", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert res["status"] == "success", (fname, expr, res)
    res = project.http("PROMETHEUS_PORT", "/api/v1/query?" + urllib.parse.urlencode(
        {"query": "hdpbf_ledger_height"}))
    assert len(res["data"]["result"]) >= 4, res


def test_logs(project):
    res = project.sh(f"{DC} logs --tail 50 node0")
    assert "node0" in res.stdout


# -- change ---------------------------------------------------------------------------------

def test_upgrade_builds_the_image_once(project):
    """The upgrade's ``build``; its ``up`` is the next test's, after a ``down`` (one
    start of the stack fewer: an ``up`` with the image unchanged re-creates nothing)."""
    res = project.sh(f"{DC} build", timeout=900)
    out = res.stdout + res.stderr
    built = set(re.findall(r"^\s*(\S+)\s+Built\s*$", out, re.M))
    built |= set(re.findall(r"^#\d+ \[([a-z0-9-]+) ", out, re.M)) - {"internal"}
    assert built == {"node0"}, f"services that built the image: {built}\n{out[-3000:]}"


def _marker_queue(project, action: str) -> int | None:
    """A durable queue with one persistent message, through the published broker port:
    ``declare`` it, or ``count`` its messages (None if the queue is gone)."""
    from kombu import Connection, Exchange, Producer, Queue
    with Connection(project.broker_url(), connect_timeout=10) as conn:
        conn.ensure_connection(max_retries=3)
        ch = conn.channel()
        if action == "declare":
            q = Queue("compose-test.kept", durable=True, channel=ch)
            q.declare()
            Producer(ch).publish({"kept": True}, routing_key="compose-test.kept",
                                 delivery_mode=2, exchange=Exchange(""), serializer="json")
            return 1
        try:
            _, count, _ = ch.queue_declare("compose-test.kept", passive=True)
            return count
        except Exception:  # noqa: BLE001  (404: the queue is gone)
            return None


def test_down_and_up_after_the_upgrade_keep_the_ledgers_and_rabbitmqs_queues(project):
    _marker_queue(project, "declare")
    before = status_json(project)["max_height"]
    project.sh(f"{DC} --profile '*' down")
    assert project.dk.docker("ps", "-aq").stdout.split() == []
    project.sh(UP, extra=NO_GRAFANA, timeout=600)
    all_healthy(project)
    assert _marker_queue(project, "count") == 1, "RabbitMQ lost its queue across down/up"
    report = status_json(project)
    assert report["max_height"] >= before
    for i in NODES:
        assert get_on(project, i, "greeting").returncode == 0


def test_a_killed_node_comes_back_and_catches_up(project):
    cid = project.compose("ps -q node2").stdout.strip()
    pid = int(project.dk.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)
    os.kill(pid, signal.SIGKILL)
    project.sh(f"{DC} --profile client run --rm client hdpbf put after-kill 1", timeout=120)
    wait_until(lambda: project.dk.docker("inspect", "-f", "{{.RestartCount}}", cid).stdout.strip() != "0",
               60, "Docker to restart node2")
    wait_until(lambda: all_healthy(project), 180, "every service healthy after the kill")
    project.sh(f"{DC} --profile client run --rm client hdpbf put after-restart 1", timeout=120)
    for key in ("after-kill", "after-restart"):
        wait_until(lambda: get_on(project, 2, key).returncode == 0, 120,
                   f"node2 to catch up with {key!r}")


def test_back_up_and_restore_a_nodes_ledger(project):
    project.sh(f"{DC} stop node3")
    project.sh(f'{DC} run --rm --no-deps -u 0 -v "$PWD/backup:/backup" node3 '
               f'tar -C /etc/hdpbf/data -czf /backup/node3.tar.gz .')
    project.sh(f"{DC} start node3")
    assert (project.dir / "backup" / "node3.tar.gz").stat().st_size > 0
    project.sh(f"{DC} --profile client run --rm client hdpbf put after-backup 1", timeout=120)
    wait_until(lambda: get_on(project, 3, "after-backup").returncode == 0, 60,
               "node3 to commit 'after-backup' before it is restored")
    project.sh(f"{DC} stop node3")
    project.sh(f'{DC} run --rm --no-deps -u 0 -v "$PWD/backup:/backup" node3 '
               f"sh -c 'rm -rf /etc/hdpbf/data/* && tar -C /etc/hdpbf/data -xzf /backup/node3.tar.gz'")
    # the backup's ledger, intact, before the node starts (once started it catches up at
    # once from its peers' statuses, so its old height is only seen here)
    project.sh(f"{DC} run --rm --no-deps node3 hdpbf verify --node 3")
    res = project.sh(f"{DC} run --rm --no-deps node3 hdpbf get after-backup", check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    project.sh(f"{DC} start node3")
    # the mesh commits with the node back
    project.sh(f"{DC} --profile client run --rm client hdpbf put after-restore 1", timeout=120)


def test_a_restored_node_catches_up_the_blocks_it_lacks(project):
    # from its peers' statuses (pbft_tasks/core/status.py), not by a view change alone
    for key in ("after-backup", "after-restore"):
        wait_until(lambda: get_on(project, 3, key).returncode == 0, 30,
                   f"the restored node3 to catch up with {key!r}")


# -- the cluster profile ------------------------------------------------------------------

def test_cluster_profile(project):
    project.sh(f"{DC} --profile '*' down -v")
    res = project.sh(f"{DC} --profile init-cluster run --rm init-cluster", check=False)
    assert res.returncode != 0 and "another mesh" in res.stdout + res.stderr, res.stdout + res.stderr
    project.sh("mv compose/mesh compose/mesh.single")
    project.sh(f"{DC} --profile cluster up -d --wait rabbitmq-c1 rabbitmq-c2 rabbitmq-c3",
               timeout=300)
    project.sh(f"{DC} --profile init-cluster run --rm init-cluster")
    project.sh(f"{DC} --profile cluster up -d --wait", extra=NO_GRAFANA, timeout=600)
    rows = all_healthy(project, "--profile cluster")
    assert {"rabbitmq-c1", "rabbitmq-c2", "rabbitmq-c3", "follower1"} <= set(rows)
    res = project.sh(f"{DC} exec rabbitmq-c1 rabbitmqctl cluster_status")
    for n in (1, 2, 3):
        assert f"rabbit@rabbitmq-c{n}" in res.stdout.split("Running Nodes")[1].split("Versions")[0]
    res = project.sh(f"{DC} exec rabbitmq-c1 rabbitmqctl list_queues name type")
    types = dict(line.split() for line in res.stdout.splitlines()
                 if re.match(r"node\.\d+\s", line))
    assert types == {f"node.{i}": "quorum" for i in NODES}, types
    # every node commits on the cluster with its three brokers before one is stopped
    project.sh(f"{DC} --profile client run --rm client hdpbf put with-three-brokers 1",
               timeout=120)
    for i in NODES:
        wait_until(lambda: get_on(project, i, "with-three-brokers").returncode == 0, 60,
                   f"node {i} to commit on the cluster")
    project.sh(f"{DC} stop rabbitmq-c2")
    res = project.sh(f"{DC} --profile client run --rm client hdpbf put with-one-broker-down 1",
                     timeout=120)
    assert "committed" in res.stdout
    for i in NODES:
        wait_until(lambda: get_on(project, i, "with-one-broker-down").returncode == 0, 120,
                   f"node {i} to commit with rabbitmq-c2 down")
    wait_until(lambda: project.compose("--profile client run --rm client hdpbf status "
                                       "--follower follower1").returncode == 0,
               120, "follower1 healthy with rabbitmq-c2 down")


def test_down_with_every_profile_leaves_nothing_running(project):
    project.compose("--profile bench up -d rabbitmq-bench", timeout=300)
    assert "rabbitmq-bench" in project.services("--profile bench")
    project.sh(f"{DC} --profile '*' down")
    assert project.dk.docker("ps", "-aq").stdout.split() == []
    nets = project.dk.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(nets) == ["bridge", "host", "none"], nets


def test_every_command_of_the_operator_page_is_one_the_tests_ran(project):
    commands = doc_commands(DOC.read_text())
    assert len(commands) >= 10, commands
    missing = [c for c in commands if c not in project.ran]
    assert not missing, f"docs/operations/compose.md shows commands no test ran: {missing}"
