"""Run a mesh as real local processes: one ``celery worker`` per node.

Owns: the exact worker command line (the one docs/operations/running-a-mesh.md and the compose file give), starting
workers with their node identity in the environment, waiting until every node answers,
killing and restarting one (for crash tests), and stopping exactly what was started.
Logs go to ``<data_dir>/logs/node<id>.log`` (or ``log_dir``).

Also owns detached processes (``hdpbf up``/``down``, mesh/ops/stack.py): ``spawn_detached``
starts a process in a session of its own that outlives its starter, and returns a
``ProcessRecord`` (pid, the kernel's start time of that pid, the exact argv) that can be
written to a file.  ``stop_recorded`` later stops exactly those: a pid is signalled only
while its command line is still the recorded argv and its start time the recorded one,
so a pid reused by an unrelated process is left alone.  Processes are read through
psutil, not by parsing /proc here: it knows a zombie from a live process and a process
gone between two looks from one we may not read.

Worker settings: ``-P solo`` (one replica is one state machine; prefork children would
split it), ``--prefetch-multiplier 64`` (a solo worker with a small prefetch stalls
under backlog: plain Celery at prefetch 1 drains 5-10 tasks/s, see
docs/benchmarks/broker-cluster.md), ``-E`` (task events for Flower), no mingle/gossip
(they only slow start-up; nodes talk through their own queues).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import psutil

from pbft_tasks.brokers import PREFETCH
from pbft_tasks.topology import MeshConfig


def worker_command(node_id: int, loglevel: str = "INFO", prefetch: int = PREFETCH) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "pbft_tasks", "worker",
            "-Q", f"node.{node_id}", "-n", f"node{node_id}@%h",
            "-P", "solo", "--prefetch-multiplier", str(prefetch),
            "--without-gossip", "--without-mingle", "-l", loglevel]


def node_env(config_path: str, node_id: int) -> dict:
    env = dict(os.environ)
    env["HDPBF_CONFIG"] = os.path.abspath(config_path)
    env["HDPBF_NODE_ID"] = str(node_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env



def stop_groups(procs: Iterable[subprocess.Popen], timeout: float, wake: bool = False) -> None:
    """SIGTERM each process group still running (SIGCONT first with ``wake``: a paused
    process must run to handle it), wait up to ``timeout`` for all, SIGKILL the rest."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            try:
                if wake:
                    os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def mesh_app(cfg: MeshConfig) -> Any:
    """A Celery app of its own for mesh ``cfg``'s broker and backend: Celery caches
    connection pools per app, so reusing the global one after changing its broker_url
    would keep using the old broker."""
    from celery import Celery

    from pbft_tasks.brokers import celery_settings
    app = Celery(f"hdpbf-mesh-{id(cfg)}", set_as_current=False)
    app.conf.update(celery_settings(cfg.broker_url, cfg.result_backend, cfg.queue_type))
    return app


def poll_statuses(app: Any, cfg: MeshConfig, timeout: float = 2.0,
                  task: str = "pbft.status") -> dict[int, dict | None]:
    """Every node's ``pbft.status`` (or ``task``, another monitoring task: ``pbft.trace``)
    within one shared ``timeout``; None for a node that did not answer in time.  The
    requests expire, so a node that comes back later does not work through a pile of
    stale status calls."""
    pending = {n.id: app.send_task(task, queue=n.queue, expires=timeout + 1.0)
               for n in cfg.nodes}
    deadline = time.monotonic() + timeout
    out: dict[int, dict | None] = {}
    for i, r in pending.items():
        try:
            out[i] = r.get(timeout=max(0.05, deadline - time.monotonic()))
        except Exception:
            out[i] = None
        finally:
            r.forget()
    return out


