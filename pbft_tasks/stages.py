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

Hops: the same runs also leave a short record of *when* (wall clock, ``time.time``, so
records of processes on one host compare): the run's start, the message it handled
(``hop_key``), and for every message it sent, when it was handed to the publish (the
moment it left), the run's CPU so far and its wait on the ledger so far (the ledger transaction's wall time minus its
CPU: the fsync).  The last ``HOPS_KEPT`` runs are kept; the ``pbft.hops`` task returns
them and the consensus bench follows one commit's messages through them, hop by hop
(mesh/bench/critical_path.py).  A record costs a few clock readings a run.
"""
from __future__ import annotations

import threading
from collections import deque
from time import thread_time_ns, time

STAGES = ("decode", "parse", "verify", "step", "ledger", "sign", "publish", "observe",
          "task", "event", "ack")


HOPS_KEPT = 4096  # runs; a low-load bench of 200 requests makes ~8 a node a request


def hop_key(wire: dict) -> str:
    """A message's name across processes: what the sender published and the receiver
    handled.  A reply is named by its first request (one a block at low load)."""
    kind = wire.get("type")
    if kind == "Request":
        return f"Request {wire.get('client')} {wire.get('timestamp')}"
    if kind == "Reply":
        results = wire.get("results") or [{}]
        first = results[0] if isinstance(results[0], dict) else {}
        return f"Reply {wire.get('sender')} {wire.get('client')} {first.get('timestamp')}"
    return f"{kind} v{wire.get('view')} n{wire.get('seq')} from {wire.get('sender')}"


class StageClock:
    __slots__ = ("ns", "runs", "hops", "_t", "_t0", "_owner", "_wall0", "_in", "_io", "_outs")

    def __init__(self) -> None:
        self.ns = dict.fromkeys(STAGES, 0)
        self.runs = 0
        # (start, handled, [(sent, published at, cpu ns, ledger wait ns)...], end) per run
        self.hops: deque = deque(maxlen=HOPS_KEPT)
        self._t = self._t0 = 0
        self._owner: int | None = None
        self._wall0 = 0.0
        self._in: str | None = None
        self._io = 0
        self._outs: list | None = None

    def begin(self) -> None:
        self._owner = threading.get_ident()
        self._wall0 = time()
        self._t = self._t0 = thread_time_ns()
        self._in, self._io, self._outs = None, 0, None

    def lap(self, stage: str) -> None:
        if self._owner is not None and self._owner == threading.get_ident():
            t = thread_time_ns()
            self.ns[stage] += t - self._t
            self._t = t

    def lap_wait(self, stage: str, wall_ns: int) -> None:
        """``lap``, for a stage that took ``wall_ns`` of wall time: what was not CPU
        was a wait (the ledger's fsync), counted for the hops."""
        if self._owner is not None and self._owner == threading.get_ident():
            t = thread_time_ns()
            self.ns[stage] += t - self._t
            self._io += max(0, wall_ns - (t - self._t))
            self._t = t

    def handled(self, wire: dict) -> None:
        """The run handles ``wire`` (the first one, for a bundle of requests)."""
        if self._in is None and self._owner is not None and self._owner == threading.get_ident():
            self._in = hop_key(wire)

    def sending(self, wire: dict) -> None:
        """``wire`` is about to be published (call right after the ``sign`` lap): the
        moment it leaves, not when the publish returns -- with publisher confirms that
        is after the broker's answer, by when the receiver may be at work on it."""
        if self._owner is not None and self._owner == threading.get_ident():
            if self._outs is None:
                self._outs = []
            self._outs.append((hop_key(wire), time(), self._t - self._t0, self._io))

    def end(self, stage: str) -> None:
        self.lap(stage)
        if self._owner == threading.get_ident():
            self.runs += 1
            self._owner = None
            if self._in is not None:
                self.hops.append((self._wall0, self._in, self._outs or [], time()))

    def snapshot(self) -> dict:
        return {"runs": self.runs, "ns": dict(self.ns)}
