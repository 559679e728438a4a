"""``hdpbf up``, ``status`` and ``down``: the mesh as local processes, for machines
without Docker.

Owns: the layout of a launcher data dir, which processes ``up`` starts and with which
command lines, waiting until they answer, and judging health.  ``status`` of a mesh that
``up`` did not start (``--config``, or ``$HDPBF_CONFIG`` with no record here) is
mesh/ops/mesh_status.py's, which also defines the node table both print.  Starting and stopping a
process is mesh/ops/launcher.py's; the nova-api reader's HTTP front (``hdpbf api``) is in
mesh/openstack/api.py.

A data dir (default ``./hdpbf-data``)::

    mesh.json, keys/         the mesh (``init_mesh`` with a reader "api" so compute seals)
    data/node<id>/           each node's ledger
    logs/<name>.log          one log per process: node0..node3, cmp1, cmp2, api, flower
    run/processes.json       what ``up`` started: name, pid, start time, argv
    flower.auth              Flower's basic-auth "user:password" (0600)

Rules of this file:
- ``down`` stops exactly the recorded processes and nothing else: a pid is signalled
  only while the process table says it still runs the recorded argv and started at the
  recorded time (``ProcessRecord.state``); anything else is reported and left alone.
- ``up`` refuses while any recorded process still runs; a record whose processes are
  all gone (a reboot, a kill -9 of everything) is stale and replaced.
- Node queues are purged only for a mesh ``up`` has just created: an existing mesh's
  queues hold votes its replicas still need.
- No secret on a command line (``ps`` shows argv to every user, and processes.json
  keeps it): Flower gets its basic auth as ``FLOWER_BASIC_AUTH`` and its broker from
  mesh.json through ``HDPBF_CONFIG``, both in its environment.
- Healthy node = its process runs, it answers ``pbft.status`` within ``--timeout``, and
  it is at most ``--max-lag`` blocks behind the highest node.  ``status`` exits 0 only
  when every node is healthy and every other process runs (and answers, for Flower and
  the API reader).  A node's Prometheus endpoint (pbft_tasks/metrics.py) adds its head age;
  it is informational, since a taken metrics port does not stop a replica.
- Flower starts after every worker answers: it inspects the workers it finds at start
  (their queues, for ``/api/workers``).
- Each worker runs under ``mesh.ops.respawn``, which starts it again when it fails hard
  on our own bug (exit 70) and passes any other exit through.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from pbft_tasks import metrics
from pbft_tasks.topology import (CONFIG_NAME, ENV_CONFIG, DEFAULT_BROKER_URL, DEFAULT_RESULT_BACKEND, ConfigError,
                                 MeshConfig, add_readers, console_writers, init_mesh)

from ..clikit import BadInput, console, redact
from . import follower_status as follower_ops
from . import mesh_status
from .launcher import (LocalMesh, ProcessRecord, node_env, spawn_detached, stop_recorded,
                       worker_command)
from .respawn import respawn_command

DEFAULT_DATA_DIR = "./hdpbf-data"
RUN_FILE = os.path.join("run", "processes.json")
AUTH_FILE = "flower.auth"
READER = "api"
DEFAULT_MAX_LAG = mesh_status.DEFAULT_MAX_LAG
STOP_ORDER = ("api", "compute", "flower", "follower", "worker")  # clients of the mesh before the mesh
ENV_FLOWER_USER = "HDPBF_FLOWER_USER"
ENV_FLOWER_PASSWORD = "HDPBF_FLOWER_PASSWORD"
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


# -- layout and the run file --------------------------------------------------------------

def run_file(data_dir: str) -> str:
    return os.path.join(data_dir, RUN_FILE)


def load_run(data_dir: str) -> dict | None:
    try:
        with open(run_file(data_dir)) as f:
            run = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise click.ClickException(f"{run_file(data_dir)} is not valid JSON ({exc}); "
                                   f"check which processes run and remove it by hand")
    run["processes"] = [ProcessRecord.from_json(p) for p in run.get("processes", [])]
    return run


def _write_run(data_dir: str, run: dict, create: bool = False) -> None:
    """Atomic (write + rename).  ``create``: fail if a run file exists, so two ``up``
    racing on one data dir cannot both proceed."""
    path = run_file(data_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    doc = dict(run, processes=[p.to_json() for p in run["processes"]])
    if create:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def _hdpbf_argv() -> list[str]:
    """How to run ``hdpbf`` as a child: this interpreter and the installed script (the
    argv the process table will show, so ``down`` can recognise it)."""
    script = os.path.join(os.path.dirname(sys.executable), "hdpbf")
    if not os.path.exists(script):
        script = shutil.which("hdpbf") or ""
    if script:
        return [sys.executable, script]
    return [sys.executable, "-c", "import sys; from mesh.cli import main; sys.exit(main())"]


# Flower keeps every task it hears of in memory, 100000 by default: with ~25 protocol
# messages per request that is ~4000 requests, and past 1.7 GB RSS in a long run here.
# Its counters (/metrics, the dashboards) count every event all the same; only the task
# list it can show is shorter.  compose/docker-compose.yml passes the same bounds.
FLOWER_MAX_TASKS = 10000
FLOWER_MAX_WORKERS = 50


def flower_command(port: int, address: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "pbft_tasks", "flower",
            f"--port={port}", f"--address={address}", *flower_bounds()]


def flower_bounds() -> list[str]:
    """Flower's options bounding its memory (see FLOWER_MAX_TASKS)."""
    return [f"--max_tasks={FLOWER_MAX_TASKS}", f"--max_workers={FLOWER_MAX_WORKERS}"]


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _http_get(url: str, timeout: float = 2.0, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    import base64
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        return _http_get(url, timeout)[0] == 200
    except OSError:
        return False


# -- Flower's credentials ------------------------------------------------------------------

def flower_credentials(data_dir: str) -> tuple[str, str, str]:
    """(user, password, where they come from): $HDPBF_FLOWER_USER/PASSWORD, else
    DIR/flower.auth, created (0600) with a random password on first use."""
    user, password = os.environ.get(ENV_FLOWER_USER), os.environ.get(ENV_FLOWER_PASSWORD)
    if user or password:
        if not (user and password):
            raise BadInput(f"set both {ENV_FLOWER_USER} and {ENV_FLOWER_PASSWORD}, or neither "
                           f"(then a password is generated into {os.path.join(data_dir, AUTH_FILE)})")
        if ":" in user or "," in user or "," in password:
            raise BadInput(f"{ENV_FLOWER_USER} must not contain ':' or ',' and "
                           f"{ENV_FLOWER_PASSWORD} must not contain ','")
        return user, password, f"${ENV_FLOWER_USER} / ${ENV_FLOWER_PASSWORD}"
    path = os.path.join(data_dir, AUTH_FILE)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"admin:{secrets.token_urlsafe(24)}\n")
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
    user, sep, password = Path(path).read_text().strip().partition(":")
    if not (sep and user and password) or "," in password:
        raise BadInput(f"{path} must hold one line 'user:password' (no ',')")
    return user, password, path


