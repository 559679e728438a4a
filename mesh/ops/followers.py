"""Follower processes on this machine: start, kill, restart, pause, read their status.

Owns: the exact ``hdpbf follow`` command line for a follower and a small process set
used by ``hdpbf up --followers K``, the benchmark and the tests (the validators' own
launcher is mesh/ops/launcher.py).  A follower's log is ``<log_dir>/follower-<name>.log``.
``wrap`` prefixes the command (``ip netns exec <ns>`` for the namespace topology).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from pbft_tasks.topology import MeshConfig

from .launcher import stop_groups


def follower_command(config_path: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from mesh.cli import main; sys.exit(main())",
            "follow", "--config", os.path.abspath(config_path), "--name", name, *extra]


class Followers:
    """The follower processes of one mesh started from here."""

    def __init__(self, config_path: str, log_dir: Optional[str] = None) -> None:
        self.config_path = os.path.abspath(config_path)
        self.cfg = MeshConfig.load(self.config_path)
        self.log_dir = log_dir or os.path.join(self.cfg.data_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.wrap: dict[str, Sequence[str]] = {}     # name -> command prefix
        self.env: dict[str, dict[str, str]] = {}     # name -> extra environment
        self.extra: dict[str, Sequence[str]] = {}    # name -> extra follow options

    def purge(self, app: Any) -> None:
        """Empty the follower queues of this mesh (declared as their followers declare
        them): a new mesh must not inherit pushes of an old one that used the same names
        on the same vhost (they would be refused, as signed by other keys)."""
        from pbft_tasks.transport import BLOCKS_EXCHANGE
        with app.connection_for_write() as conn:
            ch = conn.default_channel
            ch.exchange_declare(BLOCKS_EXCHANGE, "direct", durable=True, auto_delete=False)
            for info in self.cfg.followers:
                ch.queue_declare(info.queue, durable=True, auto_delete=False)
                ch.queue_purge(info.queue)

    def data_dir(self, name: str) -> Path:
        return self.cfg.follower_data_dir(name)

    def log_path(self, name: str) -> Path:
        return Path(self.log_dir) / f"follower-{name}.log"

    def start(self, names: Optional[Sequence[str]] = None) -> None:
        for name in names if names is not None else [f.name for f in self.cfg.followers]:
            cmd = [*self.wrap.get(name, ()),
                   *follower_command(self.config_path, name, *self.extra.get(name, ()))]
            env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env.get(name, {}))
            env.pop("HDPBF_NODE_ID", None)
            with open(self.log_path(name), "ab") as logf:
                self.procs[name] = subprocess.Popen(cmd, env=env, stdout=logf,
                                                    stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL,
                                                    start_new_session=True)

    def status(self, name: str) -> Optional[dict]:
        from pbft_tasks.follower_node import read_status
        return read_status(self.data_dir(name))

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until every started follower has written a status with a live connection."""
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"follower {name} exited with {proc.returncode}; "
                                       f"see {self.log_path(name)}")
                st = self.status(name)
                if st is not None and st.get("pid") == self._pid_of(proc) and st.get("connected"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"follower {name} did not connect within {timeout}s; "
                                       f"see {self.log_path(name)}")
                time.sleep(0.1)

    @staticmethod
    def _pid_of(proc: subprocess.Popen) -> int:
        """The follower's own pid: the Popen pid, or its child under ``ip netns exec``
        (which execs, so the pid is the same)."""
        return proc.pid

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        if sig in (signal.SIGKILL,):
            proc.wait(timeout=30)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)

    def restart(self, name: str) -> None:
        self.start([name])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (each writes its lag samples and closes its ledger), then SIGKILL."""
        stop_groups(self.procs.values(), timeout, wake=True)

    def __enter__(self) -> "Followers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Followers", "follower_command"]
