"""Processes the tests start and must see gone: a logged subprocess in a session of its
own (Flower, Prometheus, a driver process), and the search for what a session, or one
``hdpbf up``, left running.

Processes are looked at through psutil (their environment, state and process group),
never by parsing /proc by hand: a zombie counts as gone, a process we may not read is
skipped.  Celery workers are recognised by their command line and claimed by the
``HDPBF_CONFIG`` (or ``HDPBF_RUN_ID``) in their environment.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import psutil
import pytest

WORKER_PATTERN = "celery -A pbft_tasks"


class Process:
    """A subprocess in its own session, logged to a file, stopped with its group."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None):
        self.name, self.log = name, log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)

    def check(self) -> None:
        """Fail the test, with the end of its log, if the process has exited."""
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        from mesh.ops.launcher import stop_groups
        stop_groups([self.proc], timeout)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _live(match: Callable[[psutil.Process], bool]) -> list[int]:
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != me and proc.status() != psutil.STATUS_ZOMBIE and match(proc):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(found)


def worker_pids() -> set[int]:
    """Every live Celery worker of this project on the machine (anyone's)."""
    return set(_live(lambda p: WORKER_PATTERN in " ".join(p.cmdline())))


def workers_under(base: str, among: set[int]) -> dict[int, str]:
    """Those of ``among`` whose HDPBF_CONFIG lies under ``base``: pid -> config."""
    out = {}
    for pid in among:
        try:
            config = psutil.Process(pid).environ().get("HDPBF_CONFIG")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if config is not None and config.startswith(base) and alive(pid):
            out[pid] = config
    return out


def processes_of(run_id: str, data_dir: str) -> list[int]:
    """Live pids whose environment says they belong to one ``hdpbf up``."""
    def ours(proc: psutil.Process) -> bool:
        env = proc.environ()
        return (env.get("HDPBF_RUN_ID") == run_id
                or env.get("HDPBF_CONFIG", "").startswith(data_dir + os.sep))
    return _live(ours)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) pids of the process group ``pgid``."""
    def member(proc: psutil.Process) -> bool:
        try:
            return os.getpgid(proc.pid) == pgid
        except ProcessLookupError:
            return False
    return _live(member)


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