# -- up ------------------------------------------------------------------------------------

def _open_mesh(data_dir: str, nodes: int | None, broker: str | None,
               backend: str | None, hosts: list[str] = ()) -> tuple[MeshConfig, bool]:
    """The mesh in ``data_dir`` (created if there is none, with a client per compute
    host, named like it) and whether it is new."""
    path = os.path.join(data_dir, CONFIG_NAME)
    try:
        if not os.path.exists(path):
            init_mesh(data_dir, nodes=nodes or 4, broker_url=broker or DEFAULT_BROKER_URL,
                      result_backend=backend or DEFAULT_RESULT_BACKEND, readers=(READER,),
                      clients=("admin", *[h for h in hosts if h != "admin"]))
            return MeshConfig.load(path), True
        cfg = MeshConfig.load(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    writers = console_writers(cfg)
    mute = [h for h in hosts if not any(h in speaks for speaks in writers.values())]
    if mute:
        raise BadInput(f"{path} has no client that speaks for compute host(s) {mute}: the mesh "
                       f"would refuse their console records (use another --data-dir, or "
                       f"give a client \"hosts\" in mesh.json)")
    for what, asked, have in (("--nodes", nodes, cfg.n), ("--broker", broker, cfg.broker_url),
                              ("--backend", backend, cfg.result_backend)):
        if asked is not None and asked != have:
            shown = have if what == "--nodes" else redact(str(have))
            raise BadInput(f"{path} already holds a mesh with {what} {shown}; to change it, "
                           f"use another --data-dir (or remove {data_dir})")
    if not cfg.readers:  # compute needs somebody to seal console tokens for
        cfg = add_readers(path, [READER])
    return cfg, False


def _check_services(mesh: LocalMesh, cfg: MeshConfig) -> None:
    try:
        with mesh.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5)
    except Exception as exc:
        raise click.ClickException(f"cannot reach the broker {redact(cfg.broker_url)}: {exc} "
                                   f"(is RabbitMQ running? rabbitmq-server -detached)") from None
    try:
        import redis
        redis.Redis.from_url(cfg.result_backend, socket_timeout=3,
                             socket_connect_timeout=3).ping()
    except Exception as exc:
        raise click.ClickException(f"cannot reach the result backend "
                                   f"{redact(cfg.result_backend)}: {exc} (is Redis running?)") from None


