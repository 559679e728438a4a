"""Fixtures for the operations tests: a running 4-node mesh with its metrics endpoints,
a Flower, an API reader's counters and a real Prometheus scraping all of them.

Reuses the integration suite's isolation (tests/integration/conftest.py): the session's
own RabbitMQ vhost (``broker_url``) and the check that no worker started from this
session's temp dirs outlives it (``no_stray_workers``; Flower matches its pattern too, so
the stack stops it first).  Nothing here skips: a missing ``prometheus`` fails with a
message saying that tests/bootstrap.sh (the README's test command) installs it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.conftest import broker_url, no_stray_workers  # noqa: F401  (fixtures)
from integration.meshkit import Mesh, free_port, free_port_block, wait_until

ROOT = Path(__file__).resolve().parents[2]
FLOWER_USER = "ops"
FLOWER_PASSWORD = "ops-test-password"


def quiet_wait(timeout: float = 900.0) -> None:
    """Another session asked for a quiet machine (benchmarks): wait until it is done."""
    deadline = time.monotonic() + timeout
    while os.path.exists("/tmp/hdpbf-quiet") and time.monotonic() < deadline:
        time.sleep(2)


def http_get(url: str, timeout: float = 3.0, auth: tuple[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url)
    if auth is not None:
        import base64
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def answers(url: str, **kw: Any) -> bool:
    try:
        http_get(url, **kw)
        return True
    except Exception:
        return False


def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed; tests/bootstrap.sh, the first step of the "
                    "README's test command, installs it (Debian package prometheus). The "
                    "dashboard test runs it against the live mesh.",
                    pytrace=False)
    return exe


class Process:
    """A subprocess in its own session, logged to a file, stopped by its pid."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None):
        self.name, self.log = name, log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass


# A process holding one hdpbf driver transport with a metrics port (argv: dir, port).
DRIVER_PROCESS = """
import pathlib, sys, threading, warnings
warnings.simplefilter("ignore")
from nova_driver.conftest import DriverKit
kit = DriverKit(pathlib.Path(sys.argv[1]))
kit.transport(kit.conf(mesh_config=kit.mesh_config, ledger=kit.ledger_path(0), reader="api0",
                       client="cmp", embedded=True, metrics_port=int(sys.argv[2])))
threading.Event().wait()
"""


