"""The PBFT replica as a pure state machine: its one entry point, its state, and its
output (Castro and Liskov, "Practical Byzantine Fault Tolerance", OSDI 1999, sec. 4).

Theory of operation.  A ``Replica`` has one entry point, ``handle(stimulus)`` (dask's
``handle_stimulus``, etcd raft's ``Step``).  A stimulus is a protocol message whose
signature the driver has already checked, or one of stimuli.py: ``Tick()`` for the
passage of time (one tick is whatever the driver says; the worker uses a few
milliseconds), ``Install(block)`` for one block fetched by state transfer,
``FetchDone()`` after a batch of fetched blocks, ``Resume()`` after a restart.  One
dispatch table (``_handlers``) maps each type to its handler.  Each call returns a list
of actions (see actions.py): persist these records, execute these blocks, send these
messages, note this evidence; every action carries its cause, ``describe(stimulus)``.
The replica never touches a socket, a file, a clock, a random number or a key; it only
hashes.  Given the same stimuli it produces the same actions, which is what the
scenario scripts and the hypothesis tests rely on.

Owns: ``ReplicaConfig``, the ``Replica`` class (its own fields, created in ``__init__``:
who it is, its view, what it executed, its clients and clock, the owners, and the output
of the call in progress; the entry points; the dispatch table; persistence: the records
of a call, ``meta_record`` and ``_restore``; the handlers of ``Tick`` and ``Resume``)
and ``describe``.  The rest of its state
has owners, as etcd's raft keeps the log in ``raftLog`` and progress in ``tracker``:
each is a small class changed only through its own methods (tests/core/test_owners.py
checks that no module writes another's fields).  The sub-protocols are mixins of step
functions, each in its own module with its owner and its rules:
- normalcase.py  ``Batcher`` (``replica.batcher``) and ``NormalCase``: requests,
  batching, pre-prepare, prepare, commit, execution (sec. 4.2, 5.1);
- checkpoints.py ``Window`` (``replica.window``: h, the log, checkpoints, held
  messages) and ``Checkpoints``: checkpoints, stability, watermarks, garbage
  collection (sec. 4.3);
- catchup.py     ``CatchUpState`` (``replica.catchup``) and ``CatchUp``:
  retransmission, state transfer, the stuck check (sec. 4.3);
- viewchange.py  ``ViewChangeState`` (``replica.vc``), ``ViewChanges`` and the pure
  VIEW-CHANGE / NEW-VIEW rules (sec. 4.4, 4.5.2);
- collector.py   ``Collector``: vote routing, all-to-all or through the primary as
  collector with CERTIFICATE messages (SBFT-style);
- status.py      ``StatusState`` (``replica.statuses``) and ``StatusExchange``: the
  periodic STATUS, and catching up from f+1 of them without traffic (sec. 4.3);
- quorum.py: the quorum math.

Rules, each tested in tests/core/test_paper.py under the rule's name:
- n >= 4 replicas, f = (n-1)//3; the primary of view v is v mod n.
- A message from a sender outside 0..n-1 or of a type replicas do not handle is
  evidence and changes nothing.
- Persist before send: the records of one call are returned in one Persist action that
  precedes every message of that call, so a restarted replica (``Replica(records=...)``)
  resumes and never signs a vote conflicting with one it sent.  ``Resume`` re-sends its
  own votes for everything not yet executed (and its VIEW-CHANGE), since the crash may
  have come between persisting them and sending them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import quorum as Q
from .actions import Cause, Evidence, Persist
from .catchup import CatchUp, CatchUpState
from .chain import GENESIS
from .checkpoints import Checkpoints, Window
from .clients import ClientTable
from .collector import ALL_TO_ALL, VOTE_ROUTINGS, Collector
from .messages import (MAX_BATCH, MAX_BATCH_BYTES, MAX_WIRE_BYTES, Certificate, Checkpoint, Commit,
                       NewView, PrePrepare, Prepare, Request, Status, ViewChange)
from .normalcase import Batcher, NormalCase
from .status import StatusExchange, StatusState
from .stimuli import FetchDone, Install, Resume, Tick
from .viewchange import ViewChanges, ViewChangeState


@dataclass(frozen=True)
class ReplicaConfig:
    n: int
    checkpoint_interval: int = 64
    log_window: int = 256
    max_batch: int = 256
    max_batch_bytes: int = MAX_BATCH_BYTES
    batch_timeout_ticks: int = 0
    pipeline: int = 2
    retransmit_ticks: int = 500
    client_window: int = 1024
    view_change_ticks: int = 500
    votes: str = ALL_TO_ALL  # vote routing (collector.py): "all-to-all" or "collector"
    status_ticks: int = 0    # the status exchange's period (status.py); 0: no STATUS

    def __post_init__(self) -> None:
        Q.max_faulty(self.n)  # raises for n < 4
        k, L = self.checkpoint_interval, self.log_window
        if k < 1 or L < 2 * k or L % k:
            raise ValueError(f"log_window ({L}) must be a multiple of checkpoint_interval "
                             f"({k}) and at least twice it")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH}")
        if not 1024 <= self.max_batch_bytes <= MAX_WIRE_BYTES // 2:
            raise ValueError(f"max_batch_bytes must be in 1024..{MAX_WIRE_BYTES // 2}")
        if (self.batch_timeout_ticks < 0 or self.retransmit_ticks < 1 or self.pipeline < 0
                or self.view_change_ticks < 1 or self.status_ticks < 0):
            raise ValueError("batch_timeout_ticks, pipeline and status_ticks must be >= 0, "
                             "retransmit_ticks and view_change_ticks >= 1")
        if self.votes not in VOTE_ROUTINGS:
            raise ValueError(f"votes must be one of {', '.join(VOTE_ROUTINGS)}, got {self.votes!r}")


class Replica(NormalCase, Checkpoints, CatchUp, ViewChanges, Collector, StatusExchange):
    """One PBFT replica.  Its own fields are created here, in ``__init__``: who it is,
    its view, what it executed, its clients and clock, and the output of the call in
    progress.  The rest of its state has owners (below), each mutated only through its
    own methods; the sub-protocol mixins read them and call those methods.  Persistent
    state is what ``meta_record`` and the log, checkpoint and client records hold
    (derived from what a step changed by ``_finish``, read by ``_restore``); the rest is volatile and lost on
    restart on purpose."""

    def __init__(self, node_id: int, config: ReplicaConfig, records: dict | None = None,
                 admits: Callable[[str, int], bool] | None = None):
        if not 0 <= node_id < config.n:
            raise ValueError(f"node id {node_id} not in 0..{config.n - 1}")
        self.id = node_id
        self.cfg = config
        self.n = config.n
        self.f = Q.max_faulty(self.n)
        self.quorum = Q.quorum(self.n)
        self.need_prepares = Q.prepared_quorum(self.n)
        # Persistent protocol state.
        self.view = 0
        self.last_exec = 0
        self.head = GENESIS             # hash of the block at last_exec
        self.clients = ClientTable(config.client_window)
        # Volatile state: lost on restart on purpose (clients retransmit).
        self.now = 0
        self.stimuli = 0                # stimuli taken since start (their default ids)
        self.awaiting: dict[tuple[str, int], Request] = {}  # known requests not executed
        # Membership (core/config.py): admits(client, seq) says whether the configuration
        # in force at seq admits that client; a pure function of the executed history
        # the adapter passes in (pbft_tasks/membership.py).  None: every client.
        self.admits = admits
        # The owners (etcd's raftLog and tracker).
        self.batcher = Batcher()                 # normalcase.py: pending requests, next_seq
        self.window = Window(config.log_window, node_id)  # checkpoints.py: h, the log, checkpoints
        self.vc = ViewChangeState()              # viewchange.py: in_view_change, timers
        self.catchup = CatchUpState(node_id, config.n, config.retransmit_ticks)  # catchup.py
        self.statuses = StatusState()            # status.py: peers' statuses
        self._reset_output()
        if records:
            self._restore(records)

    @property
    def primary(self) -> int:
        return Q.primary(self.view, self.n)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    # -- the entry point -----------------------------------------------------------------
    def handle(self, stimulus: Any, stimulus_id: str | None = None) -> list:
        """Take one stimulus: a protocol message whose signature the driver has checked,
        or a ``Tick``, ``Install``, ``FetchDone`` or ``Resume`` (stimuli.py).  Returns the
        actions it causes (actions.py), each carrying its ``Cause``: ``describe(stimulus)``
        with the stimulus's id, ``stimulus_id`` if the driver names one, else
        ``"<replica>.<count>"``."""
        kind = type(stimulus)
        if kind is Tick:
            self.now += 1  # a tick is named after the clock it moves to
        self.stimuli += 1
        cause = Cause(describe(stimulus, self.now),
                      stimulus_id if stimulus_id is not None else f"{self.id}.{self.stimuli}",
                      stimulus)
        meta = self.meta_record()  # the state before the step, to derive what it changed
        handler = self._handlers.get(kind)
        sender = getattr(stimulus, "sender", 0)
        if not isinstance(stimulus, Request) and not 0 <= sender < self.n:
            # the adapter's signature check stops this first; the core does not rely on it
            self._evidence(sender, "unknown_sender", f"sender {sender} not in 0..{self.n - 1}", cause)
        elif handler is None:
            self._evidence(getattr(stimulus, "sender", None), "unexpected_type",
                           f"replicas do not accept {kind.__name__}", cause)
        else:
            handler(self, stimulus, cause)
        return self._finish(cause, meta)

    def _on_tick(self, tick: Tick, cause: str) -> None:
        self._view_change_timers(cause, tick.busy)
        self._resend_view_change(cause)
        self._stuck_check(cause)
        self._cut_partial(cause)
        if self._has_work() and self.now - self.catchup.last_progress >= self.cfg.retransmit_ticks:
            self.catchup.stuck_checked(self.now)  # the stuck check's period
        self._retransmit_if_silent(cause)
        self._status_tick(cause)

    def _on_resume(self, resume: Resume, cause: str) -> None:
        """After a restart: re-send own votes for everything not yet executed, since the
        crash may have come between persisting them and sending them."""
        self._retransmit(cause)
        if self.vc.in_view_change:
            self._start_view_change(self.view, cause)
        self._announce_status(cause)  # peers ahead answer: behind is known in a round trip

    # -- output -------------------------------------------------------------------
    def _reset_output(self) -> None:
        self._executes: list = []
        self._messages: list = []
        self._evidences: list = []

    def _msg(self, action: Any) -> None:
        self._messages.append(action)

    def _evidence(self, sender: Any, reason: str, detail: str, cause: str) -> None:
        self._evidences.append(Evidence(sender, reason, detail, cause))

    def _finish(self, cause: str, meta_before: dict) -> list:
        """The step's actions.  What to persist is derived, not flagged (etcd raft's
        ``prevHardSt``): the meta record if it differs from ``meta_before``, and the
        records whose content the owners saw this step change (``Window.changes``,
        ``ClientTable.changes``)."""
        records: dict[str, Any] = self.window.changes()
        records.update(self.clients.changes())
        meta = self.meta_record()
        if meta != meta_before:
            records["meta"] = meta
        out: list = [Persist(records, cause)] if records else []
        out += self._executes + self._messages + self._evidences
        self._reset_output()
        return out

    def meta_record(self) -> dict:
        w = self.window
        return {"view": self.view, "h": w.h, "last_exec": self.last_exec, "head": self.head,
                "next_seq": self.batcher.next_seq, "stable_digest": w.stable_digest,
                "in_view_change": self.vc.in_view_change}

    def _restore(self, records: dict) -> None:
        meta = records.get("meta")
        next_seq = 1
        if meta:
            self.view, self.last_exec, self.head = meta["view"], meta["last_exec"], meta["head"]
            self.window.restore(meta["h"], meta["stable_digest"])
            next_seq = meta["next_seq"]
            self.vc.restore(meta.get("in_view_change", False))
        self.window.restore_records(records, self.last_exec)
        for k, v in records.items():
            if k.startswith("client/"):
                self.clients.load_record(k[len("client/"):], v)
        # Only seqs with a pre-prepare are taken: an entry holding nothing but peers'
        # votes (a Byzantine one can vote for any seq in the window) must not make a
        # restarted primary skip that seq, or execution stalls there for good.
        self.batcher.restore(max([next_seq, self.last_exec + 1]
                                 + [s + 1 for s, e in self.window.log.items()
                                    if e.preprepare is not None]))

    _handlers = {
        Request: NormalCase._on_request,
        PrePrepare: NormalCase._on_preprepare,
        Prepare: NormalCase._on_prepare,
        Commit: NormalCase._on_commit,
        Checkpoint: Checkpoints._on_checkpoint,
        ViewChange: ViewChanges._on_view_change,
        NewView: ViewChanges._on_new_view,
        Certificate: Collector._on_certificate,
        Status: StatusExchange._on_status,
        Tick: _on_tick,
        Install: CatchUp._on_install,
        FetchDone: CatchUp._on_fetch_done,
        Resume: _on_resume,
    }


def describe(msg: Any, now: int = 0) -> str:
    """A short name for a stimulus (a message, or one of stimuli.py), carried by the
    actions it causes (for logs); ``now`` is the replica's clock, which names a tick."""
    kind = type(msg).__name__
    if isinstance(msg, Request):
        return f"Request {msg.client}/{msg.timestamp}"
    if isinstance(msg, Checkpoint):
        return f"Checkpoint n{msg.seq} from {msg.sender}"
    if isinstance(msg, ViewChange):
        return f"ViewChange v{msg.new_view} from {msg.sender}"
    if isinstance(msg, NewView):
        return f"NewView v{msg.view} from {msg.sender}"
    if isinstance(msg, (PrePrepare, Prepare, Commit)):
        return f"{kind} v{msg.view} n{msg.seq} from {msg.sender}"
    if isinstance(msg, Status):
        return f"Status n{msg.seq} v{msg.view} from {msg.sender}"
    if isinstance(msg, Certificate):
        return f"Certificate {msg.phase} v{msg.view} n{msg.seq} from {msg.sender}"
    if isinstance(msg, Tick):
        return f"tick {now}" + (" (busy)" if msg.busy else "")
    if isinstance(msg, Install):
        return f"state transfer n{msg.block.get('seq')}"
    return {FetchDone: "fetch done", Resume: "resume"}.get(type(msg), kind)