def _log_since(rec: ProcessRecord) -> str:
    try:
        with open(rec.log, "rb") as f:
            f.seek(rec.extra.get("log_offset", 0))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(rec: ProcessRecord, lines: int = 8) -> str:
    return "\n".join("    " + line for line in _log_since(rec).splitlines()[-lines:])


def _wait_ready(run: dict, mesh: LocalMesh, kinds: tuple[str, ...], deadline: float) -> None:
    """Until every process of ``kinds`` answers: a worker to pbft.status, a compute by
    logging that it serves, the API reader and Flower over HTTP.  RuntimeError names
    what did not, or what exited."""
    procs = [p for p in run["processes"] if p.kind in kinds]
    waiting = {p.name for p in procs}
    while waiting:
        for p in procs:
            if p.name in waiting and not p.alive():
                raise RuntimeError(f"{p.name} (pid {p.pid}) exited while starting; "
                                   f"end of {p.log}:\n{_tail(p)}")
        if any(p.kind == "worker" and p.name in waiting for p in procs):
            answers = mesh.poll_statuses(timeout=2.0)
            for node_id, st in answers.items():
                if st is not None:
                    waiting.discard(f"node{node_id}")
        for p in procs:
            if p.name not in waiting:
                continue
            if p.kind == "compute" and "serving get_vnc_console" in _log_since(p):
                waiting.discard(p.name)
            elif p.kind in ("api", "flower") and _answers(p.extra["probe"], timeout=1.0):
                waiting.discard(p.name)
            elif p.kind == "follower" and follower_ops.ready(p):
                waiting.discard(p.name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready in time: {', '.join(sorted(waiting))}; "
                               f"see their logs in {os.path.join(run['data_dir'], 'logs')}")
        time.sleep(0.2)


@click.command()
@click.option("--nodes", type=click.IntRange(4, 64), default=None,
              help="replicas of a new mesh  [default: 4]")
@click.option("--data-dir", type=click.Path(file_okay=False), default=DEFAULT_DATA_DIR,
              show_default=True, help="mesh, ledgers, logs and the run record")
@click.option("--broker", default=None, metavar="URL",
              help=f"RabbitMQ URL of a new mesh  [default: {DEFAULT_BROKER_URL}]")
@click.option("--backend", default=None, metavar="URL",
              help=f"Redis URL of a new mesh  [default: {DEFAULT_RESULT_BACKEND}]")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option("--api-port", type=click.IntRange(1, 65535), default=8774, show_default=True,
              help="the nova-api reader's HTTP port")
@click.option("--api-node", type=int, default=0, show_default=True,
              help="the node whose ledger the API reader reads (step 1)")
@click.option("--computes", default="cmp1,cmp2", show_default=True,
              help="comma-separated compute host names, one RPC server each ('' for none)")
@click.option("--metrics-port-base", type=click.IntRange(1, 65535), default=None,
              help="Prometheus ports: node <id> on BASE+id, the API reader on BASE+n  "
                   "[default: mesh.json's metrics_port_base for nodes, 9500 for the reader]")
