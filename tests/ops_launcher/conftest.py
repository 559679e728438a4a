"""Fixtures for the local launcher: ``hdpbf up`` run as an operator runs it (a child
process of its own), against real RabbitMQ and Redis.

Tests here are marked ``broker``: without RabbitMQ or Redis they FAIL with a message,
they never skip.  The RabbitMQ vhost is the session's own (``broker_url`` from
tests/integration/conftest.py).  ``hdpbf down`` always runs in a finalizer, and after
it no process started by this ``up`` (found by the ``HDPBF_RUN_ID`` in its environment,
or its data dir in ``HDPBF_CONFIG``) may still run: any that does is killed by pid and
the test fails.  While /tmp/hdpbf-quiet exists (someone is benchmarking) the fixture
waits before starting anything.
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

from pbft_tasks.topology import DEFAULT_RESULT_BACKEND
from tests.integration.conftest import broker_url, no_stray_workers  # noqa: F401  (fixtures)
from tests.integration.meshkit import free_port, free_port_block, wait_not_quiet

HDPBF = [sys.executable, os.path.join(os.path.dirname(sys.executable), "hdpbf")]


def hdpbf(*args: str, timeout: float = 150.0) -> subprocess.CompletedProcess:
    """Run the ``hdpbf`` command line in a child process; wide output, no colour."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return subprocess.run([*HDPBF, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].startswith(("Z", "X"))


def processes_of(run_id: str, data_dir: str) -> list[int]:
    """Live pids whose environment says they belong to this launch."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        env = _environ(int(entry))
        if (env.get("HDPBF_RUN_ID") == run_id
                or env.get("HDPBF_CONFIG", "").startswith(data_dir + os.sep)):
            if not _is_zombie(int(entry)):
                pids.append(int(entry))
    return pids


class Launch:
    """One ``hdpbf up`` in a data dir of its own."""

    def __init__(self, data_dir: Path, broker: str):
        self.data_dir = data_dir
        self.broker = broker
        self.backend = os.environ.get("HDPBF_TEST_BACKEND_URL", DEFAULT_RESULT_BACKEND)
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
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        assert down.returncode == 0, f"hdpbf down failed:\n{down.stdout}\n{down.stderr}"
        assert not left, f"processes of this launch survived 'hdpbf down' (now killed): {left}"


@pytest.fixture(scope="module")
def launched(tmp_path_factory, broker_url):  # noqa: F811  (the imported fixture)
    wait_not_quiet()
    with up_then_down(Launch(tmp_path_factory.mktemp("launch") / "hdpbf-data", broker_url)) as launch:
        yield launch
