"""What the tests need outside Python: RabbitMQ and Redis, their private vhosts, free
ports, HTTP looks, and the benchmarking marker.  The fixtures built on these live in
tests/conftest.py; nothing here is a fixture.

Rules:
- RabbitMQ (127.0.0.1:5672, guest/guest) and Redis (127.0.0.1:6379) are shared with
  everyone on the machine: tests never stop, restart or purge the default vhost.  A
  test that stops the broker does it with ``rabbit_app_stopped`` (``stop_app``, never
  a server stop) and always starts it again, SIGTERM included.
- A broker test that is missing RabbitMQ or Redis FAILS saying how to start them; it
  never skips.
- Vhosts are named ``hdpbf-it-<pid>-<rand>``: one whose pid is gone belongs to a killed
  session and is deleted when the next session starts.
- Tests purge node queues, so they run on vhosts of their own, made with rabbitmqctl;
  ``HDPBF_TEST_BROKER_URL`` / ``HDPBF_TEST_BACKEND_URL`` point them at a broker or
  Redis of one's own instead (then no vhost is made).
"""
from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from typing import Iterator

import pytest

from pbft_tasks.topology import DEFAULT_BROKER_URL, DEFAULT_RESULT_BACKEND

VHOST_PREFIX = "hdpbf-it-"
RABBIT = ("127.0.0.1", 5672)
REDIS = ("127.0.0.1", 6379)
QUIET = "/tmp/hdpbf-quiet"


# -- ports -------------------------------------------------------------------------------

def port_open(host: str = RABBIT[0], port: int = RABBIT[1], timeout: float = 1.0) -> bool:
    """Whether something listens there (RabbitMQ by default: the broker stop/start
    tests wait on it)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(count: int) -> int:
    """A base port with ``count`` consecutive free ports from it (e.g. metrics: one per
    node), away from the default 9400/9500 that other meshes on this machine use."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {count} free ports found")


# -- HTTP --------------------------------------------------------------------------------

def http_get(url: str, auth: tuple[str, str] | None = None,
             timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body); an HTTP error status is an answer too, a refused connection raises."""
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_body(url: str, auth: tuple[str, str] | None = None, timeout: float = 10.0) -> bytes:
    """The body of a 200 answer; anything else raises."""
    status, body = http_get(url, auth, timeout)
    if status != 200:
        raise AssertionError(f"GET {url}: HTTP {status}: {body[:300]!r}")
    return body


def answers(url: str, **kw) -> bool:
    try:
        return http_get(url, **kw)[0] == 200
    except OSError:
        return False


# -- the benchmarking marker ---------------------------------------------------------------

def wait_not_quiet(what: str = "touching RabbitMQ", limit: float = 900.0) -> None:
    """While the team's benchmarking marker exists, wait before starting workers or
    restarting the broker (a benchmark needs the machine to itself); fail after ``limit``."""
    deadline = time.monotonic() + limit
    while os.path.exists(QUIET):
        if time.monotonic() > deadline:
            pytest.fail(f"{QUIET} still exists after {limit}s: someone is benchmarking; "
                        f"not {what}", pytrace=False)
        time.sleep(2)


# -- RabbitMQ and Redis ----------------------------------------------------------------------

def backend_url() -> str:
    """Celery's result backend (Redis) for every mesh of the tests."""
    return os.environ.get("HDPBF_TEST_BACKEND_URL", DEFAULT_RESULT_BACKEND)


def require_services(broker_url: str, backend: str) -> None:
    """Fail (never skip) unless RabbitMQ at ``broker_url`` and Redis at ``backend`` answer."""
    if not port_open(*RABBIT, timeout=3):
        pytest.fail("RabbitMQ is not reachable at 127.0.0.1:5672; the broker tests need it "
                    "and are never skipped.  Start it with: rabbitmq-server -detached",
                    pytrace=False)
    if not port_open(*REDIS, timeout=3):
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
        redis.Redis.from_url(backend, socket_timeout=5).ping()
    except Exception as exc:
        pytest.fail(f"cannot talk to Redis at {backend}: {exc!r}", pytrace=False)


def try_rabbitmqctl(*args: str) -> str | None:
    """rabbitmqctl's output, or None if it is missing or failed."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def rabbitmqctl(*args: str) -> str:
    """rabbitmqctl's output; fails the test saying why when it cannot run or fails."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        pytest.fail(f"rabbitmqctl is not on PATH; needed for: rabbitmqctl {' '.join(args)}",
                    pytrace=False)
    res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {res.stderr or res.stdout}",
                    pytrace=False)
    return res.stdout


class Vhosts:
    """Private RabbitMQ vhosts of this session, deleted when it ends (``close``)."""

    def __init__(self) -> None:
        self.override = os.environ.get("HDPBF_TEST_BROKER_URL")
        self.backend = backend_url()
        self.made: list[str] = []
        if self.override:
            require_services(self.override, self.backend)
        else:
            require_services(DEFAULT_BROKER_URL, self.backend)
            self._delete_stale()

    def new(self) -> str:
        """The URL of a fresh vhost (the override URL when one is set).  Fails when
        rabbitmqctl cannot make one: the tests purge node queues, and never the
        default vhost's, where others on the machine run their meshes."""
        if self.override:
            return self.override
        vhost = f"{VHOST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        rabbitmqctl("add_vhost", vhost)
        self.made.append(vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        require_services(url, self.backend)
        return url

    def delete(self, url: str) -> None:
        vhost = url.rsplit("/", 1)[-1]
        if vhost in self.made:
            self.made.remove(vhost)
            try_rabbitmqctl("delete_vhost", vhost)

    def close(self) -> None:
        for vhost in list(self.made):
            try_rabbitmqctl("delete_vhost", vhost)
        self.made.clear()

    @staticmethod
    def _delete_stale() -> None:
        """Vhosts of sessions that were killed before their teardown (their pid is gone)."""
        for name in (try_rabbitmqctl("list_vhosts", "-q", "name") or "").split():
            if not name.startswith(VHOST_PREFIX):
                continue
            try:
                os.kill(int(name[len(VHOST_PREFIX):].split("-")[0]), 0)
            except ProcessLookupError:
                try_rabbitmqctl("delete_vhost", name)
            except (ValueError, PermissionError):
                pass


def _raise_interrupt(*_):
    raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def rabbit_app_stopped(limit: float = 60.0) -> Iterator[None]:
    """The shared RabbitMQ's application stopped for the ``with`` body, started again
    afterwards whatever happens (a SIGTERM, e.g. from ``timeout``, included), and
    listening again before this returns."""
    wait_not_quiet("stopping RabbitMQ")
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        rabbitmqctl("stop_app")
        if port_open():
            raise AssertionError("RabbitMQ still listens after stop_app")
        yield
    finally:
        try:
            rabbitmqctl("start_app")
        finally:
            signal.signal(signal.SIGTERM, old)
    deadline = time.monotonic() + limit
    while not port_open():
        if time.monotonic() > deadline:
            raise AssertionError(f"RabbitMQ does not listen on 5672 {limit:g} s after start_app")
        time.sleep(0.1)
