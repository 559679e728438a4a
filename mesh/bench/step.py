"""``hdpbf bench step``: the CPU a replica spends per request in the core step and in
writing what the step persists, in one process, with no broker, no signatures and no
clock: a deterministic figure for comparing two trees on a noisy machine.

Four pure replicas (pbft_tasks/core) exchange their messages FIFO; ``clients`` clients
keep ``window`` requests each in flight; every node writes its ``Persist`` records and
executed blocks through its own ``LedgerStore`` (ledger/store.py), as the worker's
``NodeRuntime._carry_out`` does (one ``apply`` per step).  Two figures per request, the
CPU of this thread (``time.thread_time_ns``), summed over the four nodes:
- ``step``: ``replica.handle`` (through the stimulus log, trace.py, as the worker does,
  when the tree has one);
- ``ledger``: gathering the records and ``LedgerStore.apply`` (sqlitedict's own thread,
  which writes the rows, is not counted, as in the worker's ``ledger`` stage).
- ``gc``: the part of those two spent in Python's cyclic garbage collector (what the
  process keeps alive makes every full collection longer).
Each run is repeated ``rounds`` times and the best is kept (the least disturbed).  The
script imports only what old trees have too, so the same file runs against
``git archive <commit>`` (``--baseline``: that tree first on PYTHONPATH, in a
subprocess).  Run: ``hdpbf bench step [--baseline COMMIT] [--json out.json]``.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from ledger.store import LedgerStore
from pbft_tasks.core.actions import Broadcast, Execute, Persist, Send, SendClient
from pbft_tasks.core.messages import Request, to_wire
from pbft_tasks.core.replica import Replica, ReplicaConfig
from pbft_tasks.core.stimuli import Tick

try:
    from pbft_tasks.core.trace import StimulusLog
except ImportError:  # a tree from before the stimulus log
    StimulusLog = None  # type: ignore[assignment,misc]


def _run(requests: int, clients: int, window: int, n: int, directory: str,
         durability: str) -> dict[str, Any]:
    cfg = ReplicaConfig(n=n)
    replicas = [Replica(i, cfg) for i in range(n)]
    logs = [StimulusLog() if StimulusLog else None for _ in range(n)]
    ledgers = [LedgerStore(os.path.join(directory, f"node{i}.sqlite"), durability=durability)
               for i in range(n)]
    step_ns = ledger_ns = steps = persists = rows = 0
    queue: list[tuple[int, Any]] = []
    next_ts = dict.fromkeys((f"c{c}" for c in range(clients)), 0)
    replied: dict[tuple[str, int], int] = {}
    done = issued = 0
    clock = time.thread_time_ns
    gc_ns = [0, 0]  # total, start of the collection under way

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_ns[1] = clock()
        else:
            gc_ns[0] += clock() - gc_ns[1]

    gc.collect()
    gc.callbacks.append(on_gc)

    def issue(client: str) -> None:
        nonlocal issued
        next_ts[client] += 1
        issued += 1
        req = Request(client, next_ts[client], {"op": "put", "key": f"{client}-{next_ts[client] % 97}",
                                                "value": issued, "expires_at": None})
        queue.append((replicas[0].primary, req))

    for c in next_ts:
        for _ in range(min(window, requests // clients)):
            issue(c)
    idle = 0
    while done < requests:
        if not queue:
            idle += 1
            if idle > 10_000:
                raise RuntimeError(f"stalled at {done}/{requests}")
            batch = [(i, Tick()) for i in range(n)]
        else:
            batch, queue[:] = queue[:], []
        for to, msg in batch:
            r = replicas[to]
            t0 = clock()
            actions = logs[to].step(r, msg) if logs[to] is not None else r.handle(msg)
            t1 = clock()
            steps += 1
            records: dict[str, Any] = {}
            blocks: list[dict] = []
            sends = False
            for a in actions:
                if isinstance(a, Persist):
                    records.update(a.records)
                    persists += 1
                elif isinstance(a, Execute):
                    blocks.append(dict(a.block, certificate=[to_wire(c) for c in a.certificate]))
                elif isinstance(a, (Send, Broadcast, SendClient)):
                    sends = True
            if records or blocks:
                rows += len(records)
                ledgers[to].apply(records, blocks, sync=bool(blocks) or sends)
            t2 = clock()
            step_ns += t1 - t0
            ledger_ns += t2 - t1
            for a in actions:
                if isinstance(a, Send):
                    queue.append((a.to, a.msg))
                elif isinstance(a, Broadcast):
                    queue.extend((j, a.msg) for j in range(n) if j != to)
                elif isinstance(a, SendClient):
                    for res in a.msg.results:
                        key = (a.client, res["timestamp"])
                        replied[key] = replied.get(key, 0) + 1
                        if replied[key] == 1:
                            done += 1
                            if issued < requests:
                                issue(a.client)
    gc.callbacks.remove(on_gc)
    for led in ledgers:
        led.close()
    return {"gc_ns": gc_ns[0], "step_ns": step_ns, "ledger_ns": ledger_ns, "steps": steps, "persists": persists,
            "rows": rows, "height": replicas[0].last_exec}


def bench_step(requests: int = 2000, clients: int = 4, window: int = 64, rounds: int = 5,
               n: int = 4, durability: str = "normal") -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
            r = _run(requests, clients, window, n, d, durability)
        if best is None or r["step_ns"] + r["ledger_ns"] < best["step_ns"] + best["ledger_ns"]:
            best = r
    assert best is not None
    return {"requests": requests, "clients": clients, "window": window, "n": n,
            "rounds": rounds, "durability": durability, "stimulus_log": StimulusLog is not None,
            "step_us_per_request": best["step_ns"] / requests / 1e3,
            "ledger_us_per_request": best["ledger_ns"] / requests / 1e3,
            "gc_us_per_request": best["gc_ns"] / requests / 1e3,
            "steps": best["steps"], "persists": best["persists"], "rows": best["rows"],
            "blocks": best["height"]}


def run_tree(tree: str, requests: int, clients: int, window: int, rounds: int) -> dict[str, Any]:
    """This bench against the code in ``tree`` (a ``git archive`` of another commit), in a
    process of its own with that tree first on the path."""
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), str(requests), str(clients),
                          str(window), str(rounds)], env=env, cwd=tree, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def baseline_tree(commit: str, into: str) -> str:
    """``git archive commit`` of the repository this file is in, unpacked under ``into``."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tar = subprocess.run(["git", "-C", repo, "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=tar, check=True)
    return into


if __name__ == "__main__":
    print(json.dumps(bench_step(*(int(a) for a in sys.argv[1:5]))))