@click.option("--followers", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="verified non-validating followers f1..fK to start (listed in mesh.json)")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="seconds to wait for everything to answer")
def up(nodes: int | None, data_dir: str, broker: str | None, backend: str | None,
       flower_port: int, api_port: int, api_node: int, computes: str,
       metrics_port_base: int | None, followers: int, timeout: float) -> None:
    """Start the mesh as local processes: a worker per node, compute RPC servers, the
    nova-api reader and Flower.  Creates the mesh in DATA_DIR if there is none."""
    data_dir = os.path.abspath(data_dir)
    hosts = [h.strip() for h in computes.split(",") if h.strip()]
    bad = [h for h in hosts if not _HOST_RE.fullmatch(h)]
    if bad or len(set(hosts)) != len(hosts):
        raise BadInput(f"--computes must be distinct host names (letters, digits, '.', '_', "
                       f"'-'), got {computes!r}")
    out = console()

    previous = load_run(data_dir)
    if previous is not None:
        running = [p for p in previous["processes"] if p.alive()]
        if running:
            out.print(f"[yellow]Already up:[/yellow] {len(running)} of the processes started "
                      f"from {data_dir} at {time.strftime('%H:%M:%S', time.localtime(previous['started_at']))} "
                      f"still run; not starting a second mesh. Stop them with "
                      f"'hdpbf down --data-dir {data_dir}'.", soft_wrap=True)
            report = status_report(data_dir)
            _print_status(report, out)
            sys.exit(1)
        out.print(f"[dim]{run_file(data_dir)} is stale (none of its processes runs); "
                  f"replacing it[/dim]", soft_wrap=True)
        os.unlink(run_file(data_dir))

    for port, what in ((flower_port, "--flower-port"), (api_port, "--api-port")):
        if not _port_free(port):
            raise click.ClickException(f"port {port} on 127.0.0.1 is in use (pass another {what})")
    if flower_port == api_port:
        raise BadInput("--flower-port and --api-port must differ")

    os.makedirs(data_dir, exist_ok=True)
    cfg, new = _open_mesh(data_dir, nodes, broker, backend, hosts)
    if api_node not in [n.id for n in cfg.nodes]:
        raise BadInput(f"--api-node {api_node} is not a node of this mesh (0..{cfg.n - 1})")
    reader = READER if READER in [r.name for r in cfg.readers] else cfg.readers[0].name
    config_path = str(cfg.path)
    follower_names = follower_ops.ensure(config_path, followers)  # before workers read mesh.json
    cfg = MeshConfig.load(config_path)
    log_dir = os.path.join(data_dir, "logs")
    mesh = LocalMesh(config_path, log_dir=log_dir)
    _check_services(mesh, cfg)
    if new:
        mesh.purge()
        if follower_names:
            from .followers import Followers
            Followers(config_path, log_dir=log_dir).purge(mesh.app)
    user, password, auth_source = flower_credentials(data_dir)

    run_id = uuid.uuid4().hex
    run: dict[str, Any] = {"data_dir": data_dir, "config": config_path, "run_id": run_id,
                           "started_at": time.time(), "new_mesh": new,
                           "flower": {"url": f"http://127.0.0.1:{flower_port}",
                                      "auth": auth_source, "user": user},
                           "api": {"url": f"http://127.0.0.1:{api_port}", "node": api_node},
                           "processes": []}
    try:
        _write_run(data_dir, run, create=True)
    except FileExistsError:
        raise click.ClickException(f"{run_file(data_dir)} appeared meanwhile: another "
                                   f"'hdpbf up' on this data dir?") from None

    base_env = dict(os.environ, HDPBF_CONFIG=config_path, HDPBF_RUN_ID=run_id,
                    PYTHONUNBUFFERED="1")
    for var in ("HDPBF_NODE_ID", metrics.ENV_PORT):  # a shell's own would apply to all
        base_env.pop(var, None)
    hdpbf = _hdpbf_argv()

    def metrics_env(port: int | None) -> dict:
        return {metrics.ENV_PORT: str(port)} if port is not None else {}

    def metrics_url(port: int | None) -> str | None:
        return f"http://127.0.0.1:{port}/metrics" if port else None

    def start(name: str, kind: str, command: list[str], env: dict, **extra: Any) -> None:
        log = os.path.join(log_dir, f"{name}.log")
        offset = os.path.getsize(log) if os.path.exists(log) else 0
        rec = spawn_detached(name, command, env, log, kind=kind, log_offset=offset, **extra)
        run["processes"].append(rec)
        _write_run(data_dir, run)  # after each start, so a failed up can still be downed

    deadline = time.monotonic() + timeout
    try:
        for node in cfg.nodes:
            env = dict(node_env(config_path, node.id), HDPBF_RUN_ID=run_id)
            env.pop(metrics.ENV_PORT, None)
            env.update(metrics_env(metrics_port_base and metrics_port_base + node.id))
            start(f"node{node.id}", "worker", respawn_command(worker_command(node.id)), env,
                  queue=node.queue,
                  metrics=metrics_url(metrics.node_metrics_port(cfg, node.id, env)))
        # Workers first: Flower inspects the workers it finds when it starts (their
        # queues for /api/workers), and compute commits through them.
        with out.status(f"waiting for {cfg.n} workers to answer pbft.status"):
            _wait_ready(run, mesh, ("worker",), deadline)
        for i, name in enumerate(follower_names, 1):
            start(f"follower-{name}", "follower",
                  hdpbf + ["follow", "--config", config_path, "--name", name],
                  follower_ops.start_env(base_env, i), status=follower_ops.status_path(cfg, name),
                  metrics=metrics_url(follower_ops.METRICS_BASE + i))
        for host in hosts:
            client = next(c for c, speaks in sorted(console_writers(cfg).items(),
                                                    key=lambda kv: kv[0] != host)
                          if host in speaks)
            start(host, "compute", hdpbf + ["compute", "--host", host, "--client", client,
                                            "--config", config_path],
                  base_env, host=host)
        env = dict(base_env, **metrics_env(metrics_port_base and metrics_port_base + cfg.n))
        start("api", "api", hdpbf + ["api", "--node", str(api_node), "--reader", reader,
                                     "--port", str(api_port), "--config", config_path],
              env, probe=f"http://127.0.0.1:{api_port}/healthz",
              metrics=metrics_url(metrics.reader_metrics_port(env)))
        start("flower", "flower", flower_command(flower_port),
              dict(base_env, FLOWER_BASIC_AUTH=f"{user}:{password}"),
              probe=f"http://127.0.0.1:{flower_port}/healthcheck")
        with out.status("waiting for compute, the API reader and Flower"):
            _wait_ready(run, mesh, ("compute", "api", "flower", "follower"), deadline)
    except (RuntimeError, OSError, KeyboardInterrupt) as exc:
        out.print(f"up failed: {exc or 'interrupted'}", soft_wrap=True, markup=False)
        outcome = stop_recorded(_stop_order(run["processes"]), timeout=10.0)
        if all(o != "still running" for o in outcome.values()):
            os.unlink(run_file(data_dir))
        out.print(f"stopped what was started: {outcome}", soft_wrap=True)
        sys.exit(1)

    table = Table(title=f"hdpbf up: {cfg.n} nodes (f={cfg.f}){' — new mesh' if new else ''}, "
                        f"broker {redact(cfg.broker_url)}")
    for col in ("process", "pid", "serves", "log"):
        table.add_column(col, overflow="fold")
    for p in run["processes"]:
        serves = {"worker": f"queue {p.extra.get('queue')}",
                  "compute": f"RPC compute.{p.extra.get('host')}",
                  "api": f"{run['api']['url']}/console/<instance>?host=<host>",
                  "flower": run["flower"]["url"],
                  "follower": f"queue follower.{p.name.removeprefix('follower-')}"}[p.kind]
        table.add_row(p.name, str(p.pid), serves, os.path.relpath(p.log, data_dir))
    out.print(table)
    out.print(f"Flower: {run['flower']['url']}  user {user!r}, password in {auth_source}",
              soft_wrap=True, markup=False)
    out.print(f"Record: {run_file(data_dir)}. Next: hdpbf status --data-dir {data_dir}; "
              f"hdpbf down --data-dir {data_dir}", soft_wrap=True, markup=False)


