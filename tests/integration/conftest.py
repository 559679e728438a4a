"""Fixtures for the multi-process mesh tests: real RabbitMQ, real Redis, real workers.

Every test here is marked ``broker`` and needs RabbitMQ at 127.0.0.1:5672 (guest/guest)
and Redis at 127.0.0.1:6379.  When either is missing the tests FAIL with a message that
says how to start it; they never skip (CI starts both, .ci/run).

Isolation:
- The session gets its own RabbitMQ virtual host (``rabbitmqctl add_vhost``), deleted at
  the end.  Node queues are always named ``node.<id>``, so without it a benchmark
  running beside the tests on the default vhost would share (and have purged) the very
  queues our workers consume.  Set ``HDPBF_TEST_BROKER_URL`` to use a broker of your
  own instead; without rabbitmqctl the default vhost is used, with a warning.  Vhosts
  left by a session that was killed (its pid is gone) are deleted at the next start.
- Each test lays out its own mesh (``init_mesh`` into its ``tmp_path``), purges the
  node queues before starting workers, and stops them in a finalizer.
- At the end of the session no worker started from this session's temp dirs may still
  run (``pgrep -f "celery -A pbft_tasks"``, matched on HDPBF_CONFIG): any that does is
  killed by pid and the session fails.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from pbft_tasks.topology import DEFAULT_BROKER_URL, DEFAULT_RESULT_BACKEND

from .meshkit import Mesh

WORKER_PATTERN = "celery -A pbft_tasks"
VHOST_PREFIX = "hdpbf-it-"
RABBIT = ("127.0.0.1", 5672)
REDIS = ("127.0.0.1", 6379)


# -- services ----------------------------------------------------------------------------

def _port_open(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=3):
            return True
    except OSError:
        return False


def _require_services(broker_url: str, backend_url: str) -> None:
    if not _port_open(RABBIT):
        pytest.fail("RabbitMQ is not reachable at 127.0.0.1:5672; the broker tests need it "
                    "and are never skipped.  Start it with: rabbitmq-server -detached",
                    pytrace=False)
    if not _port_open(REDIS):
        pytest.fail("Redis is not reachable at 127.0.0.1:6379; the broker tests need it and "
                    "are never skipped.  Start it with: redis-server --daemonize yes "
                    "--bind 127.0.0.1 --port 6379 --save '' --appendonly no", pytrace=False)
    from kombu import Connection
    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=3)
    except Exception as exc:
        pytest.fail(f"cannot connect to RabbitMQ as {broker_url}: {exc!r}", pytrace=False)
    import redis
    try:
        redis.Redis.from_url(backend_url, socket_timeout=5).ping()
    except Exception as exc:
        pytest.fail(f"cannot talk to Redis at {backend_url}: {exc!r}", pytrace=False)


def _rabbitmqctl(*args: str) -> str | None:
    """rabbitmqctl's output, or None if it is missing or failed."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def _delete_stale_vhosts() -> None:
    """Vhosts of sessions that were killed before their teardown (their pid is gone)."""
    for name in (_rabbitmqctl("list_vhosts", "-q", "name") or "").split():
        if not name.startswith(VHOST_PREFIX):
            continue
        try:
            os.kill(int(name[len(VHOST_PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            _rabbitmqctl("delete_vhost", name)
        except (ValueError, PermissionError):
            pass


@pytest.fixture(scope="session")
def broker_url():
    """The AMQP URL every mesh of this session uses (a private vhost when possible)."""
    override = os.environ.get("HDPBF_TEST_BROKER_URL")
    backend = os.environ.get("HDPBF_TEST_BACKEND_URL", DEFAULT_RESULT_BACKEND)
    if override:
        _require_services(override, backend)
        yield override
        return
    _require_services(DEFAULT_BROKER_URL, backend)
    _delete_stale_vhosts()
    vhost = f"{VHOST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    if _rabbitmqctl("add_vhost", vhost) is not None and _rabbitmqctl(
            "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*") is not None:
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        _require_services(url, backend)
        try:
            yield url
        finally:
            _rabbitmqctl("delete_vhost", vhost)
    else:
        warnings.warn("rabbitmqctl could not create a private vhost; the integration tests "
                      "use the default vhost and purge the node.<id> queues there", stacklevel=2)
        yield DEFAULT_BROKER_URL


# -- no stray workers -------------------------------------------------------------------------

def _worker_pids() -> set[int]:
    res = subprocess.run(["pgrep", "-f", WORKER_PATTERN], capture_output=True, text=True)
    return {int(p) for p in res.stdout.split()}


def _config_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"HDPBF_CONFIG="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


@pytest.fixture(scope="session", autouse=True)
def no_stray_workers(tmp_path_factory):
    """Fail the session if a worker started by these tests outlives them."""
    before = _worker_pids()
    base = str(tmp_path_factory.getbasetemp().resolve())
    yield
    deadline = time.monotonic() + 10
    while True:
        ours = {p: _config_of(p) for p in _worker_pids() - before}
        ours = {p: c for p, c in ours.items() if c is not None and c.startswith(base)}
        if not ours or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if ours:
        for pid in ours:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        pytest.fail(f"worker processes survived the integration tests (now killed): "
                    f"{sorted(ours.items())}", pytrace=False)


@pytest.fixture
def make_mesh(tmp_path, broker_url):
    """``make_mesh(n=4, **mesh_settings)`` -> a started Mesh; workers stop at teardown."""
    meshes: list[Mesh] = []

    def make(n: int = 4, start: bool = True, **settings: Any) -> Mesh:
        m = Mesh(tmp_path / f"mesh{len(meshes)}", n, broker_url, **settings)
        meshes.append(m)
        return m.start() if start else m

    yield make
    errors = []
    for m in meshes:
        try:
            m.stop()
        except Exception as exc:  # stop the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]
