"""The local launcher as an operator runs it: ``hdpbf`` commands in child processes of
their own, and one ``hdpbf up`` in a data dir of its own (``Launch``).

``up_then_down`` always runs ``hdpbf down`` afterwards, and after it no process started
by this ``up`` (found by the ``HDPBF_RUN_ID`` in its environment, or its data dir in
``HDPBF_CONFIG``) may still run: any that does is killed by pid and the test fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.client import BrokerClientTransport, MeshClient
from mesh.ops.launcher import LocalMesh
from pbft_tasks.signing import Verifier
from pbft_tasks.topology import MeshConfig, client_keys, load_client_identity, node_keys
from tests.processes import kill_all, processes_of
from tests.services import backend_url, free_port, free_port_block

HDPBF = [sys.executable, os.path.join(os.path.dirname(sys.executable), "hdpbf")]


def hdpbf(*args: str, timeout: float = 150.0) -> subprocess.CompletedProcess:
    """Run the ``hdpbf`` command line in a child process; wide output, no colour."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return subprocess.run([*HDPBF, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


class Launch:
    """One ``hdpbf up`` in a data dir of its own."""

    def __init__(self, data_dir: Path, broker: str):
        self.data_dir = data_dir
        self.broker = broker
        self.backend = backend_url()
        self.flower_port = free_port()
        self.api_port = free_port()
        self.metrics_base = free_port_block(5)
        self.up_result: subprocess.CompletedProcess | None = None

    def up(self) -> subprocess.CompletedProcess:
        return hdpbf("up", "--data-dir", str(self.data_dir), "--broker", self.broker,
                     "--backend", self.backend, "--flower-port", str(self.flower_port),
                     "--api-port", str(self.api_port), "--metrics-port-base",
                     str(self.metrics_base), "--timeout", "90")

    def run(self) -> dict:
        return json.loads((self.data_dir / "run" / "processes.json").read_text())

    def pid(self, name: str) -> int:
        return next(p["pid"] for p in self.run()["processes"] if p["name"] == name)

    def status(self, *extra: str) -> tuple[int, dict]:
        res = hdpbf("status", "--data-dir", str(self.data_dir), "--json", *extra, timeout=60)
        try:
            return res.returncode, json.loads(res.stdout)
        except ValueError:
            pytest.fail(f"status printed no JSON (exit {res.returncode}): "
                        f"{res.stdout}\n{res.stderr}")

    def flower_auth(self) -> tuple[str, str]:
        user, _, password = (self.data_dir / "flower.auth").read_text().strip().partition(":")
        return user, password

    def log(self, name: str) -> str:
        return (self.data_dir / "logs" / f"{name}.log").read_text(errors="replace")


@contextlib.contextmanager
def up_then_down(launch: Launch):
    """``hdpbf up`` for ``launch``, then (whatever happened) ``hdpbf down``, checking that
    no process of this launch survives it (any that does is killed and fails the test)."""
    data_dir = str(launch.data_dir)
    launch.up_result = res = launch.up()
    run_id = None
    try:
        run_id = launch.run()["run_id"]
    except (OSError, ValueError):
        pass
    try:
        assert res.returncode == 0, (f"hdpbf up failed (exit {res.returncode}):\n{res.stdout}\n"
                                     f"{res.stderr}")
        yield launch
    finally:
        down = hdpbf("down", "--data-dir", data_dir, timeout=120)
        deadline = time.monotonic() + 10
        while True:
            left = processes_of(run_id or "-", data_dir)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        kill_all(left)
        assert down.returncode == 0, f"hdpbf down failed:\n{down.stdout}\n{down.stderr}"
        assert not left, f"processes of this launch survived 'hdpbf down' (now killed): {left}"


@contextlib.contextmanager
def shared_launch(tmp_path_factory, vhosts, kind: type[Launch] = Launch):
    """A launch a whole module shares, on a RabbitMQ vhost of its own (node queues are
    always ``node.<id>``: another test's mesh must never purge or consume them)."""
    broker = vhosts.new()
    try:
        with up_then_down(kind(tmp_path_factory.mktemp("launch") / "hdpbf-data",
                               broker)) as launch:
            yield launch
    finally:
        vhosts.delete(broker)


def commit_updates(launch, count: int) -> None:
    """``count`` puts through MeshClient + BrokerClientTransport (as ``hdpbf put``)."""
    cfg = MeshConfig.load(launch.data_dir / "mesh.json")
    app = LocalMesh(str(cfg.path), log_dir=str(launch.data_dir / "logs")).app
    client = MeshClient("admin", load_client_identity(cfg, "admin"), cfg.n,
                        Verifier(node_keys(cfg), client_keys(cfg)), timeout=2.0)
    client.transport = BrokerClientTransport(app, client)
    try:
        batch = client.submit([client.put_request(f"k{time.time_ns()}-{i}", i) for i in range(count)])
        client.wait(batch, timeout=30)
    finally:
        client.transport.close()
