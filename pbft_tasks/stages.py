"""Where a node's worker spends its CPU, stage by stage: cheap in-process accounting.

Owns: ``StageClock``, the per-node accumulator of CPU time by stage of a protocol task
run.  The stages, in the order a task run goes through them:

  decode   Celery/kombu turn the AMQP body into (args, kwargs)   pbft_tasks/strategy.py
  parse    from_wire and the size check                          node.py ``handle``
  verify   Ed25519 checks (Verifier.check)                       node.py
  step     the pure core (Replica.handle)                        node.py
  ledger   the SQLite transaction (LedgerStore.apply)            node.py ``_carry_out``
  sign     signing and wire encoding of outgoing messages        node.py
  publish  handing them to the transport (kombu publish)         node.py
  observe  metrics hooks, evidence logging, read answers         node.py
  task     the task function's own overhead                      strategy.py
  event    the monitoring event (task-succeeded, with -E)        strategy.py
  ack      acknowledging the message to RabbitMQ                 strategy.py

What is not here is still CPU of the process: receiving from the socket and framing
(py-amqp), Celery's consumer loop, the tick thread, sqlitedict's writer thread,
garbage collection.  The bench reports it as the rest of the process's CPU.

Rules:
- CPU time of the consumer thread only (``time.thread_time_ns``, CLOCK_THREAD_CPUTIME_ID,
  ~0.3 us a reading here): waiting for the other core or for the broker is not CPU.
- Lap timing: each ``lap(stage)`` charges the time since the previous reading to
  ``stage``, so the stages of a run add up to the run.  Only between ``begin`` and
  ``end`` and only on the thread that called ``begin``; laps from any other thread
  (the tick thread carrying out a tick's actions) or outside a run are ignored, so a
  node driven without the strategy (embedded mode, tests) simply records nothing.
- Counters only grow; ``snapshot`` is a plain dict for ``pbft.status``.
"""
from __future__ import annotations

import threading
from time import thread_time_ns

STAGES = ("decode", "parse", "verify", "step", "ledger", "sign", "publish", "observe",
          "task", "event", "ack")


class StageClock:
    __slots__ = ("ns", "runs", "_t", "_owner")

    def __init__(self) -> None:
        self.ns = dict.fromkeys(STAGES, 0)
        self.runs = 0
        self._t = 0
        self._owner: int | None = None

    def begin(self) -> None:
        self._owner = threading.get_ident()
        self._t = thread_time_ns()

    def lap(self, stage: str) -> None:
        if self._owner is not None and self._owner == threading.get_ident():
            t = thread_time_ns()
            self.ns[stage] += t - self._t
            self._t = t

    def end(self, stage: str) -> None:
        self.lap(stage)
        if self._owner == threading.get_ident():
            self.runs += 1
            self._owner = None

    def snapshot(self) -> dict:
        return {"runs": self.runs, "ns": dict(self.ns)}
