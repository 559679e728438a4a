"""The PBFT replica as a pure state machine: its one entry point, its state, and its
output (Castro and Liskov, "Practical Byzantine Fault Tolerance", OSDI 1999, sec. 4).

Theory of operation.  A ``Replica`` is fed two kinds of stimulus: ``step(msg)`` for a
message whose signature the driver has already checked, and ``tick()`` for the passage
of time (one tick is whatever the driver says; the worker uses a few milliseconds).
Each call returns a list of actions (see actions.py): persist these records, execute
these blocks, send these messages, note this evidence.  The replica never touches a
socket, a file, a clock, a random number or a key; it only hashes.  Given the same
stimuli it produces the same actions, which is what the scenario scripts and the
hypothesis tests rely on.  Besides ``step`` and ``tick`` the driver calls ``install``
(one block fetched by state transfer), ``request_state`` (after a batch of fetched
blocks) and ``resume`` (after a restart).

Owns: ``ReplicaConfig``, the ``Replica`` class (its state, created and documented in
one place, ``__init__``; the entry points; the dispatch table; persistence: the records
of a call, ``meta_record`` and ``_restore``) and ``describe``.  The sub-protocols are
mixins, each in its own module with its own rules:
- normalcase.py  ``NormalCase``: requests, batching, pre-prepare, prepare, commit,
  execution (sec. 4.2, 5.1);
- checkpoints.py ``Checkpoints``: checkpoints, stability, watermarks, garbage
  collection (sec. 4.3);
- catchup.py     ``CatchUp``: retransmission, state transfer, the stuck check (sec. 4.3);
- viewchange.py  ``ViewChanges`` and the pure VIEW-CHANGE / NEW-VIEW rules (sec. 4.4,
  4.5.2);
- collector.py   ``Collector``: vote routing, all-to-all or through the primary as
  collector with CERTIFICATE messages (SBFT-style, issue 14);
- quorum.py: the quorum math.

Rules, each tested in tests/core/test_paper.py under the rule's name:
- n >= 4 replicas, f = (n-1)//3; the primary of view v is v mod n.
- A message from a sender outside 0..n-1 or of a type replicas do not handle is
  evidence and changes nothing.
- Persist before send: the records of one call are returned in one Persist action that
  precedes every message of that call, so a restarted replica (``Replica(records=...)``)
  resumes and never signs a vote conflicting with one it sent.  ``resume`` re-sends its
  own votes for everything not yet executed (and its VIEW-CHANGE), since the crash may
  have come between persisting them and sending them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import quorum as Q
from .actions import Evidence, Persist
from .catchup import CatchUp
from .chain import GENESIS
from .checkpoints import Checkpoints
from .clients import ClientTable
from .collector import ALL_TO_ALL, VOTE_ROUTINGS, Collector
from .log import Entry
from .messages import (MAX_BATCH, MAX_BATCH_BYTES, MAX_WIRE_BYTES, Certificate, Checkpoint, Commit,
                       NewView, PrePrepare, Prepare, Request, ViewChange, from_wire, to_wire)
from .normalcase import NormalCase
from .viewchange import ViewChanges


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
                or self.view_change_ticks < 1):
            raise ValueError("batch_timeout_ticks and pipeline must be >= 0, retransmit_ticks and view_change_ticks >= 1")
        if self.votes not in VOTE_ROUTINGS:
            raise ValueError(f"votes must be one of {', '.join(VOTE_ROUTINGS)}, got {self.votes!r}")


class Replica(NormalCase, Checkpoints, CatchUp, ViewChanges, Collector):
    """One PBFT replica.  All of its state is created here, in ``__init__``, and shared
    by the sub-protocol mixins; persistent state is what ``meta_record`` and the log,
    checkpoint and client records hold (written by ``_finish``, read by ``_restore``),
    the rest is volatile and lost on restart on purpose."""

    def __init__(self, node_id: int, config: ReplicaConfig, records: dict | None = None):
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
        self.h = 0                      # low watermark = seq of the last stable checkpoint
        self.last_exec = 0
        self.head = GENESIS             # hash of the block at last_exec
        self.next_seq = 1               # primary: next sequence number to assign
        self.stable_digest = GENESIS
        self.log: dict[int, Entry] = {}
        self.checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self.own_checkpoints: dict[int, str] = {}
        self.clients = ClientTable(config.client_window)
        # Volatile state: lost on restart on purpose (clients retransmit).
        self.pending: list[Request] = []
        self.pending_bytes: dict[tuple[str, int], int] = {}  # request_bytes of pending ones
        self.in_flight: set[tuple[str, int]] = set()
        self.pending_since: int | None = None
        self.now = 0
        self.last_progress = 0
        # Retransmission waits for silence (catchup.py): the tick since which this replica
        # has had work and seen no progress, and what progress usually takes (a moving
        # average of ticks, started at a quarter of retransmit_ticks).
        self.quiet_since = 0
        self.progress_ticks = config.retransmit_ticks / 4
        self.held: list[Any] = []
        self.behind_to = 0              # a stable checkpoint we have not reached yet
        self.helped: dict[tuple[int, int], int] = {}   # (peer, seq) -> tick we last helped
        # View change.  ``in_view_change`` is persisted with the view; the rest is volatile.
        self.in_view_change = False
        self.view_changes: dict[int, dict[int, ViewChange]] = {}
        self.awaiting: dict[tuple[str, int], Request] = {}  # known requests not executed
        self.waiting_since: int | None = None
        self.vc_started_at = 0
        self.vc_quorum_at: int | None = None   # when 2f+1 VIEW-CHANGEs for self.view were in
        self.vc_attempts = 0
        self.vc_sent_at = 0                      # when our VIEW-CHANGE last went out
        self.vc_resends = 0                      # copies of it re-sent so far (backoff)
        self.new_view_msg: NewView | None = None  # the NEW-VIEW that installed self.view
        self.new_view_sent: dict[int, int] = {}  # peer -> tick we last sent it new_view_msg
        self.new_view_asked: set[int] = set()    # peers whose VIEW-CHANGE for self.view we saw
        self.held_view: list[Any] = []
        self.far_checkpoints: dict[int, Checkpoint] = {}  # newest beyond the window, per sender
        self.fetch_asked_at: int | None = None
        # Per sender, the highest seq of its messages dropped beyond the window: evidence,
        # and a state-transfer target only as far as f+1 senders agree (catchup.py).
        self.seen_ahead: dict[int, int] = {}
        self.fetch_peers: tuple = tuple(i for i in range(config.n) if i != node_id)
        self._reset_output()
        if records:
            self._restore(records)

    # -- public entry points -----------------------------------------------------------
    @property
    def primary(self) -> int:
        return Q.primary(self.view, self.n)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def high(self) -> int:
        return self.h + self.cfg.log_window

    def step(self, msg: Any) -> list:
        cause = describe(msg)
        handler = self._handlers.get(type(msg))
        sender = getattr(msg, "sender", 0)
        if not isinstance(msg, Request) and not 0 <= sender < self.n:
            # the adapter's signature check stops this first; the core does not rely on it
            self._evidence(sender, "unknown_sender", f"sender {sender} not in 0..{self.n - 1}", cause)
        elif handler is None:
            self._evidence(getattr(msg, "sender", None), "unexpected_type",
                           f"replicas do not accept {type(msg).__name__}", cause)
        else:
            handler(self, msg, cause)
        return self._finish(cause)

    def tick(self) -> list:
        self.now += 1
        cause = f"tick {self.now}"
        self._view_change_timers(cause)
        self._resend_view_change(cause)
        self._stuck_check(cause)
        self._cut_partial(cause)
        if self._has_work() and self.now - self.last_progress >= self.cfg.retransmit_ticks:
            self.last_progress = self.now  # the stuck check's period
        self._retransmit_if_silent(cause)
        return self._finish(cause)

    def install(self, block: dict) -> list:
        """State transfer: execute one committed block fetched from a peer (its
        signatures already checked by the adapter).  A block that does not fit is
        evidence and changes nothing."""
        cause = f"state transfer n{block.get('seq')}"
        reason, entry = self._check_install(block)  # raises only on our own bug
        if reason:
            self._evidence(None, "bad_state_transfer", reason, cause)
        else:
            entry.prior = self._certificate(self.log.get(entry.seq))
            self.log[entry.seq] = entry
            self._execute(entry, cause)
            self._execute_ready(cause)
            if self.behind_to <= self.last_exec:
                self.fetch_asked_at = None
        return self._finish(cause)

    def request_state(self) -> list:
        """After a batch of fetched blocks: ask for the rest if still behind."""
        if self.behind_to > self.last_exec:
            self.fetch_asked_at = None
            self._need_state(self.behind_to, list(self.fetch_peers), "state transfer continues")
        return self._finish("request_state")

    def resume(self) -> list:
        """After a restart: re-send own votes for everything not yet executed, since the
        crash may have come between persisting them and sending them."""
        self._retransmit("resume")
        if self.in_view_change:
            self._start_view_change(self.view, "resume")
        return self._finish("resume")

    # -- output -------------------------------------------------------------------
    def _reset_output(self) -> None:
        self._dirty_meta = False
        self._dirty_pp: set[int] = set()
        self._dirty_votes: set[int] = set()
        self._dirty_ckpt: set[int] = set()
        self._dirty_clients: set[str] = set()
        self._deleted: set[str] = set()
        self._executes: list = []
        self._messages: list = []
        self._evidences: list = []

    def _msg(self, action: Any) -> None:
        self._messages.append(action)

    def _evidence(self, sender: Any, reason: str, detail: str, cause: str) -> None:
        self._evidences.append(Evidence(sender, reason, detail, cause))

    def _finish(self, cause: str) -> list:
        records: dict[str, Any] = {k: None for k in self._deleted}
        if self._dirty_meta:
            records["meta"] = self.meta_record()
        for s in self._dirty_pp:
            if s in self.log:
                records[f"pp/{s}"] = self.log[s].preprepare_record()
        for s in self._dirty_votes:
            if s in self.log:
                records[f"votes/{s}"] = self.log[s].votes_record()
        for s in self._dirty_ckpt:
            if s in self.checkpoints:
                records[f"ckpt/{s}"] = {"own": self.own_checkpoints.get(s),
                                        "msgs": [to_wire(c) for _, c in sorted(self.checkpoints[s].items())]}
        for c in self._dirty_clients:
            records[f"client/{c}"] = self.clients.to_record(c)
        out: list = [Persist(records, cause)] if records else []
        out += self._executes + self._messages + self._evidences
        self._reset_output()
        return out

    def meta_record(self) -> dict:
        return {"view": self.view, "h": self.h, "last_exec": self.last_exec, "head": self.head,
                "next_seq": self.next_seq, "stable_digest": self.stable_digest,
                "in_view_change": self.in_view_change}

    def _restore(self, records: dict) -> None:
        meta = records.get("meta")
        if meta:
            self.view, self.h, self.last_exec = meta["view"], meta["h"], meta["last_exec"]
            self.head, self.next_seq = meta["head"], meta["next_seq"]
            self.stable_digest = meta["stable_digest"]
            self.in_view_change = meta.get("in_view_change", False)
        seqs = {int(k.split("/")[1]) for k in records if k.startswith(("pp/", "votes/"))}
        for s in seqs:
            if s > self.h:
                e = Entry.from_records(s, records.get(f"pp/{s}"), records.get(f"votes/{s}"))
                e.executed = s <= self.last_exec
                self.log[s] = e
        for k, v in records.items():
            if k.startswith("ckpt/"):
                s = int(k.split("/")[1])
                self.checkpoints[s] = {c.sender: c for c in map(from_wire, v["msgs"])}
                if v["own"]:
                    self.own_checkpoints[s] = v["own"]
            elif k.startswith("client/"):
                self.clients.load_record(k[len("client/"):], v)
        # Only seqs with a pre-prepare are taken: an entry holding nothing but peers'
        # votes (a Byzantine one can vote for any seq in the window) must not make a
        # restarted primary skip that seq, or execution stalls there for good.
        self.next_seq = max([self.next_seq, self.last_exec + 1]
                            + [s + 1 for s, e in self.log.items() if e.preprepare is not None])

    _handlers = {
        Request: NormalCase._on_request,
        PrePrepare: NormalCase._on_preprepare,
        Prepare: NormalCase._on_prepare,
        Commit: NormalCase._on_commit,
        Checkpoint: Checkpoints._on_checkpoint,
        ViewChange: ViewChanges._on_view_change,
        NewView: ViewChanges._on_new_view,
        Certificate: Collector._on_certificate,
    }


def describe(msg: Any) -> str:
    """A short name for a stimulus, carried by the actions it causes (for logs)."""
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
    if isinstance(msg, Certificate):
        return f"Certificate {msg.phase} v{msg.view} n{msg.seq} from {msg.sender}"
    return kind
