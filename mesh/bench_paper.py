"""The paper's experiment, reproduced and set against the obvious alternative.

``hdpbf bench paper`` makes the 100 ``get_vnc_console`` calls of Kim and Park (2020,
"Performance evaluation", PAPER.md; the order is ``mesh.workload.paper_sequence``)
three ways in one run, back to back as the paper's script made them:

- ``rpc``    plain OpenStack: nova-api calls nova-compute through RabbitMQ every time
             (``prepare(server=host).call(ctxt, "get_vnc_console", ...)``);
- ``redis``  cache-aside in Redis: GET; on a miss the same RPC, then SET with the token's
             time to live (counted from before the RPC, so an entry never outlives its
             token);
- ``hdpbf``  the two-step read (``ConsoleReader``): the node's own ledger first, the RPC
             on a miss; compute records what it served through consensus (step 5a).

Rig (default, real broker): a ``--nodes`` mesh of real Celery workers (``LocalMesh``,
queues purged first), two compute hosts as separate processes (``compute_main``:
``ComputeService`` on the rabbit driver, like ``hdpbf
compute``), each serving two RPC servers: ``<host>`` records through consensus (used by
``hdpbf``), ``<host>-plain`` is nova-compute as shipped (used by ``rpc`` and ``redis``,
so the baseline does no consensus work).  Instances 1, 3, 5 live on compute-1 and 2, 4,
6 on compute-2.  nova-api (the three clients) runs in this process and reads node 0's
ledger.  ``--embedded``: the same in one process, mesh ``EmbeddedMesh``, RPC on oslo's
``fake:`` driver, compute services as threads; Redis only if reachable.

Fairness rules: repetitions are interleaved and the order of configurations rotates
each repetition; every (configuration, repetition) gets fresh instance ids so each one
starts cold; every path is warmed up once on an instance outside the workload; after an
``hdpbf`` run we wait until its entries are committed, so the next run starts on a quiet
mesh.  In the same run we time ``ConsoleReader.step1`` alone and a Redis GET of the same
value, interleaved.

Correctness, checked on every answer: compare with what compute served
(``ComputeService.served``).  An answer is *stale* when it equals no ``connect_info``
compute served for that instance before the answer whose token was still alive when the
answer came back; ``stale_answers`` (of ``hdpbf``) must be 0.  An answer equal to a live
token that is not the newest one (consensus lagging behind a second step-2 call) is
counted apart as ``older_token_answers``: nova honours every token until it expires.

Figures, never assertions (the tests assert).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from .bench_consensus import percentile, write_json
from .workload import INSTANCES, first_calls, paper_sequence

CONFIGS = ("rpc", "redis", "hdpbf")
CONSOLE_TYPE = "novnc"
HOSTS = ("compute-1", "compute-2")
API_NODE = 0
MICRO_READS = 5000
# The compute process's entry.  Not ``python -m mesh.bench_paper``: importing this module
# as __main__ first would import mesh.commands before mesh.cli, and commands' ``bench``
# group does not exist yet at that point.
COMPUTE_COMMAND = [sys.executable, "-c", "import sys; from mesh.bench_paper import compute_main; "
                   "sys.exit(compute_main(sys.argv[1:]))"]
COLORS = {"rpc": "#d62728", "redis": "#1f77b4", "hdpbf": "#2ca02c"}


def _quiet_imports() -> None:
    """oslo.messaging imports oslo.service, whose eventlet backend warns on import that
    eventlet is deprecated; we use the threading executor, so the warning is noise here."""
    import warnings
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")


def host_of(instance: int) -> str:
    """Instances 1, 3, 5 on compute-1; 2, 4, 6 on compute-2."""
    return HOSTS[(instance - 1) % len(HOSTS)]


@dataclass
class CallRecord:
    config: str
    repeat: int
    call: int           # 1..100
    instance: int       # 1..6 (the paper's numbering)
    ms: float
    step: int           # 1: answered locally (ledger / cache), 2: RPC to compute
    instance_id: str = ""
    t_start: float = 0.0
    t_end: float = 0.0  # wall clock (time.time) when the answer came back
    answer: Any = None

    def public(self) -> dict:
        return {"config": self.config, "repeat": self.repeat, "call": self.call,
                "instance": self.instance, "ms": round(self.ms, 4), "step": self.step}


# -- the rig: mesh, compute hosts, and nova-api's three clients ---------------------------

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
        self.reader = None
        self.rpc_client = None
        self.transport = None

    # -- set-up shared by both rigs --------------------------------------------------
    def _layout(self, transport_url: str, broker_url: str | None = None,
                backend: str | None = None) -> None:
        from .topology import init_mesh
        kw = {k: v for k, v in (("broker_url", broker_url), ("result_backend", backend)) if v}
        self.cfg = init_mesh(self.base, nodes=self.nodes, clients=("admin", *HOSTS),
                             readers=("api",), force=True, **kw)
        self.config_path = os.path.join(self.base, "mesh.json")
        self.transport_url = transport_url

    def _open_api_side(self) -> None:
        import oslo_messaging as messaging

        from .openstack import ConsoleReader, Opener
        from .openstack.rpc import compute_target, get_transport
        from .topology import load_reader_identity
        # nova-api's own client for the rpc and redis configurations: nova's target
        # (topic compute, version 6.0), called as nova does, prepare(server=host).call().
        self.transport = get_transport(self.transport_url)
        self.rpc_client = messaging.get_rpc_client(self.transport, compute_target(),
                                                   timeout=self.rpc_timeout)
        ledger = os.path.join(str(self.cfg.node_data_dir(API_NODE)), "ledger.sqlite")
        self.reader = ConsoleReader(ledger, self.transport_url, self.hosts,
                                    opener=Opener("api", load_reader_identity(self.cfg, "api")),
                                    rpc_timeout=self.rpc_timeout)
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

    # -- the three ways to answer one call ------------------------------------------------
    def rpc(self, instance_id: str) -> tuple[dict, int]:
        host = self.hosts[instance_id] + "-plain"
        info = self.rpc_client.prepare(server=host).call(
            {}, "get_vnc_console", instance=instance_id, console_type=CONSOLE_TYPE)
        return info, 2

    def redis_aside(self, instance_id: str) -> tuple[dict, int]:
        from .openstack import instance_key
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

    def hdpbf(self, instance_id: str) -> tuple[dict, int]:
        return self.reader.get_vnc_console(instance_id, CONSOLE_TYPE)

    def call(self, config: str, instance_id: str) -> tuple[dict, int]:
        return {"rpc": self.rpc, "redis": self.redis_aside, "hdpbf": self.hdpbf}[config](instance_id)

    def wait_committed(self, instance_ids: list[str], timeout: float = 15.0) -> float:
        """Wait until step 1 answers for every id (their records are in the ledger)."""
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
        if self.reader is not None:
            self.reader.close()
        if self.transport is not None:
            from .openstack.rpc import release_transport
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
        from .launcher import LocalMesh
        from .topology import DEFAULT_BROKER_URL, DEFAULT_RESULT_BACKEND
        broker = self.broker or DEFAULT_BROKER_URL
        from .openstack.rpc import transport_url_from_broker
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
        from .embedded import EmbeddedMesh
        from .topology import DEFAULT_RESULT_BACKEND
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
    from .openstack import ConsoleRecorder, Sealer
    from .topology import reader_keys
    return ConsoleRecorder(client, Sealer(reader_keys(cfg)))


def _compute_services(host: str, transport_url: str, recorder: Any, service_ms: float,
                      token_ttl: float) -> list:
    """``host`` records through consensus; ``host-plain`` is nova-compute as shipped."""
    from .openstack import ComputeService
    return [ComputeService(host, transport_url, recorder=recorder, service_ms=service_ms,
                           token_ttl=token_ttl),
            ComputeService(f"{host}-plain", transport_url, recorder=None, service_ms=service_ms,
                           token_ttl=token_ttl)]


# -- the run ------------------------------------------------------------------------------

def make_instance_ids(repeat: int) -> dict[tuple[str, int, int], str]:
    """Fresh ids per (configuration, repetition, instance number): each run starts cold."""
    return {(c, r, k): str(uuid.uuid4()) for c in CONFIGS for r in range(repeat)
            for k in range(1, INSTANCES + 1)}


def run(repeat: int = 3, service_ms: float = 0.0, nodes: int = 4, token_ttl: float = 600.0,
        embedded: bool = False, broker: str | None = None, backend: str | None = None,
        redis_url: str | None = None, rpc_timeout: float = 10.0, data_dir: str | None = None,
        console: Any = None, progress: bool = True) -> dict:
    say = console.print if console is not None else print
    _quiet_imports()
    seq = paper_sequence()
    ids = make_instance_ids(repeat)
    warm = {host: f"warmup-{host}-{uuid.uuid4().hex[:8]}" for host in HOSTS}
    hosts = {iid: host_of(k) for (c, r, k), iid in ids.items()}
    hosts.update({iid: host for host, iid in warm.items()})
    base = data_dir or tempfile.mkdtemp(prefix="hdpbf-paper-")
    common = dict(nodes=nodes, service_ms=service_ms, token_ttl=token_ttl, redis_url=redis_url,
                  rpc_timeout=rpc_timeout, instance_ids=hosts, say=say)
    rig: Rig = EmbeddedRig(base, **common) if embedded else BrokerRig(base, broker=broker,
                                                                     backend=backend, **common)
    records: list[CallRecord] = []
    try:
        rig.start()
        configs = [c for c in CONFIGS if c != "redis" or rig.redis is not None]
        if rig.redis is None:
            say(f"[yellow]redis configuration skipped: {rig.redis_skip}[/yellow]")
        for c in configs:                               # warm every path once
            for iid in warm.values():
                rig.call(c, iid)
        rig.wait_committed(list(warm.values()))
        schedule = [(r, c) for r in range(repeat)
                    for c in configs[r % len(configs):] + configs[:r % len(configs)]]
        bar = _progress(console, progress)
        with bar:
            task = bar.add_task("calls", total=len(schedule) * len(seq))
            for r, c in schedule:
                bar.update(task, description=f"{c:>5} repeat {r + 1}/{repeat}")
                for n, (_, k) in enumerate(seq, start=1):
                    iid = ids[(c, r, k)]
                    w0 = time.time()
                    t0 = time.perf_counter()
                    info, step = rig.call(c, iid)
                    dt = time.perf_counter() - t0
                    records.append(CallRecord(c, r + 1, n, k, dt * 1000, step, iid, w0,
                                              time.time(), info))
                    bar.advance(task)
                if c == "hdpbf":                       # start the next run on a quiet mesh
                    rig.wait_committed([ids[(c, r, k)] for k in range(1, INSTANCES + 1)])
        last_r = repeat - 1
        micro = rig.micro([ids[("hdpbf", last_r, k)] for k in range(1, INSTANCES + 1)])
        if isinstance(rig, BrokerRig):
            rig.close_api_side()
            rig.reader = rig.transport = rig.redis = None
            rig.stop_compute()
        served = rig.served()
    finally:
        rig.close()
        if data_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    result = summarize(records, served, configs, seq)
    result.update(micro)
    result.update(mode=rig.mode, label=rig.label, compute=rig.compute_mode, nodes=nodes,
                  repeat=repeat, service_ms=service_ms, token_ttl=token_ttl,
                  skipped={"redis": rig.redis_skip} if rig.redis is None and "redis" not in configs
                  else {})
    return result


def _progress(console: Any, enabled: bool) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=not enabled)


# -- analysis ------------------------------------------------------------------------------

def check_answers(records: list[CallRecord], served: list[dict]) -> dict[str, dict[str, int]]:
    """Per configuration: answers equal to no live token served before them (``stale``),
    and answers equal to a live token that was not the newest (``older_token``)."""
    by_instance: dict[str, list[dict]] = {}
    for s in served:
        by_instance.setdefault(s["instance"], []).append(s)
    for lst in by_instance.values():
        lst.sort(key=lambda s: s["time"])
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        counts = out.setdefault(rec.config, {"stale": 0, "older_token": 0})
        live = [s for s in by_instance.get(rec.instance_id, [])
                if s["time"] <= rec.t_end and s["expires_at"] > rec.t_end]
        if not any(s["connect_info"] == rec.answer for s in live):
            counts["stale"] += 1
        elif live[-1]["connect_info"] != rec.answer:
            counts["older_token"] += 1
    return out


def summarize(records: list[CallRecord], served: list[dict], configs: list[str],
              seq: list[tuple[int, int]]) -> dict:
    checks = check_answers(records, served)
    per: dict[str, dict] = {}
    for c in configs:
        recs = [r for r in records if r.config == c]
        ms = [r.ms for r in recs]
        repeats = sorted({r.repeat for r in recs})
        per[c] = {
            "mean_ms": round(sum(ms) / len(ms), 4),
            "p50_ms": round(percentile(ms, 50), 4),
            "p99_ms": round(percentile(ms, 99), 4),
            "total_s": round(sum(ms) / 1000 / len(repeats), 4),   # per 100-call run
            "step1": sum(r.step == 1 for r in recs),
            "step2": sum(r.step == 2 for r in recs),
            "calls": len(recs),
            "stale": checks.get(c, {}).get("stale", 0),
            "older_token": checks.get(c, {}).get("older_token", 0),
        }
    base = per["rpc"]["mean_ms"]
    for c in configs:
        per[c]["reduction_vs_rpc_pct"] = round((1 - per[c]["mean_ms"] / base) * 100, 2)
    firsts = set(first_calls(seq).values())
    # How long after an instance's first call step 1 first answered it: an upper bound
    # of the time until its record was committed on the API node (calls are discrete).
    lag: dict[tuple[int, int], list[float]] = {}
    for r in records:
        if r.config == "hdpbf":
            lag.setdefault((r.repeat, r.instance), [])
            slot = lag[(r.repeat, r.instance)]
            if not slot:
                slot.append(r.t_start)
            elif len(slot) == 1 and r.step == 1:
                slot.append(r.t_start)
    lags = sorted((v[1] - v[0]) * 1000 for v in lag.values() if len(v) == 2)
    return {
        "configs": per,
        "stale_answers": per.get("hdpbf", {}).get("stale", 0),
        "older_token_answers": per.get("hdpbf", {}).get("older_token", 0),
        "hdpbf_step2_at_first_calls": sum(1 for r in records if r.config == "hdpbf" and r.step == 2
                                          and r.call - 1 in firsts),
        "served": len(served),
        "hdpbf_first_step1_after_ms": {"p50": round(percentile(lags, 50), 2) if lags else None,
                                       "max": round(lags[-1], 2) if lags else None,
                                       "never": len(lag) - len(lags)},
        "calls": [r.public() for r in records],
    }


def median_series(calls: list[dict], config: str) -> list[float]:
    """Per call number 1..100, the median over repetitions of that call's time."""
    by_call: dict[int, list[float]] = {}
    for c in calls:
        if c["config"] == config:
            by_call.setdefault(c["call"], []).append(c["ms"])
    return [sorted(v)[len(v) // 2] if len(v) % 2 else
            (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2
            for _, v in sorted(by_call.items())]


# -- output ----------------------------------------------------------------------------------

def plot(result: dict, path: str) -> None:
    """Figs. 12-14 of the paper on one set of axes, plus the means as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(result["configs"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(3, 1))
    series = {c: median_series(result["calls"], c) for c in configs}
    lo = min(min(s) for s in series.values())
    hi = max(max(s) for s in series.values())
    for c in configs:
        s = series[c]
        ax.plot(range(1, len(s) + 1), s, marker="o", markersize=3, linewidth=1,
                color=COLORS.get(c), label=f"{c} (mean {result['configs'][c]['mean_ms']:.3f} ms)")
    if lo > 0 and hi / lo > 20:
        ax.set_yscale("log")
    pos = 0
    for phase, calls in enumerate((6, 10, 15, 20, 25, 24), start=1):
        if pos:
            ax.axvline(pos + 0.5, color="0.85", linewidth=0.8, zorder=0)
        ax.text(pos + calls / 2 + 0.5, 1.01, f"phase {phase}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="0.4")
        pos += calls
    for p in sorted(first_calls(paper_sequence()).values()):
        ax.axvline(p + 1, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
    how = "median over %d repeats" % result["repeat"] if result["repeat"] > 1 else "one run"
    ax.set_xlabel("call (dotted: an instance's first call)")
    ax.set_ylabel("response time, ms" + (" (log)" if ax.get_yscale() == "log" else ""))
    ax.set_xlim(0.5, 100.5)
    ax.set_title(f"get_vnc_console response time per call ({how})", pad=16)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(configs), fontsize=9,
              frameon=False)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    means = [result["configs"][c]["mean_ms"] for c in configs]
    bars = bx.bar(configs, means, color=[COLORS.get(c) for c in configs])
    for b, c in zip(bars, configs):
        red = result["configs"][c]["reduction_vs_rpc_pct"]
        txt = f"{b.get_height():.3g} ms" + (f"\n{red:.1f}% less" if c != "rpc" else "")
        bx.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    bx.set_ylabel("mean response time, ms")
    bx.set_title(f"mean of {result['repeat']} x 100 calls", pad=16)
    bx.set_ylim(0, max(means) * 1.25)
    mode = "EMBEDDED (no broker)" if result["mode"] == "embedded" else "real RabbitMQ"
    fig.suptitle(f"Paper experiment: 100 get_vnc_console calls, {mode}, "
                 f"service {result['service_ms']:g} ms", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> Any:
    from rich.table import Table
    mode = ("EMBEDDED (no broker)" if result["mode"] == "embedded" else "real RabbitMQ")
    t = Table(title=f"{mode}: paper experiment, {result['repeat']} x 100 get_vnc_console calls "
                    f"per configuration, service {result['service_ms']:g} ms",
              caption="total: per 100-call run; step 1: answered locally (ledger or cache), "
                      "step 2: RPC to compute; counts over all repeats")
    for col in ("config", "mean ms", "p50 ms", "p99 ms", "total s", "vs rpc", "step 1", "step 2"):
        t.add_column(col, justify="left" if col == "config" else "right", no_wrap=True)
    for c, r in result["configs"].items():
        t.add_row(c, f"{r['mean_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                  f"{r['total_s']:.3f}", "-" if c == "rpc" else f"{-r['reduction_vs_rpc_pct']:+.1f} %",
                  str(r["step1"]), str(r["step2"]))
    return t


def report(result: dict, console: Any) -> None:
    console.print(table(result))
    console.print(f"rig: {result['label']}; compute services as {result['compute']}")
    for name, why in result.get("skipped", {}).items():
        console.print(f"[yellow]{name} configuration skipped: {why}[/yellow]")
    s1, rg = result.get("step1_p50_us"), result.get("redis_get_p50_us")
    line = f"step-1 read alone (ConsoleReader.step1) p50 {s1} us"
    if rg is not None and s1:
        line += f"; Redis GET of the same value p50 {rg} us ({rg / s1:.1f}x the step-1 read)"
    console.print(line)
    colour = "green" if result["stale_answers"] == 0 else "red"
    console.print(f"[{colour}]stale_answers = {result['stale_answers']}[/{colour}] (hdpbf answers "
                  f"matching no live token compute served); older-but-live tokens: "
                  f"{result['older_token_answers']}; hdpbf step 2 at first calls: "
                  f"{result['hdpbf_step2_at_first_calls']} of {6 * result['repeat']}")
    lag = result.get("hdpbf_first_step1_after_ms") or {}
    if lag.get("p50") is not None:
        console.print(f"hdpbf: step 1 first answered an instance {lag['p50']} ms (p50; max "
                      f"{lag['max']} ms) after its first call; until then each call is a "
                      f"step-2 call (consensus still committing)")


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

    from .client import BrokerClientTransport, MeshClient
    from .topology import MeshConfig, client_keys, load_client_identity, node_keys
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


# -- the click command ---------------------------------------------------------------------

import click  # noqa: E402

# mesh.cli first: it imports mesh.commands and then the modules that build on it (this
# one, mesh.openstack.commands); importing mesh.commands first would leave it half
# initialised when those modules ask it for names.
from . import cli as _cli  # noqa: E402,F401
from .commands import bench  # noqa: E402


@bench.command("paper")
@click.option("--repeat", type=click.IntRange(1, 100), default=3, show_default=True,
              help="interleaved repetitions of the 100 calls per configuration")
@click.option("--service-ms", type=click.FloatRange(0, 10_000), default=0.0, show_default=True,
              help="compute sleeps this long per call (emulates the hypervisor)")
@click.option("--nodes", type=click.IntRange(4, 64), default=4, show_default=True)
@click.option("--token-ttl", type=click.FloatRange(1, 86_400), default=600.0, show_default=True,
              help="console token lifetime, s (nova's [consoleauth] token_ttl)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default="bench-paper.png",
              show_default=True)
@click.option("--embedded", is_flag=True, help="one process, no broker (in-memory mesh, fake: RPC)")
@click.option("--broker", default=None, metavar="URL", help="AMQP URL (default: mesh default)")
@click.option("--backend", default=None, metavar="URL", help="Celery result backend (Redis)")
@click.option("--redis-url", default=None, metavar="URL",
              help="Redis for the cache-aside configuration (default: the result backend)")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="keep the mesh here (default: a temporary directory, removed afterwards)")
def bench_paper(repeat: int, service_ms: float, nodes: int, token_ttl: float,
                json_path: str | None, png_path: str, embedded: bool, broker: str | None,
                backend: str | None, redis_url: str | None, data_dir: str | None) -> None:
    """The paper's 100 get_vnc_console calls: rpc vs redis cache vs hdpbf two-step."""
    from .cli import console
    out = console()
    result = run(repeat=repeat, service_ms=service_ms, nodes=nodes, token_ttl=token_ttl,
                 embedded=embedded, broker=broker, backend=backend, redis_url=redis_url,
                 data_dir=data_dir, console=out)
    plot(result, png_path)
    result["png"] = os.path.abspath(png_path)
    result["plot_series"] = ("median over repeats" if repeat > 1 else "the one run")
    report(result, out)
    out.print(f"plot: {png_path} (per-call series: {result['plot_series']})")
    if json_path:
        write_json(result, json_path)
        out.print(f"JSON: {json_path}")


__all__ = ["run", "summarize", "check_answers", "plot", "table", "report", "median_series",
           "paper_sequence", "CONFIGS", "HOSTS", "host_of"]
