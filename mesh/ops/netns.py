"""Several hosts on one machine: Linux network namespaces joined by a bridge.

Owns: building and tearing down a topology of "hosts" (one network namespace each,
``ip netns``) on a bridge of their own, with the broker reachable on ONE address, and
running commands inside a host.  It serves the namespace tests
(tests/netns/test_netns_mesh.py) and ``hdpbf bench consensus --netns``.

Layout (defaults; everything carries the ``prefix`` so two topologies never meet):

    root namespace:  bridge <prefix>br (no address: the root is not a host)
                     socat UNIX-LISTEN:/tmp/<prefix>-amqp.sock -> 127.0.0.1:5672
                     socat UNIX-LISTEN:/tmp/<prefix>-redis.sock -> 127.0.0.1:6379
    host "broker":   10.77.0.2, socat TCP-LISTEN:5672 and :6379 -> those sockets
    host i:          10.77.0.(10+i) on eth0, veth peer <prefix>v<i> on the bridge

So every validator and follower reaches RabbitMQ and Redis only at 10.77.0.2, over its
own link, and cutting that link (``cut``: ``ip link set <prefix>v<i> down``) cuts the
host off exactly as a pulled cable would.  The shared RabbitMQ keeps listening on
127.0.0.1 only and is never reconfigured: the broker host relays to it through a Unix
socket (file systems are shared between namespaces; loopback is not).  RabbitMQ's
``guest`` user, allowed only from loopback, still works: the relay connects from there.

Rules:
- Needs root (CAP_NET_ADMIN), ``ip`` (iproute2) and ``socat``; ``require()`` says
  what is missing.  Only addresses inside the namespaces made here are used.
- ``down()`` removes everything this object made and is safe to call twice; ``up()``
  first removes leftovers of a topology with the same prefix (a killed run).  Use it as
  a context manager so a failure still tears down.

On real machines the same thing is: one host per validator and follower, RabbitMQ on
one address they can all reach, and the same ``celery ... worker`` / ``hdpbf follow``
commands with mesh.json's ``broker_url`` naming that address (docs/operations/followers.md).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence


class NetnsError(RuntimeError):
    """The topology cannot be built here; the message says why."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def require() -> None:
    """Raise NetnsError naming what this machine lacks for the topology."""
    missing = [t for t in ("ip", "socat") if shutil.which(t) is None]
    if missing:
        raise NetnsError(f"missing {', '.join(missing)}: apt-get install -y iproute2 socat")
    if os.geteuid() != 0:
        raise NetnsError("network namespaces need root (CAP_NET_ADMIN)")


