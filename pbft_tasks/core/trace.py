"""The stimulus log: the recent stimuli a replica took and the actions each caused, so
one event can be followed from cause to effect, on one node and across nodes (dask's
``WorkerState.stimulus_log``; the ids are actions.py's ``Cause.id``).

Owns: ``StimulusLog`` (bounded: the newest ``size`` stimuli), the trace keys of a
stimulus and of its actions (``keys``), the plain form of an entry (``entry``), and
``follow``, which picks from the entries of every node those of one request or seq.

How a commit is traced across nodes.  Protocol messages are not changed: the id that
travels is the one the messages already carry.  A request is named ``client/timestamp``
on every node; the PRE-PREPARE that orders it carries it in its batch, and so names
both the request and its seq (``n<seq>``); every PREPARE, COMMIT and CERTIFICATE, the
Execute and the replies name that seq.  ``follow("c/3", entries)`` takes the entries
naming the request, then every entry naming a seq that carried it: on each node, the
request's arrival, the pre-prepare, the votes, the execution and the reply, each with
its stimulus id and the actions it caused.

Rules:
- Every step is recorded, one that caused nothing too (``step`` wraps
  ``Replica.handle``), except a tick that did nothing: the worker ticks every few
  milliseconds, and those would push everything else out.
- Recording keeps references (an append to a bounded deque); what an entry
  says is worked out only when someone asks (``entries``), so the log costs the step
  almost nothing.
- Pure: no clock.  The driver passes the time it wants shown, if any.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from .actions import Broadcast, Cause, Evidence, Execute, FetchState, Persist, Send, SendClient
from .messages import (Certificate, Checkpoint, Commit, NewView, PrePrepare, Prepare, Reply,
                       Request, ViewChange)
from .replica import describe
from .stimuli import Install, Tick

DEFAULT_SIZE = 512


def request_id(r: Request) -> str:
    return f"{r.client}/{r.timestamp}"


def keys(x: Any) -> list[str]:
    """The trace keys a stimulus or an action names: request ids (``client/ts``), seqs
    (``n<seq>``), checkpoints (``ckpt<seq>``) and views (``v<view>``)."""
    if isinstance(x, (Send, Broadcast)):
        return keys(x.msg)
    if isinstance(x, SendClient):
        return keys(x.msg)
    if isinstance(x, Request):
        return [request_id(x)]
    if isinstance(x, PrePrepare):
        return [f"n{x.seq}"] + [request_id(r) for r in x.batch]
    if isinstance(x, (Prepare, Commit, Certificate)):
        return [f"n{x.seq}"]
    if isinstance(x, Reply):
        return [f"n{x.seq}"] + [f"{x.client}/{r['timestamp']}" for r in x.results]
    if isinstance(x, Execute):
        return [f"n{x.seq}"] + [f"{r['client']}/{r['timestamp']}" for r in x.block.get("requests", ())
                                if isinstance(r, dict) and "client" in r]
    if isinstance(x, Checkpoint):
        return [f"ckpt{x.seq}"]
    if isinstance(x, ViewChange):
        return [f"v{x.new_view}"]
    if isinstance(x, NewView):
        return [f"v{x.view}"]
    if isinstance(x, Install):
        requests = x.block.get("requests")  # a peer's block, checked or not: never raise
        return [f"n{x.block.get('seq')}"] + [f"{r.get('client')}/{r.get('timestamp')}"
                                             for r in (requests if isinstance(requests, list) else ())
                                             if isinstance(r, dict)]
    return []


def summary(a: Any) -> str:
    """One line for an action."""
    if isinstance(a, Persist):
        return f"persist {', '.join(sorted(a.records))}"
    if isinstance(a, Execute):
        return f"execute n{a.seq} ({len(a.block.get('requests', ()))} requests)"
    if isinstance(a, Send):
        return f"send {_msg(a.msg)} to {a.to}"
    if isinstance(a, Broadcast):
        return f"broadcast {_msg(a.msg)}"
    if isinstance(a, SendClient):
        return f"reply {_msg(a.msg)} to {a.client}"
    if isinstance(a, FetchState):
        return f"fetch n{a.from_seq}..n{a.to_seq} from {list(a.peers)}"
    if isinstance(a, Evidence):
        return f"evidence {a.reason} against {a.sender}: {a.detail}"
    return type(a).__name__


def _msg(m: Any) -> str:
    kind = type(m).__name__
    if isinstance(m, Request):
        return f"Request {request_id(m)}"
    if hasattr(m, "seq") and hasattr(m, "view"):
        return f"{kind} v{m.view} n{m.seq}"
    return kind


class StimulusLog:
    """The newest ``size`` stimuli with the actions each caused."""

    __slots__ = ("_entries",)

    def __init__(self, size: int = DEFAULT_SIZE):
        self._entries: deque = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._entries)

    def step(self, replica: Any, stimulus: Any, stimulus_id: str | None = None,
             at: float | None = None) -> list:
        """``replica.handle(stimulus, stimulus_id)``, recorded (a step that caused nothing
        too); returns its actions."""
        actions = replica.handle(stimulus, stimulus_id)
        if not actions and type(stimulus) is Tick:
            return actions  # time passing, nothing done: not worth a line
        cause = actions[0].cause if actions else Cause(
            describe(stimulus, replica.now),
            stimulus_id if stimulus_id is not None else f"{replica.id}.{replica.stimuli}", stimulus)
        self._entries.append((cause, at, tuple(actions)))
        return actions

    def snapshot(self) -> list[tuple]:
        """The entries as recorded (cause, time, actions), oldest first: cheap, for a
        driver to take under its lock and format (``entries``) outside it."""
        return list(self._entries)

    def entries(self, recorded: list[tuple] | None = None) -> list[dict]:
        """The plain form of the entries (of ``recorded``, a ``snapshot``), oldest first."""
        return [entry(c, at, acts) for c, at, acts in
                (self.snapshot() if recorded is None else recorded)]


def entry(cause: Any, at: float | None, actions: Iterable[Any]) -> dict:
    actions = list(actions)
    names: list[str] = []
    carries: dict[str, list[str]] = {}  # seq -> the requests its pre-prepare or block holds
    for item in [getattr(cause, "stimulus", None), *actions]:
        found = keys(item)
        names += found
        if isinstance(getattr(item, "msg", item), (PrePrepare, Execute, Install)) and found:
            carries.setdefault(found[0], found[1:])
    out = {"id": getattr(cause, "id", ""), "stimulus": str(cause),
           "keys": sorted(set(names), key=names.index),
           "carries": carries, "actions": [summary(a) for a in actions]}
    if at is not None:
        out["at"] = at
    return out


def follow(key: str, by_node: dict[Any, list[dict]]) -> dict[Any, list[dict]]:
    """Per node, the entries about ``key``: a stimulus id (that step alone), a request
    id (``client/ts``: also every entry about a seq whose pre-prepare or execution
    carried it, on any node) or a seq (``n<seq>``)."""
    if any(e["id"] == key for entries in by_node.values() for e in entries):
        return {node: [e for e in entries if e["id"] == key] for node, entries in by_node.items()}
    wanted = {key}
    for entries in by_node.values():
        for e in entries:
            wanted.update(seq for seq, held in e["carries"].items() if key in held)
    return {node: [e for e in entries if wanted & set(e["keys"])]
            for node, entries in by_node.items()}