def _stop_order(procs: list[ProcessRecord]) -> list[ProcessRecord]:
    return sorted(procs, key=lambda p: STOP_ORDER.index(p.kind) if p.kind in STOP_ORDER else 0)


# -- status --------------------------------------------------------------------------------

def status_report(data_dir: str, timeout: float = 3.0, max_lag: int = DEFAULT_MAX_LAG,
                  trace: bool = False) -> dict:
    """What ``hdpbf status`` prints: per node height/view/head/lag/healthy, the other
    processes, and the verdict; ``trace``: also every node's ``pbft.trace``."""
    data_dir = os.path.abspath(data_dir)
    run = load_run(data_dir)
    if run is None:
        return {"data_dir": data_dir, "running": False, "healthy": False, "nodes": [],
                "processes": [], "reason": f"nothing recorded: no {run_file(data_dir)}"}
    procs: list[ProcessRecord] = run["processes"]
    try:
        cfg = MeshConfig.load(run["config"])
    except (ConfigError, OSError) as exc:
        raise BadInput(f"{run_file(data_dir)} names the mesh {run['config']}, which cannot "
                       f"be read: {exc}") from None
    mesh = LocalMesh(run["config"], log_dir=os.path.join(data_dir, "logs"))
    broker_error = None
    try:
        answers = mesh.poll_statuses(timeout=timeout)
    except Exception as exc:  # the broker is unreachable: nobody can answer
        answers, broker_error = {}, f"{type(exc).__name__}: {exc}"
    heights = [s["height"] for s in answers.values() if s is not None]
    top = max(heights) if heights else None
    by_name = {p.name: p for p in procs}
    nodes = []
    for node in cfg.nodes:
        rec = by_name.get(f"node{node.id}")
        state = rec.state() if rec else "not started"
        st = answers.get(node.id)
        row = dict(mesh_status.node_row(node.id, st, top), pid=rec.pid if rec else None,
                   process=state)
        row.update(_node_metrics(rec, node.id))
        reasons = []
        if state != "running":
            reasons.append(f"process {state}")
        if broker_error is not None:
            reasons.append("broker unreachable")
        elif st is None:
            reasons.append(f"no pbft.status answer within {timeout:g}s")
        elif row["lag"] > max_lag:
            reasons.append(f"{row['lag']} blocks behind (more than {max_lag})")
        row["healthy"] = not reasons
        row["reason"] = "; ".join(reasons)
        nodes.append(row)
    mesh_status.flag_config_versions(nodes)
    others = []
    for p in procs:
        if p.kind == "worker":
            continue
        state = p.state()
        row = {"name": p.name, "kind": p.kind, "pid": p.pid, "process": state,
               "alive": state == "running"}
        healthy = row["alive"]
        if healthy and "probe" in p.extra:
            row["answers"] = _answers(p.extra["probe"], timeout=timeout)
            healthy = row["answers"]
        if p.kind == "api" and row["alive"]:
            row.update(_reader_metrics(p))
        row["healthy"] = healthy
        others.append(row)
    follower_answers: dict = {}
    if cfg.followers and broker_error is None:
        try:
            follower_answers = follower_ops.ask(cfg, mesh.app.connection_for_write(), timeout=timeout)
        except Exception as exc:  # the broker went away meanwhile: fall back to status.json
            broker_error = f"{type(exc).__name__}: {exc}"
    followers = follower_ops.rows(cfg, procs, top, max_lag, follower_answers)
    others = [o for o in others if o["kind"] != "follower"]
    healthy = (all(n["healthy"] for n in nodes) and all(o["healthy"] for o in others)
               and all(f["healthy"] for f in followers))
    return {"data_dir": data_dir, "running": True, "healthy": healthy,
            "broker_error": broker_error, "broker": redact(cfg.broker_url),
            "started_at": run["started_at"], "max_height": top, "max_lag": max_lag,
            "flower": run.get("flower"), "api": run.get("api"), "nodes": nodes,
            "processes": others, "followers": followers,
            **({"trace": mesh_status.ask_traces(mesh.app, cfg, timeout)
                if broker_error is None else None} if trace else {})}


