"""The stack the operations tests look at: a 4-node mesh of real workers with their
metrics endpoints, a Flower, an API reader's counters, nova's hdpbf driver's counters,
and a real Prometheus scraping them with compose's jobs.  Nothing here skips: a missing
``prometheus`` fails saying that tests/bootstrap.sh (the README's test command)
installs it.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.meshkit import Mesh, wait_until
from tests.processes import Process
from tests.services import answers, free_port, free_port_block, http_body

ROOT = Path(__file__).resolve().parents[2]
FLOWER_USER = "ops"
FLOWER_PASSWORD = "ops-test-password"


def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed; tests/bootstrap.sh, the first step of the "
                    "README's test command, installs it (Debian package prometheus). The "
                    "dashboard test runs it against the live mesh.",
                    pytrace=False)
    return exe


# A process holding one hdpbf driver transport with a metrics port (argv: dir, port).
DRIVER_PROCESS = """
import pathlib, sys, threading, warnings
warnings.simplefilter("ignore")
from tests.nova_driver.driverkit import DriverKit
kit = DriverKit(pathlib.Path(sys.argv[1]))
kit.transport(kit.conf(mesh_config=kit.mesh_config, ledger=kit.ledger_path(0), reader="api0",
                       client="cmp", embedded=True, metrics_port=int(sys.argv[2])))
threading.Event().wait()
"""


class Stack:
    """The running stack the ops tests look at."""

    def __init__(self, base: Path, broker: str):
        # before any worker starts: every block, latency and head age comes after these
        self.started_wall, self.started_mono = time.time(), time.monotonic()
        self.base = base
        self.metrics_base = free_port_block(4)
        self.mesh = Mesh(base / "mesh", 4, broker, hosts={"admin": ("cmp1",)},
                         metrics_port_base=self.metrics_base)
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
            text = http_body(f"{self.flower_url}/metrics").decode()
            return text.count("flower_worker_online{") >= 4
        wait_until(online, 60, "Flower to see the 4 workers online (flower_worker_online)")

    def start_reader(self) -> None:
        """An API reader's counters, exported from this process as `hdpbf api` does."""
        from pbft_tasks.metrics import export_reader
        from mesh.openstack.reader import ConsoleReader
        from pbft_tasks.topology import console_writers
        self.api_port = free_port()
        self.reader = ConsoleReader(self.mesh.ledger_path(0), "fake:/ops-test", {}, None,
                                    rpc_timeout=1.0,
                                    writers=console_writers(self.mesh.cfg))
        assert export_reader(self.reader, 0, port=self.api_port)

    def start_driver(self) -> None:
        """nova's hdpbf driver with ``[hdpbf] metrics_port``, in a process of its own as
        in nova, API and compute side on one transport (hdpbf+fake:/, an in-process mesh
        of its own).  The stack runs no nova, so compose's Prometheus has no job for
        it; this one does."""
        self.driver_port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]))
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
