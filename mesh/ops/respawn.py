"""``python -m mesh.ops.respawn -- COMMAND...``: run a worker, and start it again when
it fails hard.

Owns: the restart policy of ``hdpbf up``'s workers (compose's is its ``restart:``
setting).  A worker whose node runtime hits our own bug exits with ``EX_SOFTWARE`` (70,
pbft_tasks/failhard.py) without acknowledging its message; started again, it rebuilds
its replica from its ledger and RabbitMQ redelivers what it had not acknowledged.

Rules:
- Only exit code 70 restarts.  Any other exit (0 after ``hdpbf down``, 78 for a
  configuration it refuses, a signal) ends this process with the same code, so
  ``hdpbf up`` still sees a worker that refuses to start, and ``down`` stops it.
- Back-off between restarts: 1 s, doubling up to 30 s; back to 1 s once a run lasted a
  minute.  A bug that recurs on every redelivery restarts slowly and loudly, each time
  in the log.
- SIGTERM/SIGINT are passed to the worker and end the loop (``hdpbf down`` signals the
  whole process group; the worker shuts down as Celery does on SIGTERM).
- The worker dies with this process: it gets SIGKILL when its parent dies (Linux's
  PR_SET_PDEATHSIG), so a ``kill -9`` of the recorded pid leaves no worker behind.
- The command line is the worker's own after ``--``: no secret on it (the environment
  carries the configuration), and ``hdpbf status``/``down`` see it in the process table.

Why not a process supervisor library: supervisord and circus are daemons of their own
that own every process they run, with their own configuration and control socket;
``hdpbf up`` would then start, watch and stop that daemon instead of its processes, and
``status``/``down`` would ask it rather than the process table.  Neither has this
policy either: supervisord restarts on unexpected exit codes, but its back-off (one
more second per try, FATAL after ``startretries``) only covers a process that dies
while starting; one that fails hard after it started is restarted at once, every time.
systemd (``Restart=on-failure``, ``RestartForceExitStatus=70``) would fit, but ``up``
runs where there is no systemd to ask (containers, CI, a laptop), and compose has its
own ``restart:``.  What is left is this loop: one exit code, a doubling back-off, the
signal passed on, and the child tied to its parent.
"""
from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
import time

EX_SOFTWARE = 70
FIRST_DELAY, MAX_DELAY, STEADY_S = 1.0, 30.0, 60.0


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when this (the parent) process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run(command: list[str]) -> int:
    stop = threading.Event()
    child: subprocess.Popen | None = None

    def on_signal(sig, _frame) -> None:
        stop.set()
        if child is not None and child.poll() is None:
            child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    delay = FIRST_DELAY
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command, preexec_fn=_die_with_parent)
        rc = child.wait()
        if stop.is_set() or rc != EX_SOFTWARE:
            return rc if rc >= 0 else 128 - rc
        if time.monotonic() - started >= STEADY_S:
            delay = FIRST_DELAY
        print(f"respawn: {command[0]} exited {rc} (our own bug, failed hard); starting it "
              f"again in {delay:.0f} s", file=sys.stderr, flush=True)
        if stop.wait(delay):
            return rc
        delay = min(delay * 2, MAX_DELAY)


def respawn_command(command: list[str]) -> list[str]:
    return [sys.executable, "-m", "mesh.ops.respawn", "--", *command]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "--" or len(args) < 2:
        print("usage: python -m mesh.ops.respawn -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return run(args[1:])


if __name__ == "__main__":
    sys.exit(main())
