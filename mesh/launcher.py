"""Run a mesh as real local processes: one ``celery worker`` per node.

Owns: the exact worker command line (the one the README and compose file give), starting
workers with their node identity in the environment, waiting until every node answers,
killing and restarting one (for crash tests), and stopping exactly what was started.
Logs go to ``<data_dir>/logs/node<id>.log``.

Worker settings: ``-P solo`` (one replica is one state machine; prefork children would
split it), ``--prefetch-multiplier 64`` (a solo worker with a small prefetch stalls
under backlog, DESIGN.md), ``-E`` (task events for Flower), no mingle/gossip (they only
slow start-up; nodes talk through their own queues).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from pbft_tasks.celery_app import PREFETCH

from .topology import MeshConfig


def worker_command(node_id: int, loglevel: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "pbft_tasks", "worker",
            "-Q", f"node.{node_id}", "-n", f"node{node_id}@%h", "-E",
            "-P", "solo", "--prefetch-multiplier", str(PREFETCH),
            "--without-gossip", "--without-mingle", "-l", loglevel]


def node_env(config_path: str, node_id: int) -> dict:
    env = dict(os.environ)
    env["HDPBF_CONFIG"] = os.path.abspath(config_path)
    env["HDPBF_NODE_ID"] = str(node_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class LocalMesh:
    def __init__(self, config_path: str, app: Any = None):
        self.config_path = os.path.abspath(config_path)
        self.cfg = MeshConfig.load(self.config_path)
        if app is None:
            # An app of its own: Celery caches connection pools per app, so reusing the
            # global one after changing its broker_url would keep using the old broker.
            from celery import Celery

            from pbft_tasks.celery_app import celery_settings
            app = Celery(f"hdpbf-launcher-{id(self)}", set_as_current=False)
            app.conf.update(celery_settings(self.cfg.broker_url, self.cfg.result_backend))
        self.app = app
        self.log_dir = os.path.join(self.cfg.data_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.procs: dict[int, subprocess.Popen] = {}

    def purge(self) -> None:
        """Empty the node queues: a new mesh must not inherit an old mesh's messages."""
        from pbft_tasks.transport import declare_mesh
        with self.app.connection_for_write() as conn:
            ch = conn.default_channel
            declare_mesh(ch, [n.id for n in self.cfg.nodes])
            for info in self.cfg.nodes:
                ch.queue_purge(info.queue)

    def start(self, nodes: list[int] | None = None) -> None:
        for i in nodes if nodes is not None else [n.id for n in self.cfg.nodes]:
            logf = open(os.path.join(self.log_dir, f"node{i}.log"), "ab")
            self.procs[i] = subprocess.Popen(worker_command(i), env=node_env(self.config_path, i),
                                             stdout=logf, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            logf.close()

    def status(self, node_id: int, timeout: float = 5.0) -> dict:
        return self.app.send_task("pbft.status", queue=f"node.{node_id}").get(timeout=timeout)

    def statuses(self, timeout: float = 5.0) -> dict[int, dict]:
        pending = {n.id: self.app.send_task("pbft.status", queue=n.queue) for n in self.cfg.nodes}
        return {i: r.get(timeout=timeout) for i, r in pending.items()}

    def wait_ready(self, nodes: list[int] | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else [n.id for n in self.cfg.nodes]:
            while True:
                proc = self.procs.get(i)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"worker for node {i} exited with {proc.returncode}; "
                                       f"see {self.log_dir}/node{i}.log")
                try:
                    self.status(i, timeout=2.0)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"node {i} did not answer within {timeout}s; "
                                           f"see {self.log_dir}/node{i}.log") from None

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[node_id]
        os.killpg(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=30)

    def restart(self, node_id: int) -> None:
        self.start([node_id])

    def stop(self, timeout: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> "LocalMesh":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