@dataclass
class Topology:
    hosts: Sequence[str]
    prefix: str = "hfol"
    subnet: str = "10.77.0"
    broker_port: int = 5672
    redis_port: int = 6379
    upstream_amqp: tuple[str, int] = ("127.0.0.1", 5672)
    upstream_redis: tuple[str, int] = ("127.0.0.1", 6379)
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _made: bool = field(default=False, repr=False)

    # -- names and addresses --------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def broker_ns(self) -> str:
        return f"{self.prefix}-broker"

    @property
    def broker_addr(self) -> str:
        return f"{self.subnet}.2"

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def index(self, host: str) -> int:
        return list(self.hosts).index(host)

    def addr(self, host: str) -> str:
        return f"{self.subnet}.{10 + self.index(host)}"

    def veth(self, host: str) -> str:
        return f"{self.prefix}v{self.index(host)}"

    def _sock(self, what: str) -> str:
        return f"/tmp/{self.prefix}-{what}.sock"

    def broker_url(self, vhost: str = "", user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@{self.broker_addr}:{self.broker_port}/{vhost}"

    def redis_url(self, db: int = 0) -> str:
        return f"redis://{self.broker_addr}:{self.redis_port}/{db}"

    def namespaces(self) -> list[str]:
        return [self.broker_ns] + [self.ns(h) for h in self.hosts]

    # -- building -------------------------------------------------------------------------
    def up(self) -> "Topology":
        require()
        self.down(force=True)           # leftovers of a killed run with this prefix
        self._made = True
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "link", "set", self.bridge, "up")
        self._add_host(self.broker_ns, self.broker_addr, f"{self.prefix}vb")
        for host in self.hosts:
            self._add_host(self.ns(host), self.addr(host), self.veth(host))
        self._relay("amqp", self.upstream_amqp, self.broker_port)
        self._relay("redis", self.upstream_redis, self.redis_port)
        self.wait_reachable(self.hosts[0] if self.hosts else None)
        return self

    def _add_host(self, ns: str, addr: str, veth: str) -> None:
        peer = f"{veth}p"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", veth, "master", self.bridge)
        _run("ip", "link", "set", veth, "up")
        _run("ip", "link", "set", peer, "netns", ns)
        _run("ip", "-n", ns, "link", "set", peer, "name", "eth0")
        _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _relay(self, what: str, upstream: tuple[str, int], port: int) -> None:
        sock = self._sock(what)
        if os.path.exists(sock):
            os.unlink(sock)
        self._spawn(["socat", f"UNIX-LISTEN:{sock},fork,unlink-early",
                     f"TCP:{upstream[0]}:{upstream[1]}"])
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise NetnsError(f"socat did not create {sock}")
            time.sleep(0.02)
        self._spawn(["ip", "netns", "exec", self.broker_ns, "socat",
                     f"TCP-LISTEN:{port},bind={self.broker_addr},fork,reuseaddr",
                     f"UNIX-CONNECT:{sock}"])

    def _spawn(self, cmd: list[str]) -> None:
        self._procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))

    def wait_reachable(self, host: Optional[str], timeout: float = 15.0) -> None:
        """Until the broker address answers on its AMQP port from ``host``."""
        if host is None:
            return
        probe = ("import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"
                 ".close()")
        deadline = time.monotonic() + timeout
        while True:
            res = _run("ip", "netns", "exec", self.ns(host), "python3", "-c", probe,
                       self.broker_addr, str(self.broker_port), check=False)
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NetnsError(f"{self.broker_addr}:{self.broker_port} unreachable from "
                                 f"{host}: {res.stderr.strip()[-300:]}")
            time.sleep(0.1)

    # -- using ----------------------------------------------------------------------------
    def wrap(self, host: str) -> list[str]:
        """The prefix that runs a command on ``host``."""
        return ["ip", "netns", "exec", self.ns(host)]

    def cut(self, host: str) -> None:
        """Pull ``host``'s cable: its link to the bridge goes down."""
        _run("ip", "link", "set", self.veth(host), "down")

    def restore(self, host: str) -> None:
        _run("ip", "link", "set", self.veth(host), "up")

    # -- tearing down ---------------------------------------------------------------------
    def down(self, force: bool = False) -> None:
        """Stop the relays, delete the namespaces (their veths go with them), the bridge
        and the sockets.  Idempotent; errors of already-gone parts are ignored."""
        if not (self._made or force):
            return
        for proc in self._procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self._procs.clear()
        existing = set(_run("ip", "netns", "list", check=False).stdout.split())
        for ns in self.namespaces():
            if ns in existing:
                _run("ip", "netns", "pids", ns, check=False)
                for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)   # only processes inside OUR namespace
                    except (ProcessLookupError, ValueError):
                        pass
                _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        # root-side veths whose namespace outlived its name (a process still inside)
        for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"{self.prefix}v"):
                _run("ip", "link", "del", name, check=False)
        for what in ("amqp", "redis"):
            try:
                os.unlink(self._sock(what))
            except FileNotFoundError:
                pass
        self._made = False

    def __enter__(self) -> "Topology":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


__all__ = ["Topology", "NetnsError", "require"]
