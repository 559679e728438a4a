"""The PBFT replica as a pure state machine: normal case and checkpoints.

Implements Castro and Liskov, "Practical Byzantine Fault Tolerance", OSDI 1999:
sec. 4.2 (normal-case operation: pre-prepare, prepare, commit, in-order execution,
request batching as in sec. 5.1) and sec. 4.3 (checkpoints, watermarks, garbage
collection) and sec. 4.4 (view change; the counting rules are in viewchange.py).

Theory of operation.  A ``Replica`` is fed two kinds of stimulus: ``step(msg)`` for a
message whose signature the driver has already checked, and ``tick()`` for the passage
of time (one tick is whatever the driver says; the worker uses a few milliseconds).
Each call returns a list of actions (see actions.py): persist these records, execute
these blocks, send these messages, note this evidence.  The replica never touches a
socket, a file, a clock, a random number or a key; it only hashes.  Given the same
stimuli it produces the same actions, which is what the scenario scripts and the
hypothesis tests rely on.

Rules, each tested in tests/core/test_paper.py under the rule's name:
- n >= 4 replicas, f = (n-1)//3; the primary of view v is v mod n.
- A backup accepts a pre-prepare only if it is signed by the primary of its view, the
  view is the replica's current view, h < seq <= h + L, the digest is the batch's
  digest, and it has not accepted another digest for (view, seq).
- prepared = pre-prepare + 2f matching prepares from backups; the replica then
  multicasts a commit.  committed-local = prepared + 2f+1 matching commits.
- Execution is strictly in sequence order; every seq yields one block.
- Requests are deduplicated by (client, timestamp) at execution, deterministically, via
  the client table; the primary also refuses to propose a request twice.
- Batching (sec. 5.1): the primary cuts a batch when ``max_batch`` requests wait; it
  cuts a partial batch once the oldest waiting request has waited
  ``batch_timeout_ticks`` ticks *and* fewer than ``pipeline`` of its batches are in
  flight (proposed, not yet executed).  Under load requests pile up behind the window
  and batches grow; at low load a request waits at most the timeout (with timeout 0 it
  is proposed on arrival when the window has room).  pipeline=0 turns the window off
  (cut on the timeout alone).
- Every K = ``checkpoint_interval`` seqs a replica multicasts CHECKPOINT(n, digest);
  2f+1 matching make it stable: the low watermark h moves to n, H = h + L, and the log
  at or below n is garbage-collected.  Messages beyond H are held (bounded) until the
  window reaches them; messages at or below h are dropped.
- Retransmission to a replica that is behind: a replica that has executed seq n and
  receives a *duplicate* vote or pre-prepare for n (the sender is retransmitting, so it
  may be stuck there) sends that sender its own pre-prepare, prepare and commit for n; a
  duplicate CHECKPOINT for the stable checkpoint is answered with our own.  Two
  replicas that both executed n would answer each other's answers forever, so each
  peer is helped at most once per (seq, ``retransmit_ticks``).
- View change (sec. 4.4): a replica waiting for a request it knows of (a request it
  received or a pre-prepare it accepted, not yet executed) for ``view_change_ticks``
  ticks moves to view v+1: it stops accepting normal-case messages, multicasts a
  VIEW-CHANGE with its stable-checkpoint proof and prepared certificates, and holds
  messages of v+1 until the NEW-VIEW.  The primary of v+1 multicasts NEW-VIEW once it
  has 2f+1 VIEW-CHANGEs; backups check it by recomputing O.  If no NEW-VIEW comes in
  time after 2f+1 replicas asked for v+1 (sec. 4.5.2: the timer starts then, so a
  replica that timed out alone does not climb views on its own) it moves on to v+2
  with the timeout doubled, so the mesh does not loop; the
  timeout is reset when a request executes.  f+1 VIEW-CHANGEs for higher views make a
  replica join the smallest of them (sec. 4.5.2).  A VIEW-CHANGE carries, per seq, the
  prepared certificate of the *latest view in which that seq prepared here*, not only
  of the view being left: entering a view (or installing a fetched block) replaces the
  log entry but keeps its certificate (``Entry.prior``), else a batch committed in v
  and re-proposed but not yet prepared in v+1 could be replaced by another in v+2.
- State transfer: f+1 matching CHECKPOINTs for a seq this replica has not executed (at
  least one from an honest replica) make it ask for the missing blocks (``FetchState``,
  at most once per ``retransmit_ticks``).  So does being stuck: no progress for
  ``retransmit_ticks`` while f+1 replicas committed a seq it cannot execute (it lost the
  pre-prepare), or while it dropped messages beyond its window.  ``install`` takes one committed block: it
  must extend this replica's chain, carry 2f+1 matching commits for its batch, and hash
  to what this replica computes for it (skip list included) before anything changes;
  then it executes through the same path as a normal commit.  The adapter checks the
  signatures first.
- Persist before send: the records of one call are returned in one Persist action that
  precedes every message of that call, so a restarted replica (``Replica(records=...)``)
  resumes and never signs a vote conflicting with one it sent.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from . import quorum as Q
from .actions import Broadcast, Evidence, Execute, FetchState, Persist, Send, SendClient
from .chain import GENESIS, block_hash, block_header, make_block
from .clients import ClientTable
from .log import Entry
from .messages import (MAX_BATCH, Checkpoint, Commit, NewView, PrePrepare, Prepare, Reply,
                       Request, ViewChange, batch_digest, from_wire, to_wire)
from .viewchange import check_new_view, check_view_change, new_view_preprepares


@dataclass(frozen=True)
class ReplicaConfig:
    n: int
    checkpoint_interval: int = 64
    log_window: int = 256
    max_batch: int = 256
    batch_timeout_ticks: int = 0
    pipeline: int = 2
    retransmit_ticks: int = 500
    client_window: int = 1024
    view_change_ticks: int = 500

    def __post_init__(self) -> None:
        Q.max_faulty(self.n)  # raises for n < 4
        k, L = self.checkpoint_interval, self.log_window
        if k < 1 or L < 2 * k or L % k:
            raise ValueError(f"log_window ({L}) must be a multiple of checkpoint_interval "
                             f"({k}) and at least twice it")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH}")
        if (self.batch_timeout_ticks < 0 or self.retransmit_ticks < 1 or self.pipeline < 0
                or self.view_change_ticks < 1):
            raise ValueError("batch_timeout_ticks and pipeline must be >= 0, retransmit_ticks >= 1")


class Replica:
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
        self.in_flight: set[tuple[str, int]] = set()
        self.pending_since: int | None = None
        self.now = 0
        self.last_progress = 0
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
        self.held_view: list[Any] = []
        self.far_checkpoints: dict[int, Checkpoint] = {}  # newest beyond the window, per sender
        self.fetch_asked_at: int | None = None
        self.seen_ahead = 0  # highest seq of a message dropped beyond the window
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
        self._stuck_check(cause)
        self._cut_partial(cause)
        if self._has_work() and self.now - self.last_progress >= self.cfg.retransmit_ticks:
            self.last_progress = self.now
            self._retransmit(cause)
        return self._finish(cause)

    def install(self, block: dict) -> list:
        """State transfer: execute one committed block fetched from a peer (its
        signatures already checked by the adapter).  A block that does not fit is
        evidence and changes nothing."""
        cause = f"state transfer n{block.get('seq')}"
        try:
            reason, entry = self._check_install(block)
        except (KeyError, TypeError, ValueError) as exc:
            reason, entry = f"malformed block: {exc}", None
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

    def _check_install(self, block: dict) -> tuple[str | None, Entry | None]:
        seq, view, digest = block["seq"], block["view"], block["digest"]
        if seq != self.last_exec + 1 or block["prev"] != self.head:
            return f"block {seq} does not extend this chain at {self.last_exec}", None
        batch = tuple(from_wire(w) for w in block["requests"])
        if any(not isinstance(r, Request) for r in batch) or batch_digest(batch) != digest:
            return f"block {seq}: requests do not match the digest", None
        cert = [from_wire(w) for w in block["certificate"]]
        senders = {c.sender for c in cert if isinstance(c, Commit) and c.view == view
                   and c.seq == seq and c.digest == digest and 0 <= c.sender < self.n}
        if len(senders) < self.quorum:
            return f"block {seq}: fewer than 2f+1 matching commits", None
        skip = self._preview_skip(batch)
        if block["skip"] != skip:
            return f"block {seq}: skips {block['skip']}, this replica's client table says {skip}", None
        expect = block_hash(block_header(seq, view, digest, self.head, skip))
        if expect != block["hash"]:
            return f"block {seq}: hashes to {expect[:12]} here, not {block['hash'][:12]}", None
        entry = Entry(seq)
        entry.preprepare = PrePrepare(view, seq, digest, batch, Q.primary(view, self.n))
        entry.commits = {c.sender: c for c in cert if c.sender in senders}
        return None, entry

    def _stuck_check(self, cause: str) -> None:
        if self.now - self.last_progress < self.cfg.retransmit_ticks:
            return
        ahead = self.seen_ahead
        for seq, e in self.log.items():
            if seq > self.last_exec and e.preprepare is None:
                voters = {c.sender for c in e.commits.values()}
                if len(voters) >= Q.weak_quorum(self.n):  # an honest replica committed it
                    ahead = max(ahead, seq)
        if ahead > self.last_exec:
            self._need_state(ahead, [s for s in range(self.n) if s != self.id], f"{cause}: stuck")

    def _preview_skip(self, batch: tuple) -> list[int]:
        """The skip list _execute would produce for ``batch``, without changing state."""
        seen: set = set()
        skip = []
        for i, r in enumerate(batch):
            key = (r.client, r.timestamp)
            if self.clients.executed(*key) or key in seen:
                skip.append(i)
            else:
                seen.add(key)
        return skip

    def request_state(self) -> list:
        """After a batch of fetched blocks: ask for the rest if still behind."""
        if self.behind_to > self.last_exec:
            self.fetch_asked_at = None
            self._need_state(self.behind_to, list(self.fetch_peers), "state transfer continues")
        return self._finish("request_state")

    def _need_state(self, seq: int, peers: list[int], cause: str) -> None:
        self.fetch_peers = tuple(sorted(peers)) or self.fetch_peers
        self.behind_to = max(self.behind_to, seq)
        if (self.fetch_asked_at is not None
                and self.now - self.fetch_asked_at < self.cfg.retransmit_ticks):
            return
        self.fetch_asked_at = self.now
        self._msg(FetchState(self.last_exec + 1, self.behind_to, self.fetch_peers, cause))

    def resume(self) -> list:
        """After a restart: re-send own votes for everything not yet executed, since the
        crash may have come between persisting them and sending them."""
        self._retransmit("resume")
        if self.in_view_change:
            self._start_view_change(self.view, "resume")
        return self._finish("resume")

    # -- requests and batching (sec. 4.2, 5.1) ------------------------------------------
    def _on_request(self, req: Request, cause: str) -> None:
        key = (req.client, req.timestamp)
        if self.clients.executed(*key):
            result = self.clients.result(*key)
            if result is not None:  # retransmission: answer again, never re-execute
                self._msg(SendClient(req.client, Reply(self.view, result["seq"], req.client, self.id,
                          ({"timestamp": req.timestamp, "result": result},)), cause))
            return
        if len(self.awaiting) < 4 * MAX_BATCH:
            self.awaiting.setdefault(key, req)  # the request timer of sec. 4.4
        if self.in_view_change:
            return  # the new primary proposes what is awaited once the view is installed
        if not self.is_primary:
            self._msg(Send(self.primary, req, cause))
            return
        if key in self.in_flight:
            return
        self.in_flight.add(key)
        self.pending.append(req)
        if self.pending_since is None:
            self.pending_since = self.now
        if len(self.pending) >= self.cfg.max_batch:
            self._propose(cause, force=False)
        elif self.cfg.batch_timeout_ticks == 0:
            self._cut_partial(cause)  # no timeout: propose now if the window has room

    def _cut_partial(self, cause: str) -> None:
        if not (self.is_primary and self.pending and not self.in_view_change
                and self.now - self.pending_since >= self.cfg.batch_timeout_ticks):
            return
        in_flight = self.next_seq - 1 - self.last_exec
        if self.cfg.pipeline == 0 or in_flight < self.cfg.pipeline:
            self._propose(cause, force=True, limit=1 if self.cfg.pipeline else None)

    def _propose(self, cause: str, force: bool, limit: int | None = None) -> None:
        size = self.cfg.max_batch
        while self.pending and self.next_seq <= self.high:
            if len(self.pending) < size and not force:
                break
            if limit is not None:
                if limit == 0:
                    break
                limit -= 1
            batch, self.pending = tuple(self.pending[:size]), self.pending[size:]
            seq = self.next_seq
            self.next_seq += 1
            pp = PrePrepare(self.view, seq, batch_digest(batch), batch, self.id)
            entry = self.log.setdefault(seq, Entry(seq))
            entry.preprepare = pp
            self._dirty_pp.add(seq)
            self._dirty_meta = True
            self._msg(Broadcast(pp, cause))
            self._check(entry, cause)
        self.pending_since = self.now if self.pending else None

    # -- normal case (sec. 4.2) ------------------------------------------------------
    def _on_preprepare(self, pp: PrePrepare, cause: str) -> None:
        if pp.sender != Q.primary(pp.view, self.n):
            return self._evidence(pp.sender, "not_primary",
                                  f"pre-prepare from {pp.sender}, primary of view {pp.view} is "
                                  f"{Q.primary(pp.view, self.n)}", cause)
        if not self._admit(pp, cause):
            return
        if batch_digest(pp.batch) != pp.digest:
            return self._evidence(pp.sender, "bad_digest", f"seq {pp.seq}: digest does not match batch", cause)
        entry = self.log.setdefault(pp.seq, Entry(pp.seq))
        if entry.preprepare is not None:
            if entry.preprepare.digest != pp.digest:
                self._evidence(pp.sender, "conflicting_preprepare",
                               f"view {pp.view} seq {pp.seq}: second digest {pp.digest[:12]}", cause)
            else:
                self._help_behind(entry, pp.sender, cause)
            return
        entry.preprepare = pp
        self._dirty_pp.add(pp.seq)
        for r in pp.batch:
            self.in_flight.add((r.client, r.timestamp))
        if self.id != pp.sender:
            mine = Prepare(pp.view, pp.seq, pp.digest, self.id)
            entry.prepares[self.id] = mine
            self._dirty_votes.add(pp.seq)
            self._msg(Broadcast(mine, cause))
        self._check(entry, cause)

    def _on_prepare(self, p: Prepare, cause: str) -> None:
        if p.sender == Q.primary(p.view, self.n):
            return self._evidence(p.sender, "prepare_from_primary", f"seq {p.seq}", cause)
        if self._admit(p, cause):
            self._vote(p, "prepares", cause)

    def _on_commit(self, c: Commit, cause: str) -> None:
        if self._admit(c, cause):
            self._vote(c, "commits", cause)

    def _admit(self, m: Any, cause: str) -> bool:
        """View and watermark checks shared by pre-prepare, prepare and commit."""
        if m.sender == self.id:
            self._evidence(m.sender, "replayed_own", "a message signed by this replica came back", cause)
            return False
        if m.view == self.view and self.in_view_change:
            if len(self.held_view) < 4 * self.cfg.log_window * self.n:
                self.held_view.append(m)  # accepted once the NEW-VIEW installs the view
            return False
        if m.view != self.view:
            self._evidence(m.sender, "wrong_view", f"view {m.view}, current view {self.view}", cause)
            return False
        if m.seq <= self.h:
            return False  # already garbage-collected: a late or repeated message
        if m.seq > self.high:
            self._hold(m, cause)
            return False
        return True

    def _vote(self, m: Prepare | Commit, kind: str, cause: str) -> None:
        entry = self.log.setdefault(m.seq, Entry(m.seq))
        votes = getattr(entry, kind)
        old = votes.get(m.sender)
        if old is not None:
            if old.digest != m.digest:
                self._evidence(m.sender, "equivocation",
                               f"{type(m).__name__} seq {m.seq}: digests {old.digest[:12]} and {m.digest[:12]}", cause)
            else:
                self._help_behind(entry, m.sender, cause)
            return
        votes[m.sender] = m
        # Not persisted on its own: a vote short of a quorum commits this replica to
        # nothing, and if a crash loses it, peers send it again (resume / help-behind).
        # The votes are written with the step that completes a certificate (our commit
        # after a prepared certificate, sec. 4.2) and in the executed block's 2f+1 commits;
        # that is what view change (sec. 4.4) and restart need.  Half the writes per batch.
        self._check(entry, cause)

    def _check(self, entry: Entry, cause: str) -> None:
        pp = entry.preprepare
        primary = Q.primary(pp.view, self.n) if pp else self.primary
        if (pp is not None and self.id not in entry.commits
                and entry.prepared(primary, self.need_prepares)):
            mine = Commit(pp.view, pp.seq, pp.digest, self.id)
            entry.commits[self.id] = mine
            self._dirty_votes.add(pp.seq)
            self._msg(Broadcast(mine, cause))
        if entry.seq == self.last_exec + 1:
            self._execute_ready(cause)

    def _execute_ready(self, cause: str) -> None:
        while True:
            entry = self.log.get(self.last_exec + 1)
            if entry is None or not entry.committed_local(
                    Q.primary(entry.preprepare.view, self.n) if entry.preprepare else 0,
                    self.need_prepares, self.quorum):
                return
            self._execute(entry, cause)

    def _execute(self, entry: Entry, cause: str) -> None:
        pp = entry.preprepare
        skip: list[int] = []
        replies: dict[str, list] = defaultdict(list)
        for i, r in enumerate(pp.batch):
            key = (r.client, r.timestamp)
            self.in_flight.discard(key)
            self.awaiting.pop(key, None)
            if self.clients.executed(*key):
                skip.append(i)
                result = self.clients.result(*key)
            else:
                result = {"seq": pp.seq, "index": i}
                if r.op["op"] == "get":  # the adapter answers with the value (pbft_tasks/reads.py)
                    result["read"] = r.op["key"]
                self.clients.record(r.client, r.timestamp, result)
                self._dirty_clients.add(r.client)
            if result is not None:
                replies[r.client].append({"timestamp": r.timestamp, "result": result})
        block = make_block(pp.seq, pp.view, pp.digest, self.head, pp.batch, skip)
        cert = tuple(sorted(entry.matching_commits(), key=lambda c: c.sender)[: self.quorum])
        self._executes.append(Execute(pp.seq, block, cert, cause))
        entry.executed = True
        self.waiting_since = None  # progress: the request timer restarts if still waiting
        self.vc_attempts = 0
        self.head = block["hash"]
        self.last_exec = pp.seq
        self.last_progress = self.now
        self._dirty_meta = True
        for client, results in replies.items():
            self._msg(SendClient(client, Reply(self.view, pp.seq, client, self.id, tuple(results)), cause))
        if pp.seq % self.cfg.checkpoint_interval == 0:
            self._take_checkpoint(pp.seq, cause)
        self._cut_partial(cause)  # a slot of the window just freed up

    # -- checkpoints and garbage collection (sec. 4.3) -------------------------------------
    def _take_checkpoint(self, seq: int, cause: str) -> None:
        self.own_checkpoints[seq] = self.head
        mine = Checkpoint(seq, self.head, self.id)
        self.checkpoints.setdefault(seq, {})[self.id] = mine
        self._dirty_ckpt.add(seq)
        self._msg(Broadcast(mine, cause))
        self._check_stable(seq, cause)

    def _on_checkpoint(self, ck: Checkpoint, cause: str) -> None:
        if ck.sender == self.id:
            return self._evidence(ck.sender, "replayed_own", "own checkpoint came back", cause)
        if ck.seq % self.cfg.checkpoint_interval:
            return self._evidence(ck.sender, "bad_checkpoint_seq", f"seq {ck.seq}", cause)
        if ck.seq <= self.h:
            stable = self.checkpoints.get(ck.seq, {})
            if (ck.seq == self.h and ck.sender in stable and self.id in stable
                    and self._may_help(ck.sender, ck.seq)):
                self._msg(Send(ck.sender, stable[self.id], cause))  # it missed stability
            return
        if ck.seq > self.h + 2 * self.cfg.log_window:
            old = self.far_checkpoints.get(ck.sender)
            if old is None or ck.seq > old.seq:  # bounded: the newest per sender
                self.far_checkpoints[ck.sender] = ck
            same = [c.sender for c in self.far_checkpoints.values()
                    if (c.seq, c.state_digest) == (ck.seq, ck.state_digest)]
            if len(same) >= Q.weak_quorum(self.n):
                self._need_state(ck.seq, same, cause)
            return
        votes = self.checkpoints.setdefault(ck.seq, {})
        old = votes.get(ck.sender)
        if old is not None:
            if old.state_digest != ck.state_digest:
                self._evidence(ck.sender, "equivocation", f"checkpoint {ck.seq}", cause)
            return
        votes[ck.sender] = ck
        self._dirty_ckpt.add(ck.seq)
        if ck.seq > self.last_exec:
            same = [c.sender for c in votes.values() if c.state_digest == ck.state_digest]
            if len(same) >= Q.weak_quorum(self.n):
                self._need_state(ck.seq, same, cause)
        self._check_stable(ck.seq, cause)

    def _check_stable(self, seq: int, cause: str) -> None:
        if seq <= self.h:
            return
        counts: dict[str, int] = defaultdict(int)
        for ck in self.checkpoints.get(seq, {}).values():
            counts[ck.state_digest] += 1
        digest = next((d for d, c in counts.items() if c >= self.quorum), None)
        if digest is None:
            return
        if self.last_exec < seq:
            self.behind_to = max(self.behind_to, seq)  # stable elsewhere: catch up first
            return
        if self.own_checkpoints.get(seq) != digest:
            self._evidence(self.id, "state_divergence",
                           f"2f+1 replicas agree on {digest[:12]} at {seq}, this replica has "
                           f"{self.own_checkpoints.get(seq, '?')[:12]}", cause)
            return
        self._advance_watermarks(seq, digest, cause)

    def _advance_watermarks(self, seq: int, digest: str, cause: str) -> None:
        self.h, self.stable_digest = seq, digest
        self._dirty_meta = True
        for s in [s for s in self.log if s <= seq]:
            del self.log[s]
            self._deleted.update((f"pp/{s}", f"votes/{s}"))
        self.helped = {k: t for k, t in self.helped.items() if k[1] >= seq}
        for s in [s for s in self.checkpoints if s < seq]:
            del self.checkpoints[s]
            self.own_checkpoints.pop(s, None)
            self._deleted.add(f"ckpt/{s}")
        held, self.held = self.held, []
        for m in held:  # the window moved: messages we held may now be in it
            self._handlers[type(m)](self, m, cause)
        if self.is_primary:
            self._propose(cause, force=False)

    def _hold(self, m: Any, cause: str) -> None:
        limit = 4 * self.cfg.log_window * self.n
        if m.seq > self.high + self.cfg.log_window or len(self.held) >= limit:
            self.seen_ahead = max(self.seen_ahead, m.seq)
            self._evidence(m.sender, "outside_watermarks", f"seq {m.seq} beyond {self.high}", cause)
        else:
            self.held.append(m)

    # -- retransmission -------------------------------------------------------------
    def _may_help(self, to: int, seq: int) -> bool:
        last = self.helped.get((to, seq))
        if last is not None and self.now - last < self.cfg.retransmit_ticks:
            return False
        self.helped[(to, seq)] = self.now
        return True

    def _help_behind(self, entry: Entry, to: int, cause: str) -> None:
        """``to`` retransmitted a message for a seq we executed: it may be stuck there."""
        if not entry.executed or not self._may_help(to, entry.seq):
            return
        pp = entry.preprepare
        if pp is not None and pp.sender == self.id:
            self._msg(Send(to, pp, cause))
        for votes in (entry.prepares, entry.commits):
            if self.id in votes:
                self._msg(Send(to, votes[self.id], cause))

    def _has_work(self) -> bool:
        return self.last_exec < max(self.log, default=0) or bool(self.pending)

    def _retransmit(self, cause: str) -> None:
        for seq in sorted(s for s in self.log if s > self.last_exec):
            e = self.log[seq]
            if e.preprepare is not None and e.preprepare.sender == self.id:
                self._msg(Broadcast(e.preprepare, cause))
            for votes in (e.prepares, e.commits):
                if self.id in votes:
                    self._msg(Broadcast(votes[self.id], cause))
        for seq, digest in sorted(self.own_checkpoints.items()):
            if seq > self.h:
                self._msg(Broadcast(Checkpoint(seq, digest, self.id), cause))

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

    # -- view change (sec. 4.4) ---------------------------------------------------------
    def _waiting(self) -> bool:
        return bool(self.awaiting) or any(e.preprepare is not None and not e.executed
                                          for s, e in self.log.items() if s > self.last_exec)

    def _view_change_timers(self, cause: str) -> None:
        timeout = self.cfg.view_change_ticks << min(self.vc_attempts, 16)
        if self.in_view_change:
            # Sec. 4.5.2: the timer for moving on to v+2 starts only once 2f+1 replicas
            # asked for v+1.  A replica that timed out alone (slow, or cut off) stays at
            # v+1 instead of climbing views nobody else will reach; it is back in the
            # normal case at the mesh's next view change (and keeps its ledger up to date
            # by state transfer meanwhile).
            if len(self.view_changes.get(self.view, {})) < self.quorum:
                return
            if self.vc_quorum_at is None:
                self.vc_quorum_at = self.now
            if self.now - self.vc_quorum_at >= timeout:  # no NEW-VIEW in time: next view
                self.vc_attempts += 1
                self._start_view_change(self.view + 1, f"{cause}: no NEW-VIEW for view {self.view}")
            return
        if not self._waiting():
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = self.now
        elif self.now - self.waiting_since >= timeout:
            self.vc_attempts += 1
            self._start_view_change(self.view + 1, f"{cause}: request timer expired in view {self.view}")

    def _own_view_change(self, new_view: int) -> ViewChange:
        proof = ()
        if self.h:
            proof = tuple(c for _, c in sorted(self.checkpoints.get(self.h, {}).items())
                          if c.state_digest == self.stable_digest)
        prepared = []
        for seq in sorted(s for s in self.log if s > self.h):
            cert = self._certificate(self.log[seq])
            if cert is not None and cert[0].view < new_view:
                prepared.append(cert)
        return ViewChange(new_view, self.h, proof, tuple(prepared), self.id)

    def _certificate(self, e: Entry | None) -> tuple | None:
        """The newest prepared certificate ``e`` holds, of its own view or an earlier one."""
        if e is None or e.preprepare is None:
            return e.prior if e is not None else None
        return e.certificate(Q.primary(e.preprepare.view, self.n), self.need_prepares)

    def _start_view_change(self, new_view: int, cause: str) -> None:
        self.view = new_view
        self.in_view_change = True
        self.vc_started_at = self.now
        self.vc_quorum_at: int | None = None
        self.waiting_since = None
        self._dirty_meta = True
        mine = self._own_view_change(new_view)
        self.view_changes.setdefault(new_view, {})[self.id] = mine
        self._msg(Broadcast(mine, cause))
        self._try_new_view(new_view, cause)

    def _on_view_change(self, vc: ViewChange, cause: str) -> None:
        if vc.sender == self.id:
            return self._evidence(vc.sender, "replayed_own", "own VIEW-CHANGE came back", cause)
        if vc.new_view < self.view or (vc.new_view == self.view and not self.in_view_change):
            return  # a view this replica has already left or installed
        reason = check_view_change(vc, self.n, self.cfg.log_window)
        if reason:
            return self._evidence(vc.sender, "bad_view_change", reason, cause)
        votes = self.view_changes.setdefault(vc.new_view, {})
        if vc.sender in votes:
            return
        votes[vc.sender] = vc
        # sec. 4.5.2: f+1 replicas want a higher view, so at least one honest one does
        higher = {s for v, vs in self.view_changes.items() if v > self.view for s in vs}
        if len(higher) >= Q.weak_quorum(self.n):
            target = min(v for v, vs in self.view_changes.items() if v > self.view and vs)
            self._start_view_change(target, cause)
        self._try_new_view(vc.new_view, cause)

    def _try_new_view(self, view: int, cause: str) -> None:
        if not (self.in_view_change and view == self.view and Q.primary(view, self.n) == self.id):
            return
        votes = self.view_changes.get(view, {})
        if len(votes) < self.quorum:
            return
        chosen = tuple(vc for _, vc in sorted(votes.items())[: self.quorum])
        min_s, pps = new_view_preprepares(view, chosen, self.n)
        self._msg(Broadcast(NewView(view, chosen, pps, self.id), cause))
        self._enter_view(view, pps, min_s, cause)

    def _on_new_view(self, nv: NewView, cause: str) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.in_view_change):
            return
        reason = check_new_view(nv, self.n, self.cfg.log_window)
        if reason:
            return self._evidence(nv.sender, "bad_new_view", reason, cause)
        min_s, _ = new_view_preprepares(nv.view, nv.view_changes, self.n)
        self._enter_view(nv.view, nv.preprepares, min_s, cause)

    def _enter_view(self, view: int, pps: tuple, min_s: int, cause: str) -> None:
        self.view = view
        self.in_view_change = False
        self._dirty_meta = True
        self.view_changes = {v: vs for v, vs in self.view_changes.items() if v > view}
        if min_s > self.last_exec:  # the new view starts past us: fetch what we lack
            peers = [s for s in range(self.n) if s != self.id]
            self._need_state(min_s, peers, cause)
        top = max((pp.seq for pp in pps), default=min_s)
        for seq in [s for s in self.log if s > max(top, self.last_exec)]:
            del self.log[seq]  # never prepared by a quorum: clients retransmit
            self._deleted.update((f"pp/{seq}", f"votes/{seq}"))
        primary = Q.primary(view, self.n)
        for pp in pps:
            if pp.seq <= self.h or pp.seq > self.high:
                continue
            entry = Entry(pp.seq)
            entry.prior = self._certificate(self.log.get(pp.seq))  # sec. 4.4: never lost
            entry.executed = pp.seq <= self.last_exec
            entry.preprepare = pp
            self.log[pp.seq] = entry
            self._dirty_pp.add(pp.seq)
            self._dirty_votes.add(pp.seq)
            if self.id != primary:
                mine = Prepare(view, pp.seq, pp.digest, self.id)
                entry.prepares[self.id] = mine
                self._msg(Broadcast(mine, cause))
        if self.id == primary:
            self.next_seq = max(top, self.last_exec, self.h) + 1
            proposed = {(r.client, r.timestamp) for pp in pps for r in pp.batch}
            self.pending = [r for k, r in self.awaiting.items()
                            if k not in proposed and not self.clients.executed(*k)]
            self.in_flight = proposed | set(self.awaiting)
            self.pending_since = self.now if self.pending else None
        self.waiting_since = None
        held, self.held_view = self.held_view, []
        for m in held:
            if m.view == view:
                self._handlers[type(m)](self, m, cause)
        for seq in sorted(self.log):
            if seq > self.last_exec:
                self._check(self.log[seq], cause)
        if self.id == primary:
            self._cut_partial(cause)

    _handlers = {
        Request: _on_request,
        PrePrepare: _on_preprepare,
        Prepare: _on_prepare,
        Commit: _on_commit,
        Checkpoint: _on_checkpoint,
        ViewChange: _on_view_change,
        NewView: _on_new_view,
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
    return kind
