"""Normal-case operation of the replica: requests, batching, pre-prepare, prepare,
commit and in-order execution (Castro and Liskov 1999, sec. 4.2; batching sec. 5.1).

Owns: ``Batcher``, the batching state (``pending``, ``pending_bytes``, ``in_flight``,
``pending_since`` and the persisted ``next_seq``), changed only by its own methods; and
``NormalCase``, a mixin of ``Replica`` (replica.py) with the step functions.  The mixin
changes the replica's own ``last_exec``, ``head`` and ``awaiting``, reads the owners
and calls their methods: it cuts batches through ``Batcher``, fills in log entries
through the ``Log`` (log.py) the ``Window`` holds (checkpoints.py), tells the
view-change state (viewchange.py) and the catch-up state (catchup.py) that progress was
made, and reports through ``Replica``'s output helpers (``_msg``, ``_evidence``).  What
a step must persist is derived from what it changed (replica.py ``_finish``).

Rules, each tested in tests/core/test_paper.py under the rule's name:
- A backup accepts a pre-prepare only if it is signed by the primary of its view, the
  view is the replica's current view, h < seq <= h + L, the digest is the batch's
  digest, and it has not accepted another digest for (view, seq).  Messages beyond the
  window are held and those at or below h dropped (``_admit``; the window itself is
  checkpoints.py's).
- prepared = pre-prepare + 2f matching prepares from backups; the replica then
  multicasts a commit.  committed-local = prepared + 2f+1 matching commits.
- Execution is strictly in sequence order; every seq yields one block.
- Own votes go out through ``_send_vote``: to every replica, or in collector mode to
  the collector, which sends certificates (collector.py).
- Requests are deduplicated by (client, timestamp) at execution, deterministically, via
  the client table; the primary also refuses to propose a request twice.
- Batching (sec. 5.1): the primary cuts a batch when ``max_batch`` requests wait, or
  when the waiting requests fill ``max_batch_bytes`` (their canonical wire form; 1 MiB,
  well below the 4 MiB a backup accepts: a batch over it would be refused by every
  backup and each new primary would repeat it); a request that alone is over
  ``max_batch_bytes`` is refused on arrival (``request_too_large``).  It
  cuts a partial batch once the oldest waiting request has waited
  ``batch_timeout_ticks`` ticks *and* fewer than ``pipeline`` of its batches are in
  flight (proposed, not yet executed).  Full batches respect the same window: proposing
  the eight full batches of a 2,000-request flood at once would make every backup
  verify all their requests before the first commit could form, and at n = 10 on two
  cores the first execution would come after the 1 s request timer (a view change,
  then more, each new primary as flooded as the last).  With the window the flood
  waits at the primary, where no backup's timer runs, and each execution lets the next
  batch go (``_cut_partial``).  Under load requests pile up behind the window and
  batches grow to ``max_batch``; at low load a request waits at most the timeout (with
  timeout 0 it is proposed on arrival when the window has room).  pipeline=0 turns the
  window off (cut on the timeout alone, full batches at once).
- A backup relays a request to the primary (sec. 4.1) the first time it hears of it,
  not at every retransmission: the client re-sends to every replica, the primary
  included, so a second relay adds nothing, and under overload the relays were the
  flood (3 backups x 2,000 outstanding requests, one task run each, in the primary's
  queue ahead of the votes, at every retransmission round of the client).
- A request this replica knows of (received, or in a pre-prepare it accepted) and has
  not executed is ``awaiting``: that is the request timer of the view change
  (viewchange.py, sec. 4.4); executing a batch resets the timer, and so does the next
  seq to execute becoming prepared here (2f prepares matching the primary's
  pre-prepare: from then on the quorum, not the primary, completes it).  Once per seq,
  so a faulty primary gains at most one timeout per seq; on two cores at n = 10 a
  batch's three phases under load took about the whole 1 s timer, and the backups
  voted a working primary out in the middle of its commit phase.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from . import quorum as Q
from .actions import Broadcast, Execute, Send, SendClient
from .chain import make_block
from .log import Entry
from .messages import (MAX_BATCH, Commit, PrePrepare, Prepare, Reply, Request, batch_digest,
                       request_bytes, request_digest)


class Batcher:
    """The primary's batching (sec. 5.1): requests waiting for a batch, what is proposed
    and not yet executed, and the next sequence number to assign.  ``next_seq`` is
    persisted (meta record); the rest is volatile (clients retransmit)."""

    __slots__ = ("next_seq", "pending", "pending_bytes", "in_flight", "pending_since")

    def __init__(self) -> None:
        self.next_seq = 1               # primary: next sequence number to assign
        self.pending: list[Request] = []
        self.pending_bytes: dict[tuple[str, int], int] = {}  # request_bytes of pending ones
        self.in_flight: set[tuple[str, int]] = set()  # pending or proposed, not executed
        self.pending_since: int | None = None

    def add(self, req: Request, size: int, now: int) -> None:
        """``req`` (of ``size`` wire bytes) waits for a batch."""
        key = (req.client, req.timestamp)
        self.pending_bytes[key] = size
        self.in_flight.add(key)
        self.pending.append(req)
        if self.pending_since is None:
            self.pending_since = now

    def proposed(self, batch: tuple) -> None:
        """A pre-prepare for ``batch`` was accepted: the primary must not propose it again."""
        for r in batch:
            self.in_flight.add((r.client, r.timestamp))

    def executed(self, key: tuple[str, int]) -> None:
        self.in_flight.discard(key)

    def refuse(self, admitted: Callable[[Request], bool]) -> list[Request]:
        """Drop the pending requests ``admitted`` says no to (a client not in the
        membership configuration in force at the next seq); return them."""
        dropped = [r for r in self.pending if not admitted(r)]
        if dropped:
            self.pending = [r for r in self.pending if admitted(r)]
            for r in dropped:
                key = (r.client, r.timestamp)
                self.pending_bytes.pop(key, None)
                self.in_flight.discard(key)
        return dropped

    def batch_size(self, max_batch: int, max_batch_bytes: int) -> int:
        """How many pending requests the next batch takes: at most ``max_batch``, and
        no more than fit in ``max_batch_bytes`` (at least one; a single request over it
        was refused on arrival)."""
        total, count = 0, 0
        sizes = self.pending_bytes
        for r in self.pending[:max_batch]:
            size = sizes.get((r.client, r.timestamp))
            if size is None:  # pending again after a view change
                size = sizes[(r.client, r.timestamp)] = request_bytes(r)
            total += size
            if count and total > max_batch_bytes:
                break
            count += 1
        return count

    def cut(self, size: int) -> tuple[tuple, int]:
        """The next ``size`` pending requests as a batch, and the seq assigned to it."""
        batch, self.pending = tuple(self.pending[:size]), self.pending[size:]
        for r in batch:
            self.pending_bytes.pop((r.client, r.timestamp), None)
        seq = self.next_seq
        self.next_seq += 1
        return batch, seq

    def settle(self, now: int) -> None:
        """After cutting: the oldest waiting request now waits from ``now``."""
        self.pending_since = now if self.pending else None

    def enter_view(self) -> None:
        self.pending_bytes = {}  # recomputed as the new view's batches are cut

    def lead_view(self, next_seq: int, pending: list, in_flight: set, now: int) -> None:
        """As the new view's primary: what to propose after the NEW-VIEW's batches."""
        self.next_seq = next_seq
        self.pending = pending
        self.in_flight = in_flight
        self.settle(now)

    def restore(self, next_seq: int) -> None:
        self.next_seq = next_seq


class NormalCase:
    """Requests, batching, the three-phase protocol and execution (sec. 4.2, 5.1)."""

    # -- requests and batching (sec. 4.2, 5.1) ------------------------------------------
    def _on_request(self, req: Request, cause: str) -> None:
        key = (req.client, req.timestamp)
        if self.clients.executed(*key):
            result = self.clients.result(*key)
            if result is not None:  # retransmission: answer again, never re-execute
                self._msg(SendClient(req.client, Reply(self.view, result["seq"], req.client, self.id,
                          ({"timestamp": req.timestamp, "result": result},)), cause))
            return
        if self.admits is not None and not self.admits(req.client, self.last_exec + 1):
            return  # not a member here (the adapter counts it when it checks the key)
        fresh = key not in self.awaiting
        if fresh and len(self.awaiting) < 4 * MAX_BATCH:
            self.awaiting[key] = req  # the request timer of sec. 4.4
        if self.vc.in_view_change:
            return  # the new primary proposes what is awaited once the view is installed
        if not self.is_primary:
            if fresh:  # relayed once: a client's retransmission reaches the primary itself
                self._msg(Send(self.primary, req, cause))
            return
        batcher = self.batcher
        if key in batcher.in_flight:
            return
        size = request_bytes(req)
        if size > self.cfg.max_batch_bytes:
            self.awaiting.pop(key, None)
            return self._evidence(None, "request_too_large",
                                  f"request {req.client}/{req.timestamp} alone is over "
                                  f"max_batch_bytes ({self.cfg.max_batch_bytes})", cause)
        batcher.add(req, size, self.now)
        if len(batcher.pending) >= self.cfg.max_batch:
            self._propose(cause, force=False, limit=self._room())
        elif self.cfg.batch_timeout_ticks == 0:
            self._cut_partial(cause)  # no timeout: propose now if the window has room

    def _room(self) -> int | None:
        """How many more batches the primary may propose now: ``pipeline`` less those in
        flight (proposed, not yet executed); None when pipeline is 0 (no window)."""
        if self.cfg.pipeline == 0:
            return None
        return max(0, self.cfg.pipeline - (self.batcher.next_seq - 1 - self.last_exec))

    def _cut_partial(self, cause: str) -> None:
        b = self.batcher
        if not (self.is_primary and b.pending and not self.vc.in_view_change
                and self.now - b.pending_since >= self.cfg.batch_timeout_ticks):
            return
        room = self._room()
        if room is None or room > 0:
            self._propose(cause, force=True, limit=None if room is None else 1)

    def _refuse_not_admitted(self, seq: int) -> None:
        """Membership (core/config.py): forget requests of clients the configuration in
        force at ``seq`` does not admit, so a primary never proposes one there (backups
        would refuse the whole pre-prepare) and no replica's request timer waits for one."""
        if self.admits is None:
            return
        for r in self.batcher.refuse(lambda r: self.admits(r.client, seq)):
            self.awaiting.pop((r.client, r.timestamp), None)
        for key in [k for k, r in self.awaiting.items() if not self.admits(r.client, seq)]:
            del self.awaiting[key]

    def _propose(self, cause: str, force: bool, limit: int | None = None) -> None:
        b, w = self.batcher, self.window
        while b.pending and b.next_seq <= w.high:
            if self.admits is not None:  # each batch against the membership at its seq
                for r in b.refuse(lambda r: self.admits(r.client, b.next_seq)):
                    self.awaiting.pop((r.client, r.timestamp), None)
                if not b.pending:
                    break
            size = b.batch_size(self.cfg.max_batch, self.cfg.max_batch_bytes)
            if size == len(b.pending) < self.cfg.max_batch and not force:
                break  # neither full by count nor by bytes
            if limit is not None:
                if limit == 0:
                    break
                limit -= 1
            batch, seq = b.cut(size)
            pp = PrePrepare(self.view, seq, batch_digest(batch), batch, self.id)
            entry = w.log.set_preprepare(seq, pp)
            self._msg(Broadcast(pp, cause))
            self._check(entry, cause)
        b.settle(self.now)

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
        entry = self.window.entry(pp.seq)
        if entry.preprepare is not None:
            if entry.preprepare.digest != pp.digest:
                self._evidence(pp.sender, "conflicting_preprepare",
                               f"view {pp.view} seq {pp.seq}: second digest {pp.digest[:12]}", cause)
            else:
                self._help_behind(entry, pp.sender, cause)
            return
        self.window.log.set_preprepare(pp.seq, pp)
        self.catchup.heard(self.now)
        self.batcher.proposed(pp.batch)
        if self.id != pp.sender:
            mine = Prepare(pp.view, pp.seq, pp.digest, self.id)
            self.window.log.add_vote(mine)
            self._send_vote(mine, cause)
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
        if m.view == self.view and self.vc.in_view_change:
            self.vc.hold(m, 4 * self.cfg.log_window * self.n)  # until the NEW-VIEW
            return False
        if m.view != self.view:
            self._evidence(m.sender, "wrong_view", f"view {m.view}, current view {self.view}", cause)
            return False
        if m.seq <= self.window.h:
            return False  # already garbage-collected: a late or repeated message
        if m.seq > self.window.high:
            self._hold(m, cause)
            return False
        return True

    def _vote(self, m: Prepare | Commit, kind: str, cause: str) -> None:
        entry = self.window.entry(m.seq)
        old = self.window.log.add_vote(m)
        if old is not None:
            if old.digest != m.digest:
                self._evidence(m.sender, "equivocation",
                               f"{type(m).__name__} seq {m.seq}: digests {old.digest[:12]} and {m.digest[:12]}", cause)
            else:
                self._help_behind(entry, m.sender, cause)
            return
        if m.seq > self.last_exec:
            self.catchup.heard(self.now)
        # Not durable on its own (log.py): a vote short of a quorum commits this replica
        # to nothing, and if a crash loses it, peers send it again (resume / help-behind).
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
            self.window.log.add_vote(mine)
            self._send_vote(mine, cause)
            if pp.seq == self.last_exec + 1:
                # the next seq to execute prepared: a quorum is moving it, the primary's
                # part is done (the request timer restarts, once per seq at most)
                self.vc.progress()
        self._collect(entry, cause)  # collector mode: certificates (collector.py)
        if entry.seq == self.last_exec + 1:
            self._execute_ready(cause)

    def _execute_ready(self, cause: str) -> None:
        while True:
            entry = self.window.log.get(self.last_exec + 1)
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
            self.batcher.executed(key)
            self.awaiting.pop(key, None)
            if self.clients.executed(*key):
                skip.append(i)
                result = self.clients.result(*key)
            else:
                # the result names its request: a request reusing a timestamp with
                # another operation must not be answered with this one's result
                result = {"seq": pp.seq, "index": i, "request": request_digest(r)}
                if r.op["op"] in ("get", "config"):
                    # the adapter answers with what the ledger's execution returned
                    # (pbft_tasks/reads.py): a get's value, a config change's outcome
                    result["read"] = r.op["key"]
                self.clients.record(r.client, r.timestamp, result)
            if result is not None:
                replies[r.client].append({"timestamp": r.timestamp, "result": result})
        block = make_block(pp.seq, pp.view, pp.digest, self.head, pp.batch, skip)
        cert = tuple(sorted(entry.matching_commits(), key=lambda c: c.sender)[: self.quorum])
        self._executes.append(Execute(pp.seq, block, cert, cause))
        self.window.log.executed(pp.seq)
        self.vc.progress()  # the request timer restarts if still waiting
        self.head = block["hash"]
        self.last_exec = pp.seq
        self.catchup.progress(self.now)
        for client, results in replies.items():
            self._msg(SendClient(client, Reply(self.view, pp.seq, client, self.id, tuple(results)), cause))
        if pp.seq % self.cfg.checkpoint_interval == 0:
            self._take_checkpoint(pp.seq, cause)
            self._refuse_not_admitted(pp.seq + 1)  # a membership boundary may start here
        self._cut_partial(cause)  # a slot of the window just freed up
