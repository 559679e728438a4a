"""The rig of ``hdpbf bench paper``: the mesh, the compute hosts, and nova-api's clients.

Owns: starting and stopping everything the paper's experiment calls, and the four ways
nova-api answers one ``get_vnc_console`` (``Rig.call``):

- ``rpc``           nova-api calls nova-compute through RabbitMQ every time
                    (``prepare(server=host).call(ctxt, "get_vnc_console", ...)``);
- ``redis``         cache-aside in Redis: GET; on a miss the same RPC, then SET with the
                    token's time to live (counted from before the RPC, so an entry never
                    outlives its token);
- ``hdpbf``         the two-step read (``ConsoleReader``) with own answers: the node's
                    ledger, else the API node's own recent step-2 answer until the ledger
                    has it, else the RPC;
- ``hdpbf-ledger``  the same reader with own answers off: the ledger alone, the paper's
                    design.

Rig (default, real broker): a ``--nodes`` mesh of real Celery workers (``LocalMesh``,
queues purged first), two compute hosts as separate processes (``compute_main``:
``ComputeService`` on the rabbit driver, like ``hdpbf compute``), each serving two RPC
servers: ``<host>`` records through consensus (used by both hdpbf configurations),
``<host>-plain`` is nova-compute as shipped (used by ``rpc`` and ``redis``, so the
baseline does no consensus work).  Instances 1, 3, 5 live on compute-1 and 2, 4, 6 on
compute-2.  nova-api (every client) runs in the bench's process and reads node 0's
ledger.  ``EmbeddedRig``: the same in one process, mesh ``EmbeddedMesh``, RPC on oslo's
``fake:`` driver, compute services as threads; Redis only if reachable.

Rules: this module never imports mesh.cli (the compute process imports it
first thing); the micro-benchmark times ``ConsoleReader.step1`` (the ledger read alone)
against a Redis GET of the same value, interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable

from .stats import percentile

CONFIGS = ("rpc", "redis", "hdpbf", "hdpbf-ledger")
TWO_STEP = ("hdpbf", "hdpbf-ledger")
CONSOLE_TYPE = "novnc"
HOSTS = ("compute-1", "compute-2")
API_NODE = 0
MICRO_READS = 5000
# The compute process's entry: this module only, so the process does not load the CLI.
COMPUTE_COMMAND = [sys.executable, "-c", "import sys; from mesh.bench.paper_rig import "
                   "compute_main; sys.exit(compute_main(sys.argv[1:]))"]


def _quiet_imports() -> None:
    """oslo.messaging imports oslo.service, whose eventlet backend warns on import that
    eventlet is deprecated; we use the threading executor, so the warning is noise here."""
    import warnings
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")


def host_of(instance: int) -> str:
    """Instances 1, 3, 5 on compute-1; 2, 4, 6 on compute-2."""
    return HOSTS[(instance - 1) % len(HOSTS)]


# -- the rig: mesh, compute hosts, and nova-api's clients ---------------------------------

class Rig:
    """Everything the run needs; subclasses differ only in how they start it."""
    mode = "?"
    label = "?"
    compute_mode = "?"

    def __init__(self, base: str, nodes: int, service_ms: float, token_ttl: float,
                 redis_url: str | None, rpc_timeout: float, instance_ids: dict[str, str],
                 say: Callable[[str], None]):
        self.base = base
        self.nodes = nodes
        self.service_ms = service_ms
        self.token_ttl = token_ttl
        self.redis_url = redis_url
        self.rpc_timeout = rpc_timeout
        self.hosts = dict(instance_ids)     # instance id -> recording host (for ConsoleReader)
        self.say = say
        self.redis = None
        self.redis_skip: str | None = None
        self.redis_keys: list[str] = []
        self.redis_prefix = f"hdpbf:bench-paper:{uuid.uuid4().hex[:12]}:"
        self.reader = None          # hdpbf: ConsoleReader with own answers
        self.ledger_reader = None   # hdpbf-ledger: the same, own answers off
        self.rpc_client = None
        self.transport = None

    # -- set-up shared by both rigs --------------------------------------------------
    def _layout(self, transport_url: str, broker_url: str | None = None,
                backend: str | None = None) -> None:
        from pbft_tasks.topology import init_mesh
        kw = {k: v for k, v in (("broker_url", broker_url), ("result_backend", backend)) if v}
        self.cfg = init_mesh(self.base, nodes=self.nodes, clients=("admin", *HOSTS),
                             readers=("api",), force=True,
                             # the embedded rig records both hosts' answers as compute-1,
                             # and so does nova's rig (paper_nova.py) for its nova-<host>s
                             hosts={HOSTS[0]: (*HOSTS, *(f"nova-{h}" for h in HOSTS))}, **kw)
        self.config_path = os.path.join(self.base, "mesh.json")
        self.transport_url = transport_url

    def _open_api_side(self) -> None:
        import oslo_messaging as messaging

        from ..openstack import ConsoleReader, Opener
        from ..openstack.rpc import compute_target, get_transport
        from pbft_tasks.topology import console_writers, load_reader_identity
        # nova-api's own client for the rpc and redis configurations: nova's target
        # (topic compute, version 6.0), called as nova does, prepare(server=host).call().
        self.transport = get_transport(self.transport_url)
        self.rpc_client = messaging.get_rpc_client(self.transport, compute_target(),
                                                   timeout=self.rpc_timeout)
        ledger = str(self.cfg.ledger_path(API_NODE))
        opener = Opener("api", load_reader_identity(self.cfg, "api"))
        writers = console_writers(self.cfg)
        self.reader = ConsoleReader(ledger, self.transport_url, self.hosts, opener=opener,
                                    rpc_timeout=self.rpc_timeout, own_answers=True,
                                    writers=writers)
        self.ledger_reader = ConsoleReader(ledger, self.transport_url, self.hosts, opener=opener,
                                           rpc_timeout=self.rpc_timeout, own_answers=False,
                                           writers=writers)
        if self.redis_url:
            try:
                import redis
                r = redis.Redis.from_url(self.redis_url, socket_timeout=5)
                r.ping()
                self.redis = r
            except Exception as exc:  # embedded mode runs without Redis
                self.redis_skip = f"Redis not reachable at {self.redis_url} ({type(exc).__name__})"
        else:
            self.redis_skip = "no Redis URL given"

    # -- the four ways to answer one call -------------------------------------------------
    def rpc(self, instance_id: str) -> tuple[dict, int]:
        host = self.hosts[instance_id] + "-plain"
        info = self.rpc_client.prepare(server=host).call(
            {}, "get_vnc_console", instance=instance_id, console_type=CONSOLE_TYPE)
        return info, 2

    def redis_aside(self, instance_id: str) -> tuple[dict, int]:
        from ..openstack import instance_key
        key = self.redis_prefix + instance_key(instance_id, CONSOLE_TYPE)
        raw = self.redis.get(key)
        if raw is not None:
            return json.loads(raw), 1
        t0 = time.monotonic()
        info, _ = self.rpc(instance_id)
        ttl_ms = int((self.token_ttl - (time.monotonic() - t0)) * 1000)
        if ttl_ms > 0:
            self.redis.set(key, json.dumps(info, sort_keys=True), px=ttl_ms)
            self.redis_keys.append(key)
        return info, 2

    def hdpbf(self, instance_id: str) -> tuple[dict, int | str]:
        return self.reader.get_vnc_console(instance_id, CONSOLE_TYPE)

    def hdpbf_ledger(self, instance_id: str) -> tuple[dict, int | str]:
        return self.ledger_reader.get_vnc_console(instance_id, CONSOLE_TYPE)

    def call(self, config: str, instance_id: str) -> tuple[dict, int | str]:
        return {"rpc": self.rpc, "redis": self.redis_aside, "hdpbf": self.hdpbf,
                "hdpbf-ledger": self.hdpbf_ledger}[config](instance_id)

    def wait_committed(self, instance_ids: list[str], timeout: float = 15.0) -> float:
        """Wait until the ledger answers step 1 for every id (their records committed)."""
        t0 = time.monotonic()
        while True:
            missing = [i for i in instance_ids if self.reader.step1(i, CONSOLE_TYPE) is None]
            if not missing:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{len(missing)} console records not committed after {timeout}s")
            self.idle(0.002)

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)

    def served(self) -> list[dict]:
        raise NotImplementedError

    # -- the read micro-benchmark --------------------------------------------------------
    def micro(self, instance_ids: list[str], n: int = MICRO_READS) -> dict:
        """``ConsoleReader.step1`` alone and a Redis GET (+ JSON decode) of the same
        value, interleaved, order alternating, each timed with perf_counter_ns."""
        clock = time.perf_counter_ns
        values = {i: self.reader.step1(i, CONSOLE_TYPE) for i in instance_ids}
        ids = [i for i, v in values.items() if v is not None]
        if not ids:
            return {"step1_p50_us": None, "step1_p99_us": None,
                    "redis_get_p50_us": None, "redis_get_p99_us": None}
        keys = {}
        if self.redis is not None:
            for i in ids:
                keys[i] = f"{self.redis_prefix}micro:{i}"
                self.redis.set(keys[i], json.dumps(values[i], sort_keys=True), ex=600)
                self.redis_keys.append(keys[i])
        s1: list[int] = []
        rg: list[int] = []
        step1 = self.reader.step1
        for k in range(n + 200):
            inst = ids[k % len(ids)]

            def a() -> None:
                t0 = clock()
                step1(inst, CONSOLE_TYPE)
                s1.append(clock() - t0)

            def b() -> None:
                if self.redis is None:
                    return
                t0 = clock()
                json.loads(self.redis.get(keys[inst]))
                rg.append(clock() - t0)
            (a, b)[k % 2]()
            (b, a)[k % 2]()
        s1, rg = s1[200:], rg[200:]   # first reads warm caches
        us = lambda v, q: round(percentile(v, q) / 1000, 2) if v else None  # noqa: E731
        return {"step1_p50_us": us(s1, 50), "step1_p99_us": us(s1, 99),
                "redis_get_p50_us": us(rg, 50), "redis_get_p99_us": us(rg, 99), "micro_reads": n}

    # -- tear-down -------------------------------------------------------------------------
    def close_api_side(self) -> None:
        if self.redis is not None:
            for start in range(0, len(self.redis_keys), 500):
                self.redis.delete(*self.redis_keys[start:start + 500])
            self.redis.close()
        for reader in (self.reader, self.ledger_reader):
            if reader is not None:
                reader.close()
        if self.transport is not None:
            from ..openstack.rpc import release_transport
            release_transport(self.transport, self.transport_url)

    def close(self) -> None:
        self.close_api_side()


class BrokerRig(Rig):
    mode = "broker"
    compute_mode = "processes"

    def __init__(self, *a: Any, broker: str | None = None, backend: str | None = None, **kw: Any):
        super().__init__(*a, **kw)
        self.broker, self.backend = broker, backend
        self.mesh = None
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def label(self) -> str:
        return (f"real RabbitMQ, {self.nodes}-node mesh (one Celery worker each), "
                f"2 compute hosts as separate processes")

    def start(self) -> None:
        from ..ops.launcher import LocalMesh
        from pbft_tasks.topology import DEFAULT_BROKER_URL, DEFAULT_RESULT_BACKEND
        broker = self.broker or DEFAULT_BROKER_URL
        from ..openstack.rpc import transport_url_from_broker
        self._layout(transport_url_from_broker(broker), broker, self.backend or DEFAULT_RESULT_BACKEND)
        if self.redis_url is None:
            self.redis_url = self.cfg.result_backend
        self.mesh = LocalMesh(self.config_path)
        self.mesh.purge()
        t0 = time.perf_counter()
        self.mesh.start()
        for host in HOSTS:
            self.procs[host] = self._start_compute(host)
        self.mesh.wait_ready(timeout=90)
        for host, proc in self.procs.items():
            self._wait_compute(host, proc)
        self.say(f"{self.nodes} mesh workers and {len(HOSTS)} compute processes ready in "
                 f"{time.perf_counter() - t0:.1f}s (data in {self.base})")
        self._open_api_side()

    def _start_compute(self, host: str) -> subprocess.Popen:
        cmd = [*COMPUTE_COMMAND, "--config", self.config_path,
               "--host", host, "--transport-url", self.transport_url,
               "--service-ms", str(self.service_ms), "--token-ttl", str(self.token_ttl),
               "--served-out", os.path.join(self.base, f"served-{host}.json")]
        log = open(os.path.join(self.base, f"compute-{host}.log"), "ab")
        try:
            return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    text=True, start_new_session=True)
        finally:
            log.close()

    def _wait_compute(self, host: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        line = _readline(proc, timeout)
        if line.strip() != "ready":
            raise RuntimeError(f"compute {host} did not start (said {line!r}); "
                               f"see {self.base}/compute-{host}.log")

    def served(self) -> list[dict]:
        out: list[dict] = []
        for host in HOSTS:
            path = os.path.join(self.base, f"served-{host}.json")
            try:
                with open(path) as fh:
                    out += json.load(fh)
            except FileNotFoundError:
                raise RuntimeError(f"compute {host} wrote no record of what it served; "
                                   f"see {self.base}/compute-{host}.log") from None
        return out

    def stop_compute(self) -> None:
        """Close each compute's stdin: it flushes its recorder, writes what it served, exits."""
        for proc in self.procs.values():
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.close()
        for host, proc in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()

    def close(self) -> None:
        try:
            self.close_api_side()
        finally:
            try:
                self.stop_compute()
            finally:
                if self.mesh is not None:
                    self.mesh.stop()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else ""


