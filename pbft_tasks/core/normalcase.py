"""Normal-case operation of the replica: requests, batching, pre-prepare, prepare,
commit and in-order execution (Castro and Liskov 1999, sec. 4.2; batching sec. 5.1).

Owns: ``NormalCase``, a mixin of ``Replica`` (replica.py).  It reads and writes the
replica state that ``Replica.__init__`` creates and documents (``view``, ``log``,
``last_exec``, ``head``, ``next_seq``, ``clients``, ``pending``, ``in_flight``,
``pending_since``, ``awaiting``, ...), and reports through ``Replica``'s output
helpers (``_msg``, ``_evidence``, the ``_dirty_*`` sets).

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
  well below the 4 MiB a backup accepts: a batch over it was refused by every backup and
  each new primary repeated it, finding 4 of issue 10); a request that alone is over
  ``max_batch_bytes`` is refused on arrival (``request_too_large``).  It
  cuts a partial batch once the oldest waiting request has waited
  ``batch_timeout_ticks`` ticks *and* fewer than ``pipeline`` of its batches are in
  flight (proposed, not yet executed).  Under load requests pile up behind the window
  and batches grow; at low load a request waits at most the timeout (with timeout 0 it
  is proposed on arrival when the window has room).  pipeline=0 turns the window off
  (cut on the timeout alone).
- A request this replica knows of (received, or in a pre-prepare it accepted) and has
  not executed is ``awaiting``: that is the request timer of the view change
  (viewchange.py, sec. 4.4); executing a batch resets the timer.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import quorum as Q
from .actions import Broadcast, Execute, Send, SendClient
from .chain import make_block
from .log import Entry
from .messages import (MAX_BATCH, Commit, PrePrepare, Prepare, Reply, Request, batch_digest,
                       request_bytes, request_digest)


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
        if len(self.awaiting) < 4 * MAX_BATCH:
            self.awaiting.setdefault(key, req)  # the request timer of sec. 4.4
        if self.in_view_change:
            return  # the new primary proposes what is awaited once the view is installed
        if not self.is_primary:
            self._msg(Send(self.primary, req, cause))
            return
        if key in self.in_flight:
            return
        size = request_bytes(req)
        if size > self.cfg.max_batch_bytes:
            self.awaiting.pop(key, None)
            return self._evidence(None, "request_too_large",
                                  f"request {req.client}/{req.timestamp} alone is over "
                                  f"max_batch_bytes ({self.cfg.max_batch_bytes})", cause)
        self.pending_bytes[key] = size
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

    def _batch_size(self) -> int:
        """How many pending requests the next batch takes: at most ``max_batch``, and
        no more than fit in ``max_batch_bytes`` (at least one; a single request over it
        was refused on arrival)."""
        total, count, limit = 0, 0, self.cfg.max_batch_bytes
        sizes = self.pending_bytes
        for r in self.pending[: self.cfg.max_batch]:
            size = sizes.get((r.client, r.timestamp))
            if size is None:  # pending again after a view change
                size = sizes[(r.client, r.timestamp)] = request_bytes(r)
            total += size
            if count and total > limit:
                break
            count += 1
        return count

    def _propose(self, cause: str, force: bool, limit: int | None = None) -> None:
        while self.pending and self.next_seq <= self.high:
            size = self._batch_size()
            if size == len(self.pending) < self.cfg.max_batch and not force:
                break  # neither full by count nor by bytes
            if limit is not None:
                if limit == 0:
                    break
                limit -= 1
            batch, self.pending = tuple(self.pending[:size]), self.pending[size:]
            for r in batch:
                self.pending_bytes.pop((r.client, r.timestamp), None)
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
        self._heard()
        for r in pp.batch:
            self.in_flight.add((r.client, r.timestamp))
        if self.id != pp.sender:
            mine = Prepare(pp.view, pp.seq, pp.digest, self.id)
            entry.prepares[self.id] = mine
            self._dirty_votes.add(pp.seq)
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
        if m.seq > self.last_exec:
            self._heard()
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
            self._send_vote(mine, cause)
        self._collect(entry, cause)  # collector mode: certificates (collector.py)
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
                # the result names its request: a request reusing a timestamp with
                # another operation must not be answered with this one's result
                result = {"seq": pp.seq, "index": i, "request": request_digest(r)}
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
        self.head = block["hash"]
        self.last_exec = pp.seq
        self.last_progress = self.now
        self._observe_progress()
        self._dirty_meta = True
        for client, results in replies.items():
            self._msg(SendClient(client, Reply(self.view, pp.seq, client, self.id, tuple(results)), cause))
        if pp.seq % self.cfg.checkpoint_interval == 0:
            self._take_checkpoint(pp.seq, cause)
        self._cut_partial(cause)  # a slot of the window just freed up