def _scrape(rec: ProcessRecord | None) -> dict | None:
    url = rec.extra.get("metrics") if rec is not None else None
    if not url or not rec.alive():
        return None
    try:
        return metrics.scrape(url, timeout=1.0)
    except (OSError, ValueError):
        return None


def _sample(scraped: dict, name: str, **labels: str) -> float | None:
    for have, value in scraped.get(name, []):
        if all(have.get(k) == v for k, v in labels.items()):
            return value
    return None


def _node_metrics(rec: ProcessRecord | None, node_id: int) -> dict:
    """From the node's Prometheus endpoint (pbft_tasks/metrics.py), when it answers: how long
    ago its head block was appended and its commit count.  Informational: a node whose
    endpoint is off or taken is judged by pbft.status alone."""
    scraped = _scrape(rec)
    if scraped is None:
        return {"metrics": None, "head_age_s": None}
    node = str(node_id)
    age = _sample(scraped, "hdpbf_ledger_head_age_seconds", node=node)
    return {"metrics": rec.extra.get("metrics"),
            "head_age_s": None if age is None else round(age, 1),
            "blocks_committed": _sample(scraped, "hdpbf_blocks_committed_total", node=node)}


def _reader_metrics(rec: ProcessRecord) -> dict:
    scraped = _scrape(rec)
    if scraped is None:
        return {"metrics": None}
    total = lambda name: sum(v for _, v in scraped.get(name, []))  # noqa: E731
    return {"metrics": rec.extra.get("metrics"),
            "step1_answers": total("hdpbf_step1_answers_total"),
            "step2_calls": total("hdpbf_step2_calls_total"),
            "step2_failures": total("hdpbf_step2_failures_total")}