class EmbeddedRig(Rig):
    mode = "embedded"
    compute_mode = "threads"
    label = "EMBEDDED (no broker): one process, in-memory mesh, oslo fake: RPC driver"

    def start(self) -> None:
        from ..embedded import EmbeddedMesh
        from pbft_tasks.topology import DEFAULT_RESULT_BACKEND
        self._layout("fake:")
        if self.redis_url is None:
            self.redis_url = DEFAULT_RESULT_BACKEND
        self.mesh = EmbeddedMesh(self.config_path)
        self.mesh_lock = threading.RLock()
        self.services = []
        client = _LockedClient(self.mesh.client("compute-1", timeout=2.0), self.mesh_lock)
        self.recorder = _recorder(self.cfg, client)
        for host in HOSTS:
            self.services += _compute_services(host, self.transport_url, self.recorder,
                                               self.service_ms, self.token_ttl)
        for s in self.services:
            s.start()
        self._open_api_side()

    def idle(self, seconds: float) -> None:
        with self.mesh_lock:
            self.mesh.step()
        time.sleep(seconds)

    def served(self) -> list[dict]:
        return [rec for s in self.services for rec in s.served]

    def close(self) -> None:
        try:
            self.close_api_side()
        finally:
            for s in getattr(self, "services", []):
                s.stop()
            if getattr(self, "recorder", None) is not None:
                self.recorder.close()
            if getattr(self, "mesh", None) is not None:
                self.mesh.close()


