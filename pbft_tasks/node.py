"""The per-node driver: feeds one pure ``Replica`` and carries out what it asks.

Owns: the adapter pipeline (docs/architecture.md, "Folders and layers"), identical for every transport
(Celery queues in production, an in-process queue in embedded mode and tests):

    wire JSON -> parse (MalformedMessage) -> verify signature (Rejected)
              -> replica.handle(msg) -> one ledger transaction -> sign -> send

Rules:
- No protocol decisions here.  The replica decides; this file only translates.
- Persist before send: all Persist records and Execute blocks of one step go to the
  ledger in one transaction (``LedgerStore.apply``) before any message leaves.
- Two strengths of write.  A step that sends or executes commits with an fsync
  (``synchronous=FULL``): nothing leaves before its records survive a power loss.  A
  step that sends nothing (typically a received vote that completes no quorum) commits
  without the fsync: it survives ``kill -9`` (the broker has already been acked for
  that message), and no message this node signed depends on it.  This halves the
  fsyncs per batch.
- A bad message from a peer is dropped, logged with its reason and counted in
  ``rejected``; it never raises out of ``handle``.  Checking a message (parse, size,
  signature) changes no state, so an unexpected exception there is counted as
  ``check_failed`` and logged with its traceback, and the message dropped.
- Our own bug fails hard (h11's ERROR state, dask's fail_hard): an exception while
  stepping the replica or carrying out its actions (ledger, signing, sending) leaves the
  replica half-stepped, so the runtime stops: it raises ``NodeFailed`` now and for every
  later stimulus.  The worker exits without acknowledging the message and restarts
  from its durable records (pbft_tasks/strategy.py, celery_app.py).
- One replica is one state machine: ``handle`` and ``tick`` run under one lock, so a
  worker may tick from a timer thread while its pool runs tasks.
- Client requests keep the client's signature when forwarded; every other outgoing
  message is signed by this node.  Ed25519 is deterministic, so re-signing our own
  commit for a certificate yields the signature we sent.
- Every stimulus gets an id, ``<node>.<start>.<count>`` (``start`` tells this run of
  the worker from the last), which every action it causes carries (core/actions.py
  ``Cause``); the newest stimuli and their actions are kept (core/trace.py
  ``StimulusLog``) and shown by ``pbft.trace`` (``hdpbf status --trace``).
- Fault injection for tests: a node given ``byzantine`` (core/byzantine.py,
  switched on only by HDPBF_BYZANTINE) sends what ``byzantine.outgoing`` makes of its
  honest replica's messages, after the ledger transaction, and signs as it says
  (pbft_tasks/byzantine.py).  Its own ledger stays honest.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Protocol

from ledger.state import refused_writes

from .core.actions import Broadcast, Evidence, Execute, FetchState, Persist, Send, SendClient
from .core.messages import (MAX_VIEW_CHANGE_BYTES, MAX_WIRE_BYTES, Certificate, MalformedMessage,
                            NewView, Request, Status, ViewChange, from_wire, signing_bytes, to_wire)
from .core.replica import Replica, ReplicaConfig, describe
from .core.stimuli import FetchDone, Install, Resume, Tick
from .core.trace import StimulusLog
from .byzantine import signed_as
from .evidence_log import EvidenceLog
from .ratelimit import TokenBuckets
from .reads import answer_reads
from .signing import Rejected, Signer, Verifier
from .stages import StageClock

log = logging.getLogger("hdpbf.node")

TASK_FOR_TYPE = {
    "Request": "pbft.request",
    "PrePrepare": "pbft.preprepare",
    "Prepare": "pbft.prepare",
    "Commit": "pbft.commit",
    "Checkpoint": "pbft.checkpoint",
    "ViewChange": "pbft.viewchange",
    "NewView": "pbft.newview",
    "Certificate": "pbft.certificate",
    "Status": "pbft.peer_status",
}
# State transfer is adapter business: a block is self-certifying (its 2f+1 signed
# commits), so neither message is signed; both are bounded and checked field by field.
STATE_TRANSFER_TASKS = {"Fetch": "pbft.fetch", "Blocks": "pbft.blocks"}
ALL_TASKS = {**TASK_FOR_TYPE, **STATE_TRANSFER_TASKS}
FETCH_MAX = 64  # blocks per Blocks message
FETCH_MAX_BYTES = 16 * 1024 * 1024  # and at most this much JSON, whatever the count
# Fetches are unsigned and cheap to send, the answer is not: each requester (a mesh
# member; anyone may name one) gets at most FETCH_BURST answers at once and FETCH_RATE a
# second after that.  An honest node behind by 10,000 blocks catches up at up to
# FETCH_RATE x FETCH_MAX blocks a second.
FETCH_RATE = 10.0
FETCH_BURST = 10.0
# What NodeRuntime itself counts (the gate's reasons are guard.GUARD_REASONS, the
# signature checks' signing.REASONS, the replica's its Evidence; docs/PROTOCOL.md sec. 7).
RUNTIME_REASONS = ("malformed", "oversize", "fetch_rate_limited", "check_failed")


class NodeFailed(RuntimeError):
    """This node runtime hit one of our own bugs and stopped (see the rules above); the
    process must end and restart from its durable records."""


class Transport(Protocol):
    def send(self, to: int, wire: dict) -> None: ...
    def send_requests(self, to: int, wires: list[dict]) -> None: ...
    def broadcast(self, sender: int, peers: list[int], wire: dict) -> None: ...
    def send_client(self, client: str, wire: dict) -> None: ...


class NodeRuntime:
    def __init__(self, node_id: int, config: ReplicaConfig, ledger: Any, signer: Signer,
                 verifier: Verifier, transport: Transport, byzantine: Any = None):
        self.id = node_id
        self.ledger = ledger
        self.signer = signer
        self.verifier = verifier
        # membership.py, when the verifier follows the ledger's configuration
        self.membership = getattr(verifier, "membership", None)
        self.transport = transport
        self.byzantine = byzantine  # core.byzantine.Byzantine for fault tests, else None
        self.peers = [i for i in range(config.n) if i != node_id]
        # Followers of mesh.json: members that may fetch blocks, never vote.
        self.followers: frozenset[str] = frozenset()
        self.replica = Replica(node_id, config, records=ledger.protocol_records(),
                               admits=self.membership.admits if self.membership is not None else None)
        if self.replica.last_exec != ledger.height:
            raise RuntimeError(f"node {node_id}: protocol state says {self.replica.last_exec} "
                               f"executed but the ledger holds {ledger.height} blocks")
        self.lock = threading.RLock()
        self.rejected: Counter[str] = Counter()
        self.evidence_log = EvidenceLog(log)  # every bad message counted, lines rate-limited
        self.handled: Counter[str] = Counter()
        self.sent = 0
        self.sent_status = 0  # of which STATUS messages (core/status.py): the idle cost
        self.on_execute: list[Callable[[dict, list], None]] = []
        self._fetches = 0
        self.clock: Callable[[], float] = time.monotonic  # the fetch rate limit's (tests fake it)
        self._fetch_limit = TokenBuckets(FETCH_RATE, FETCH_BURST, lambda: self.clock())  # per requester
        self.installed = 0  # blocks installed by state transfer
        # Observers of every step's actions once carried out (metrics: commit latency).
        self.on_actions: list[Callable[[list], None]] = []
        self.failure: BaseException | None = None  # our own bug; set once, then NodeFailed
        self._relay: dict[int, list[dict]] | None = None  # requests to relay, per node (handle_requests)
        # CPU by stage of the task runs (stages.py); the Celery strategy begins and ends runs.
        self.stages = StageClock()
        self.trace = StimulusLog()  # recent stimuli and what they caused (core/trace.py)
        self.started = time.time()
        self._run = format(int(self.started * 1000) % 0x1000000, "x")  # this run of the worker
        self._stimuli = 0

    @contextlib.contextmanager
    def _stepping(self, what: str):
        """Around every change of state: our own exception stops the runtime for good."""
        if self.failure is not None:
            raise NodeFailed(f"node {self.id} stopped after our own bug: {self.failure!r}")
        try:
            yield
        except Exception as exc:
            self.failure = exc
            log.critical("node %s: our own bug while %s; the runtime stops (the process must "
                         "restart from its durable records)", self.id, what, exc_info=True)
            raise NodeFailed(f"node {self.id} failed while {what}: {exc!r}") from exc

    # -- stimuli ----------------------------------------------------------------------
    def _step(self, stimulus: Any) -> list:
        """The replica takes ``stimulus`` under its id; the step is recorded in the trace.
        Called under ``self.lock``."""
        self._stimuli += 1
        return self.trace.step(self.replica, stimulus, f"{self.id}.{self._run}.{self._stimuli}",
                               at=time.time())

    def start(self) -> None:
        """Re-send own votes for everything unexecuted (a crash may have cut them off)."""
        with self.lock, self._stepping("resuming"):
            self._carry_out(self._step(Resume()))

    def handle(self, wire: Any, expected_type: str | None = None) -> str | None:
        """Process one untrusted wire message.  Returns None if it was stepped, else the
        reason it was rejected."""
        kind = wire.get("type") if isinstance(wire, dict) else None
        if type(kind) is str and kind in STATE_TRANSFER_TASKS:
            if expected_type not in (None, kind):
                return self.reject("malformed", f"a {wire['type']} sent to the {expected_type} task", wire)
            return self._on_fetch(wire) if wire["type"] == "Fetch" else self._on_blocks(wire)
        clock = self.stages
        try:
            msg = from_wire(wire)
            if expected_type is not None and type(msg).__name__ != expected_type:
                raise MalformedMessage(f"a {type(msg).__name__} sent to the {expected_type} task")
            limit = MAX_VIEW_CHANGE_BYTES if isinstance(msg, (ViewChange, NewView)) else MAX_WIRE_BYTES
            data = signing_bytes(msg)  # once: for the size check and the signature
            if len(data) > limit:
                return self.reject("oversize", f"over {limit} bytes", wire)
            clock.lap("parse")
            clock.handled(wire)
            self.verifier.check(msg, data)
            clock.lap("verify")
        except MalformedMessage as exc:
            return self.reject("malformed", str(exc), wire)
        except Rejected as exc:
            return self.reject(exc.reason, str(exc), wire)
        except Exception as exc:  # a checking bug; nothing was changed: drop, loudly
            log.error("node %s: checking a message raised", self.id, exc_info=True)
            return self.reject("check_failed", repr(exc), wire)
        with self.lock, self._stepping(f"stepping a {type(msg).__name__}"):
            self.handled[type(msg).__name__] += 1
            actions = self._step(msg)
            clock.lap("step")
            self._carry_out(actions)
        return None

    def handle_requests(self, wires: list) -> None:
        """A bundle of requests (``pbft.request`` with a list, as clients send them): each
        is handled as one message, and the requests this node relays to the primary leave
        as one bundle per node afterwards, not as one message a request (otherwise a
        client's bundle of 64 becomes 64 task runs in the primary's queue)."""
        self._relay = {}
        try:
            for w in wires:
                self.handle(w, "Request")
            relay = self._relay
        finally:
            self._relay = None
        for to, batch in relay.items():
            self.sent += 1
            self.transport.send_requests(to, batch)

    # -- state transfer -----------------------------------------------------------------
    def _is_follower(self, who: str) -> bool:
        """mesh.json's followers, and those the ledger's configuration lists now."""
        return who in self.followers or (self.membership is not None
                                         and self.membership.is_follower(who))

    def _on_fetch(self, wire: dict) -> str | None:
        try:
            lo, hi, who = wire["from_seq"], wire["to_seq"], wire["requester"]
            if set(wire) != {"type", "from_seq", "to_seq", "requester"} or not all(
                    type(v) is int for v in (lo, hi)) or not 1 <= lo <= hi or not (
                    (type(who) is int and who in self.peers)
                    or (type(who) is str and self._is_follower(who))):
                raise ValueError
        except (KeyError, ValueError):
            return self.reject("malformed", "Fetch needs from_seq <= to_seq and a known requester", wire)
        if self.byzantine is not None and self.byzantine.silent:
            return None
        if lo > self.ledger.height:
            return None  # nothing to send: only blocks that exist are answered
        if not self._fetch_limit.allow(who):
            return self.reject("fetch_rate_limited", f"requester {who} is over {FETCH_RATE:g} "
                                                      f"fetches a second", wire)
        with self.lock, self._stepping("answering a Fetch"):
            top = min(hi, lo + FETCH_MAX - 1, self.ledger.height)
            blocks, size = [], 0
            for block in self.ledger.iter_blocks(lo, top):
                size += len(json.dumps(block))
                if blocks and size > FETCH_MAX_BYTES:
                    break  # the requester asks again for the rest
                blocks.append(block)
            answer = {"type": "Blocks", "sender": self.id, "blocks": blocks}
            if type(who) is str:  # a follower: plain JSON on its own queue
                self.sent += 1
                self.transport.send_follower(who, answer)
            else:
                self._send(who, answer)
        return None

    def _on_blocks(self, wire: dict) -> str | None:
        blocks = wire.get("blocks")
        if set(wire) != {"type", "sender", "blocks"} or type(blocks) is not list or len(blocks) > FETCH_MAX:
            return self.reject("malformed", f"Blocks needs sender and at most {FETCH_MAX} blocks", wire)
        for block in blocks:
            try:  # every signature before the core sees the block
                if (type(block) is not dict or type(block.get("seq")) is not int
                        or type(block.get("certificate")) is not list
                        or type(block.get("requests")) is not list):
                    raise MalformedMessage("a block must be an object with an integer seq and "
                                           "lists certificate and requests")
                for w in block["certificate"] + block["requests"]:
                    self.verifier.check(from_wire(w), seq=block["seq"])
            except MalformedMessage as exc:
                return self.reject("malformed", f"fetched block: {exc}", wire)
            except Rejected as exc:
                return self.reject(exc.reason, f"fetched block {block.get('seq')}: {exc}", wire)
            except Exception as exc:  # a checking bug; nothing was changed: drop, loudly
                log.error("node %s: checking a fetched block raised", self.id, exc_info=True)
                return self.reject("check_failed", repr(exc), wire)
            with self.lock, self._stepping("installing a fetched block"):
                if block.get("seq", 0) <= self.replica.last_exec:
                    continue  # already have it (a duplicate answer)
                before = self.replica.last_exec
                self._carry_out(self._step(Install(block)))
                self.installed += self.replica.last_exec - before
        with self.lock, self._stepping("asking for more state"):
            self._carry_out(self._step(FetchDone()))
        return None

    def tick(self, busy: bool = False) -> None:
        """One tick; ``busy``: messages for this node are waiting that it has not
        handled yet (core/stimuli.py ``Tick``)."""
        with self.lock, self._stepping("ticking"):
            self._carry_out(self._step(Tick(busy)))

    # -- carrying out actions ----------------------------------------------------------
    def _carry_out(self, actions: list) -> None:
        records: dict[str, Any] = {}
        blocks: list[dict] = []
        sends = False
        for a in actions:
            if isinstance(a, Persist):
                records.update(a.records)
            elif isinstance(a, Execute):
                cert = [to_wire(c if c.sig else self.signer.sign(c)) for c in a.certificate]
                blocks.append(dict(a.block, certificate=cert))
            elif isinstance(a, (Send, Broadcast, SendClient)):
                sends = True
        results: list = []
        clock = self.stages
        if records or blocks:
            t0 = time.perf_counter_ns()
            results = self.ledger.apply(records, blocks, sync=bool(blocks) or sends)
            clock.lap_wait("ledger", time.perf_counter_ns() - t0)
            for block, res in zip(blocks, results):
                for client, key, reason in refused_writes(block, res):
                    self.rejected[reason] += 1   # the client's evidence, on every replica
                    self.evidence_log.warning((repr(client), reason),
                                              "node %s refused client %r's write of %s "
                                              "in block %s: %s", self.id, client, key,
                                              block.get("seq"), reason)
                for hook in self.on_execute:
                    hook(block, res)
        actions = answer_reads(actions, blocks, results, self.ledger)
        if self.byzantine is not None:
            actions = self.byzantine.outgoing(actions)
        clock.lap("observe")
        for a in actions:
            if isinstance(a, Send):
                wire = self._wire(a.msg)
                clock.lap("sign")
                if self._relay is not None and isinstance(a.msg, Request):
                    self._relay.setdefault(a.to, []).append(wire)  # sent by handle_requests
                else:
                    clock.sending(wire)
                    self._send(a.to, wire)
                    self.sent_status += isinstance(a.msg, Status)
                clock.lap("publish")
            elif isinstance(a, Broadcast):
                self.sent += len(self.peers)
                if isinstance(a.msg, Status):
                    self.sent_status += len(self.peers)
                wire = self._wire(a.msg)
                clock.lap("sign")
                clock.sending(wire)
                self.transport.broadcast(self.id, self.peers, wire)
                clock.lap("publish")
            elif isinstance(a, SendClient):
                wire = self._wire(a.msg)
                clock.lap("sign")
                clock.sending(wire)
                self.transport.send_client(a.client, wire)
                clock.lap("publish")
            elif isinstance(a, FetchState):
                peer = a.peers[self._fetches % len(a.peers)] if a.peers else self.peers[0]
                self._fetches += 1  # the next request goes to the next peer
                self._send(peer, {"type": "Fetch", "from_seq": a.from_seq, "to_seq": a.to_seq,
                                  "requester": self.id})
            elif isinstance(a, Evidence):
                self.rejected[a.reason] += 1
                self.evidence_log.warning((a.sender, a.reason),
                                          "node %s evidence against %s: %s (%s) [cause: %s]",
                                          self.id, a.sender, a.reason, a.detail, a.cause)
        for hook in self.on_actions:
            hook(actions)
        clock.lap("observe")

    def _wire(self, msg: Any) -> dict:
        if self.byzantine is not None:
            return to_wire(signed_as(self.byzantine, self.id, self._signed(msg)))
        return to_wire(self._signed(msg))

    def _signed(self, msg: Any) -> Any:
        """``msg`` signed by this node, with its own messages nested in a VIEW-CHANGE,
        NEW-VIEW or CERTIFICATE signed too (the core keeps them unsigned; Ed25519 is deterministic, so
        these are the signatures they were sent with).  Others' messages are untouched."""
        if isinstance(msg, Request) or (msg.sig and msg.sender != self.id):
            return msg
        if isinstance(msg, ViewChange):
            msg = dataclasses.replace(
                msg, checkpoints=tuple(self._signed(c) for c in msg.checkpoints),
                prepared=tuple((self._signed(pp), tuple(self._signed(p) for p in ps))
                               for pp, ps in msg.prepared))
        elif isinstance(msg, NewView):
            msg = dataclasses.replace(
                msg, view_changes=tuple(self._signed(vc) for vc in msg.view_changes),
                preprepares=tuple(self._signed(pp) for pp in msg.preprepares))
        elif isinstance(msg, Certificate):  # the collector's own commit inside it
            msg = dataclasses.replace(msg, votes=tuple(self._signed(v) for v in msg.votes))
        return msg if msg.sig else self.signer.sign(msg)

    def _send(self, to: int, wire: dict) -> None:
        self.sent += 1
        self.transport.send(to, wire)

    def reject(self, reason: str, detail: str, wire: Any) -> str:
        self.rejected[reason] += 1
        kind = wire.get("type") if isinstance(wire, dict) else type(wire).__name__
        sender = wire.get("sender", wire.get("client")) if isinstance(wire, dict) else None
        self.evidence_log.warning((repr(sender), reason), "node %s rejected %s from %r: %s: %s",
                                  self.id, kind, sender, reason, detail)
        return reason

    # -- observation --------------------------------------------------------------------
    def status(self) -> dict:
        r = self.replica
        return {"id": self.id, "view": r.view, "height": self.ledger.height, "head": self.ledger.head,
                "h": r.window.h, "last_exec": r.last_exec, "rejected": dict(self.rejected),
                "handled": dict(self.handled), "sent": self.sent, "sent_status": self.sent_status,
                "installed": self.installed,
                "config_version": self.membership.version if self.membership is not None else None,
                "byzantine": sorted(self.byzantine.behaviours) if self.byzantine else [],
                "byzantine_counts": dict(self.byzantine.counts) if self.byzantine else {},
                "cpu_stages": self.stages.snapshot(),
                # OS thread id -> name, so a bench can split the process's CPU by thread
                "threads": {str(t.native_id): t.name for t in threading.enumerate()},
                "time": time.time()}

    def trace_status(self) -> dict:
        """``pbft.trace``: the newest stimuli, oldest first, each with its id, what it was,
        its trace keys (request ids, ``n<seq>``) and the actions it caused."""
        with self.lock:
            recorded = self.trace.snapshot()
        return {"id": self.id, "started": self.started, "run": self._run,
                "stimuli": self._stimuli, "trace": self.trace.entries(recorded), "time": time.time()}


__all__ = ["NodeRuntime", "NodeFailed", "Transport", "TASK_FOR_TYPE", "describe"]