class LocalMesh:
    def __init__(self, config_path: str, app: Any = None, log_dir: str | None = None):
        self.config_path = os.path.abspath(config_path)
        self.cfg = MeshConfig.load(self.config_path)
        self.app = app if app is not None else mesh_app(self.cfg)
        self.log_dir = log_dir or os.path.join(self.cfg.data_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.procs: dict[int, subprocess.Popen] = {}
        # Extra environment per node (e.g. HDPBF_BYZANTINE for fault tests), kept for
        # restarts: a restarted worker is the same node with the same settings.
        self.extra_env: dict[int, dict[str, str]] = {}
        # Only ``hdpbf bench backlog`` changes it, to show what a small one does.
        self.prefetch = PREFETCH

    def purge(self) -> None:
        """Empty the node queues: a new mesh must not inherit an old mesh's messages."""
        from pbft_tasks.transport import declare_mesh
        with self.app.connection_for_write() as conn:
            ch = conn.default_channel
            declare_mesh(ch, [n.id for n in self.cfg.nodes], self.cfg.queue_type)
            for info in self.cfg.nodes:
                ch.queue_purge(info.queue)

    def start(self, nodes: list[int] | None = None) -> None:
        for i in nodes if nodes is not None else [n.id for n in self.cfg.nodes]:
            logf = open(os.path.join(self.log_dir, f"node{i}.log"), "ab")
            env = {**node_env(self.config_path, i), **self.extra_env.get(i, {})}
            self.procs[i] = subprocess.Popen(worker_command(i, prefetch=self.prefetch), env=env,
                                             stdout=logf, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            logf.close()

    def status(self, node_id: int, timeout: float = 5.0) -> dict:
        return self.app.send_task("pbft.status", queue=f"node.{node_id}").get(timeout=timeout)

    def statuses(self, timeout: float = 5.0) -> dict[int, dict]:
        pending = {n.id: self.app.send_task("pbft.status", queue=n.queue) for n in self.cfg.nodes}
        return {i: r.get(timeout=timeout) for i, r in pending.items()}

    def poll_statuses(self, timeout: float = 2.0) -> dict[int, dict | None]:
        """Every node's ``pbft.status`` within one shared ``timeout``; None for a node that
        did not answer in time.  The requests expire, so a node that comes back later does
        not work through a pile of stale status calls."""
        return poll_statuses(self.app, self.cfg, timeout)

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
        stop_groups(self.procs.values(), timeout)
        self.procs.clear()

    def __enter__(self) -> "LocalMesh":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- detached processes (hdpbf up / status / down) --------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")

# Processes this process started with spawn_detached, so that one that dies while we
# still run is reaped (polled) instead of lingering as a zombie.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _proc_start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (the kernel's own start
    time, as /proc/<pid>/stat gives it and as run/processes.json has always recorded
    it).  With the pid it names one process for ever; None if there is no such
    process or it is a zombie (dead, only waiting to be reaped)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        since_boot = proc.create_time() - psutil.boot_time()
    except psutil.Error:
        return None
    # psutil gives boot time + ticks / CLK_TCK: the ticks come back exactly
    return round(since_boot * _CLK_TCK)


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.ZombieProcess:
        return []
    except psutil.Error:
        return None


@dataclass
class ProcessRecord:
    """One process started by ``hdpbf up``, as written to ``run/processes.json``."""
    name: str
    pid: int
    command: list[str]
    start_ticks: int | None          # the kernel's start time (ticks since boot)
    started_at: float                # wall clock, for people
    log: str = ""
    kind: str = ""                   # worker / compute / api / flower
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "ProcessRecord":
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        return cls(**known)

    def state(self) -> str:
        """``running``: this pid is still the process we started; ``gone``: no process
        with this pid (or a zombie); ``reused``: the pid now runs something else."""
        child = _CHILDREN.get(self.pid)
        if child is not None and child.poll() is not None:  # our own child: reap it
            _CHILDREN.pop(self.pid, None)
        ticks = _proc_start_ticks(self.pid)
        if ticks is None:
            return "gone"
        if self.start_ticks is not None and ticks != self.start_ticks:
            return "reused"
        cmdline = _proc_cmdline(self.pid)
        if cmdline == [] and self.start_ticks is not None:
            # Our process in the middle of exiting: the kernel has dropped its memory (and
            # so its argv) but not yet made it a zombie.  Still ours, nearly gone.
            return "running"
        if cmdline != self.command:
            return "reused"
        return "running"

    def alive(self) -> bool:
        return self.state() == "running"


def spawn_detached(name: str, command: list[str], env: dict, log_path: str,
                   kind: str = "", cwd: str | None = None, **extra: Any) -> ProcessRecord:
    """Start ``command`` in a new session (it survives its starter and its starter's
    terminal), output appended to ``log_path``; return its record."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as logf:
        logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: "
                   f"{' '.join(command)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(command, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
    # Popen returns after exec, so the process table already shows the new command line.
    _CHILDREN[proc.pid] = proc
    rec = ProcessRecord(name=name, pid=proc.pid, command=list(command),
                        start_ticks=_proc_start_ticks(proc.pid), started_at=time.time(),
                        log=log_path, kind=kind, extra=dict(extra))
    return rec


def stop_recorded(records: Iterable[ProcessRecord], timeout: float = 15.0,
                  poll: float = 0.05) -> dict[str, str]:
    """SIGTERM the process group of every record that is still its own process, wait up
    to ``timeout``, SIGKILL what is left, wait for it to go.  Returns name -> outcome:
    ``stopped``, ``killed`` (needed SIGKILL), ``not running``, ``pid reused (left alone)``
    or ``still running`` (could not be stopped)."""
    records = list(records)
    outcome: dict[str, str] = {}
    live: list[ProcessRecord] = []
    for rec in records:
        state = rec.state()
        if state == "gone":
            outcome[rec.name] = "not running"
        elif state == "reused":
            outcome[rec.name] = "pid reused (left alone)"
        else:
            live.append(rec)

    def signal_all(recs: list[ProcessRecord], sig: int) -> None:
        for rec in recs:
            if rec.state() != "running":  # checked again just before each signal
                continue
            try:
                # Each was started as the leader of its own session and group; the group
                # takes any child it made with it.
                os.killpg(rec.pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                os.kill(rec.pid, sig)

    def wait_gone(recs: list[ProcessRecord], limit: float) -> list[ProcessRecord]:
        deadline = time.monotonic() + limit
        left = recs
        while left:
            left = [r for r in left if r.state() == "running"]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(poll)
        return left

    signal_all(live, signal.SIGTERM)
    stragglers = wait_gone(live, timeout)
    for rec in live:
        if rec not in stragglers:
            outcome[rec.name] = "stopped"
    if stragglers:
        signal_all(stragglers, signal.SIGKILL)
        still = wait_gone(stragglers, 10.0)
        for rec in stragglers:
            outcome[rec.name] = "still running" if rec in still else "killed"
    return outcome