class _LockedClient:
    """The embedded mesh is stepped by whoever polls; one lock keeps it single-threaded."""

    def __init__(self, client: Any, lock: threading.RLock):
        self._client, self._lock = client, lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def locked(*a: Any, **kw: Any) -> Any:
            with self._lock:
                return attr(*a, **kw)
        return locked


def _recorder(cfg: Any, client: Any) -> Any:
    from ..openstack import ConsoleRecorder, Sealer
    from pbft_tasks.topology import reader_keys
    return ConsoleRecorder(client, Sealer(reader_keys(cfg)))


def _compute_services(host: str, transport_url: str, recorder: Any, service_ms: float,
                      token_ttl: float) -> list:
    """``host`` records through consensus; ``host-plain`` is nova-compute as shipped."""
    from ..openstack import ComputeService
    return [ComputeService(host, transport_url, recorder=recorder, service_ms=service_ms,
                           token_ttl=token_ttl),
            ComputeService(f"{host}-plain", transport_url, recorder=None, service_ms=service_ms,
                           token_ttl=token_ttl)]


# -- the compute process (broker rig) ------------------------------------------------------

def compute_main(argv: list[str]) -> int:
    """One compute host: ``<host>`` (recording) and ``<host>-plain`` RPC servers.  Prints
    ``ready``; when stdin closes, flushes the recorder, writes served records, exits."""
    p = argparse.ArgumentParser(prog="bench-paper-compute")
    p.add_argument("--config", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--transport-url", required=True)
    p.add_argument("--service-ms", type=float, default=0.0)
    p.add_argument("--token-ttl", type=float, default=600.0)
    p.add_argument("--served-out", required=True)
    a = p.parse_args(argv)
    _quiet_imports()
    from pbft_tasks.celery_app import app
    from pbft_tasks.signing import Verifier

    from ..client import BrokerClientTransport, MeshClient
    from pbft_tasks.topology import MeshConfig, client_keys, load_client_identity, node_keys
    cfg = MeshConfig.load(a.config)
    app.conf.update(broker_url=cfg.broker_url, result_backend=cfg.result_backend)
    client = MeshClient(a.host, load_client_identity(cfg, a.host), cfg.n,
                        Verifier(node_keys(cfg), client_keys(cfg)))
    client.transport = BrokerClientTransport(app, client)
    recorder = _recorder(cfg, client)
    services = _compute_services(a.host, a.transport_url, recorder, a.service_ms, a.token_ttl)
    for s in services:
        s.start()
    print("ready", flush=True)
    sys.stdin.read()                      # until the bench closes our stdin
    for s in services:
        s.stop()
    # What was served first: the bench's correctness check needs it even if the last
    # records cannot be committed (a broker blip after the run is not a wrong answer).
    served = [dict(rec) for s in services for rec in s.served]
    with open(a.served_out, "w") as fh:
        json.dump(served, fh)
    try:
        recorder.flush(20.0)
    except TimeoutError as exc:
        print(f"compute {a.host}: {exc}", file=sys.stderr, flush=True)
    finally:
        recorder.close(timeout=1.0)
    return 0