def _print_status(report: dict, out) -> None:
    if not report["running"]:
        out.print(f"not running: {report['reason']} (start it with 'hdpbf up --data-dir "
                  f"{report['data_dir']}'; for a mesh started otherwise, give its mesh.json: "
                  f"'hdpbf status --config PATH')", soft_wrap=True, markup=False)
        return
    mark = mesh_status.MARK
    out.print(f"mesh in {report['data_dir']}", soft_wrap=True, markup=False)
    if report["broker_error"]:
        out.print(f"[red]broker {report['broker']} unreachable:[/red] {report['broker_error']}",
                  soft_wrap=True)
    table = mesh_status.node_table(f"nodes: max height {report['max_height']}", report["nodes"],
                                   launcher=True)
    out.print(table)
    table = Table(title="other processes")
    for col in ("process", "pid", "state", "health"):
        table.add_column(col)
    for p in report["processes"]:
        state = p["process"] + ("" if "answers" not in p else
                                (", answers" if p["answers"] else ", does not answer"))
        if p.get("step1_answers") is not None:
            state += (f"; step 1 answered {p['step1_answers']:g}, step 2 calls "
                      f"{p['step2_calls']:g} ({p['step2_failures']:g} failed)")
        table.add_row(p["name"], str(p["pid"]), state, mark[p["healthy"]])
    out.print(table)
    follower_ops.print_table(report, out)
    out.print("all healthy" if report["healthy"] else "[red]not all healthy[/red]")


def _mesh_config_for_status(data_dir: str | None, config: str | None) -> str | None:
    """Which mesh ``hdpbf status`` looks at: ``--config`` (any mesh, over the broker);
    else ``--data-dir`` or a ``./hdpbf-data`` that ``hdpbf up`` recorded (its processes);
    else $HDPBF_CONFIG or ./mesh.json.  None means the launcher's report."""
    if config is not None:
        return config
    if data_dir is not None or os.path.exists(run_file(DEFAULT_DATA_DIR)):
        return None
    for candidate in (os.environ.get(ENV_CONFIG), CONFIG_NAME):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"a mesh started by 'hdpbf up'  [default: {DEFAULT_DATA_DIR}]")
@click.option("--config", metavar="PATH", default=None,
              help="any mesh, from its mesh.json alone: every node and follower asked over "
                   "the broker  [default without --data-dir: $HDPBF_CONFIG, then ./mesh.json, "
                   f"when {DEFAULT_DATA_DIR} has no record]")
@click.option("--broker", metavar="URL", envvar="HDPBF_BROKER_URL", default=None,
              help="with a mesh.json: reach its broker at this URL instead (e.g. a port "
                   "published on this host)  [env: HDPBF_BROKER_URL]")
@click.option("--backend", metavar="URL", envvar="HDPBF_RESULT_BACKEND", default=None,
              help="with a mesh.json: its result backend at this URL instead  "
                   "[env: HDPBF_RESULT_BACKEND]")
@click.option("--node", "nodes", type=int, multiple=True, metavar="ID",
              help="with a mesh.json: judge only this node (repeatable; a healthcheck's)")