class Stack:
    """The running stack the ops tests look at."""

    def __init__(self, base: Path, broker: str):
        self.base = base
        self.metrics_base = free_port_block(4)
        self.mesh = Mesh(base / "mesh", 4, broker, metrics_port_base=self.metrics_base)
        self.procs: list[Process] = []
        self.flower_port = self.api_port = self.prom_port = self.driver_port = 0
        self.reader = None

    # -- pieces -----------------------------------------------------------------------
    def node_url(self, node_id: int) -> str:
        return f"http://127.0.0.1:{self.metrics_base + node_id}/metrics"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def start_flower(self) -> None:
        self.flower_port = free_port()
        env = dict(os.environ, HDPBF_CONFIG=str(self.mesh.config_path), PYTHONUNBUFFERED="1")
        env.pop("HDPBF_NODE_ID", None)
        # the compose file's command, with this test's port and credentials
        argv = [sys.executable, "-m", "celery", "-A", "pbft_tasks", "flower",
                f"--port={self.flower_port}", "--address=127.0.0.1",
                f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}"]
        proc = Process("flower", argv, self.base / "flower.log", env)
        self.procs.append(proc)

        def online() -> bool:
            proc.check()
            text = http_get(f"{self.flower_url}/metrics").decode()
            return text.count("flower_worker_online{") >= 4
        wait_until(online, 60, "Flower to see the 4 workers online (flower_worker_online)")

    def start_reader(self) -> None:
        """An API reader's counters, exported from this process as `hdpbf api` does."""
        from pbft_tasks.metrics import export_reader
        from mesh.openstack.reader import ConsoleReader
        self.api_port = free_port()
        self.reader = ConsoleReader(self.mesh.ledger_path(0), "fake:/ops-test", {}, None,
                                    rpc_timeout=1.0)
        assert export_reader(self.reader, 0, port=self.api_port)

    def start_driver(self) -> None:
        """nova's hdpbf driver with ``[hdpbf] metrics_port``, in a process of its own as
        in nova, API and compute side on one transport (hdpbf+fake:/, an in-process mesh
        of its own).  The stack runs no nova, so compose's Prometheus has no job for
        it; this one does."""
        self.driver_port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
        argv = [sys.executable, "-c", DRIVER_PROCESS, str(self.base / "nova-driver"),
                str(self.driver_port)]
        proc = Process("nova-driver", argv, self.base / "nova-driver.log", env)
        self.procs.append(proc)

        def serving() -> bool:
            proc.check()
            return answers(f"http://127.0.0.1:{self.driver_port}/metrics")
        wait_until(serving, 60, "the hdpbf driver's metrics endpoint")

    def start_prometheus(self) -> None:
        exe = prometheus_binary()
        self.prom_port = free_port()
        compose = yaml.safe_load((ROOT / "compose" / "prometheus.yml").read_text())
        targets = {
            "hdpbf-nodes": [f"127.0.0.1:{self.metrics_base + i}" for i in range(4)],
            "hdpbf-api": [f"127.0.0.1:{self.api_port}"],
            "flower": [f"127.0.0.1:{self.flower_port}"],
        }
        # compose's jobs (names and paths) with this test's targets and a 1 s interval
        jobs = []
        for job in compose["scrape_configs"]:
            if job["job_name"] == "hdpbf-followers":
                continue  # no follower runs in this stack (tests/integration/test_followers_mesh.py)
            job = dict(job, static_configs=[{"targets": targets[job["job_name"]]}])
            jobs.append(job)
        jobs.append({"job_name": "hdpbf-nova-driver",
                     "static_configs": [{"targets": [f"127.0.0.1:{self.driver_port}"]}]})
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": jobs}
        path = self.base / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        argv = [exe, f"--config.file={path}", f"--storage.tsdb.path={self.base / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
                "--storage.tsdb.retention.time=1h", "--log.level=warn"]
        proc = Process("prometheus", argv, self.base / "prometheus.log")
        self.procs.append(proc)

        def ready() -> bool:
            proc.check()
            return answers(f"{self.prom_url}/-/ready")
        wait_until(ready, 60, "Prometheus to be ready")

    def stop(self) -> None:
        errors = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:
                errors.append(exc)
        if self.reader is not None:
            self.reader.close()
        self.mesh.stop()
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def stack(tmp_path_factory, broker_url):  # noqa: F811  (the imported fixture)
    """A 4-node mesh of real workers (metrics on a free port run), Flower, an API
    reader's counters, nova's hdpbf driver's counters and Prometheus scraping them with
    compose's jobs (and one for the driver)."""
    quiet_wait()
    s = Stack(tmp_path_factory.mktemp("ops"), broker_url)
    try:
        s.mesh.start()
        s.start_flower()
        s.start_reader()
        s.start_driver()
        s.start_prometheus()
        yield s
    finally:
        s.stop()


UPDATES = 40
BAD_NODE = 1


def send_bad_messages(mesh: Mesh) -> None:
    """To node BAD_NODE's queue, bypassing any client: one malformed Prepare (counted by
    NodeRuntime.handle) and one unknown task name (counted by Celery's consumer,
    celery_app.NodeConsumer)."""
    import uuid

    from kombu import Connection, Producer
    with Connection(mesh.cfg.broker_url) as conn:
        conn.ensure_connection(max_retries=3)
        producer = Producer(conn.channel(), auto_declare=False)
        for name, args in (("pbft.prepare", [{"type": "Prepare", "view": 0}]),
                           ("pbft.no_such_task", [])):
            msg = mesh.app.amqp.create_task_message(str(uuid.uuid4()), name, args, {})
            producer.publish(msg.body, routing_key=f"node.{BAD_NODE}", serializer="json",
                             headers=msg.headers, **msg.properties)


@pytest.fixture(scope="session")
def loaded_stack(stack):
    """The stack after UPDATES committed updates (one a console record that the API
    reader answers in step 1), one step-2 failure, and the bad messages."""
    from mesh.openstack.reader import ConsoleUnavailable
    from mesh.openstack.sealing import instance_key, seal_console
    mesh = stack.mesh
    client = mesh.client(timeout=5.0)
    batch = client.submit(client.put_request(f"ops-{i}", {"i": i}) for i in range(UPDATES - 1))
    mesh.wait_replies(client, batch, timeout=60)
    info = {"host": "10.0.0.5", "port": 5900, "token": "t0k3n", "internal_access_path": None,
            "access_url": "http://vnc/?token=t0k3n"}
    client.put(instance_key("vm1"), seal_console("vm1", "novnc", "cmp1", info, None), timeout=10)
    mesh.wait_converged(timeout=60, at_least=1)
    stack.reader.hosts["vm1"] = "cmp1"
    assert stack.reader.get_vnc_console("vm1") == (
        {k: info[k] for k in ("host", "port", "internal_access_path", "token", "access_url")}, 1)
    with pytest.raises(ConsoleUnavailable):
        stack.reader.get_vnc_console("vm-with-no-host")  # step 2, fails at once
    send_bad_messages(mesh)
    return stack