@click.option("--follower", "followers", multiple=True, metavar="NAME",
              help="with a mesh.json: judge only this follower (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
              help="seconds a node has to answer pbft.status")
@click.option("--max-lag", type=click.IntRange(0, None), default=DEFAULT_MAX_LAG,
              show_default=True, help="blocks behind the highest node still called healthy")
@click.option("--trace", is_flag=True,
              help="also each node's recent stimuli, each with its id and the actions it "
                   "caused (pbft.trace)")
@click.option("--follow", "follow_key", metavar="KEY", default=None,
              help="with --trace: only the stimuli about KEY on every node: a request "
                   "(CLIENT/TIMESTAMP, with the seq that carried it), a seq (n<SEQ>) or a "
                   "stimulus id")
@click.option("--last", type=click.IntRange(1, None), default=40, show_default=True,
              help="with --trace and no --follow: stimuli shown per node")
def status(data_dir: str | None, config: str | None, broker: str | None, backend: str | None,
           nodes: tuple[int, ...], followers: tuple[str, ...], as_json: bool, timeout: float,
           max_lag: int, trace: bool, follow_key: str | None, last: int) -> None:
    """Per node: height, view, head, lag and health; the other processes, for a mesh
    'hdpbf up' started.  With a mesh.json: every node and follower, asked over the
    broker.  Exit 0 only if everything (or what --node/--follower name) is healthy.
    With --trace: also what each node did lately, stimulus by stimulus."""
    trace = trace or follow_key is not None
    path = _mesh_config_for_status(data_dir, config)
    if path is None and (nodes or followers):
        raise BadInput("--node and --follower judge a mesh named by its mesh.json: add "
                       "--config PATH")
    if path is not None:
        from dataclasses import replace

        from ..clikit import config_path
        cfg = MeshConfig.load(config_path(path))
        cfg = replace(cfg, broker_url=broker or cfg.broker_url,
                      result_backend=backend or cfg.result_backend)
        report = mesh_status.report(cfg, timeout=timeout, max_lag=max_lag, nodes=nodes,
                                    followers=followers, trace=trace)
        printer = mesh_status.print_report
    else:
        report = status_report(data_dir or DEFAULT_DATA_DIR, timeout=timeout, max_lag=max_lag,
                               trace=trace)
        printer = _print_status
    if trace and follow_key is not None:
        report["followed"] = {"key": follow_key, "nodes": mesh_status.followed(report, follow_key)}
    if as_json:
        click.echo(json.dumps(report, indent=1, sort_keys=True))
    else:
        printer(report, console())
        if trace:
            mesh_status.print_trace(report, console(), follow_key, last)
    sys.exit(0 if report["healthy"] else 1)


# -- down ----------------------------------------------------------------------------------

@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=DEFAULT_DATA_DIR,
              show_default=True)
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=15.0, show_default=True,
              help="seconds to wait after SIGTERM before SIGKILL")
def down(data_dir: str, timeout: float) -> None:
    """Stop exactly what 'hdpbf up' started from DATA_DIR (SIGTERM, then SIGKILL)."""
    data_dir = os.path.abspath(data_dir)
    out = console()
    run = load_run(data_dir)
    if run is None:
        out.print(f"nothing to stop: no {run_file(data_dir)} (nothing started by 'hdpbf up' "
                  f"from {data_dir})", soft_wrap=True, markup=False)
        return
    procs = _stop_order(run["processes"])
    # Clients of the mesh first: a compute flushes what it has not committed yet, which
    # needs the workers still up.
    outcome = stop_recorded([p for p in procs if p.kind != "worker"], timeout=timeout)
    outcome.update(stop_recorded([p for p in procs if p.kind == "worker"], timeout=timeout))
    table = Table(title=f"hdpbf down: {data_dir}")
    for col in ("process", "pid", "outcome"):
        table.add_column(col)
    for p in procs:
        table.add_row(p.name, str(p.pid), outcome[p.name])
    out.print(table)
    left = [p.name for p in procs if outcome[p.name] == "still running"]
    if left:
        out.print(f"[red]could not stop {', '.join(left)}[/red]; {run_file(data_dir)} kept")
        sys.exit(1)
    os.unlink(run_file(data_dir))


__all__ = ["up", "status", "down", "status_report", "flower_credentials", "load_run"]
