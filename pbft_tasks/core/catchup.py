"""Catching up: retransmission to a replica that is behind, state transfer, and the
stuck check (Castro and Liskov 1999, sec. 4.3: a replica that learns it is behind
fetches the state it lacks; the paper assumes messages are retransmitted until
received, sec. 3, and leaves how to the implementation).

Owns: ``CatchUp``, a mixin of ``Replica`` (replica.py).  It reads and writes the
replica state that ``Replica.__init__`` creates and documents (``helped``,
``behind_to``, ``fetch_asked_at``, ``fetch_peers``, ``seen_ahead``, ``last_progress``,
``quiet_since``, ``progress_ticks``,
``log``, ``own_checkpoints``).  The entry points that drive it stay on ``Replica``:
``tick`` (retransmission, stuck check), ``install`` (one fetched block, checked here by
``_check_install``) and ``request_state``.

Rules, each tested in tests/core/test_paper.py or tests/core/test_state_transfer.py:
- Retransmission waits for silence: a replica with work (a logged seq not yet
  executed, or requests pending) that made no progress for the retransmission timeout
  re-broadcasts its own pre-prepares and votes *of the current view* for every seq it
  has not executed (none in a view change: there its VIEW-CHANGE is re-sent,
  viewchange.py), and its own checkpoints above h.  Silence is measured from the last sign of progress
  (``quiet_since``): an execution, a new pre-prepare or a new vote for an unexecuted
  seq; time without work is not silence either (``quiet_since`` follows the clock while
  idle), so a message is never re-sent just because the replica was idle before
  sending it (at low load every PRE-PREPARE went out twice, ~10 ms apart, issue 10),
  nor while a loaded mesh is busy with it.  The timeout adapts to what progress takes
  here: 4 x a moving average of the silences that ended in an execution, at least
  ``retransmit_ticks`` / 4 (250 ms by default: on a loaded 2-core machine a 100 ms
  floor re-sent votes during scheduling pauses) and at most ``retransmit_ticks``.
- Retransmission to a replica that is behind: a replica that has executed seq n and
  receives a *duplicate* vote or pre-prepare for n (the sender is retransmitting, so it
  may be stuck there) sends that sender its own pre-prepare, prepare and commit for n; a
  duplicate CHECKPOINT for the stable checkpoint is answered with our own
  (checkpoints.py).  Two replicas that both executed n would answer each other's
  answers forever, so each peer is helped at most once per (seq, ``retransmit_ticks``).
- State transfer: f+1 matching CHECKPOINTs for a seq this replica has not executed (at
  least one from an honest replica) make it ask for the missing blocks (``FetchState``,
  at most once per ``retransmit_ticks``).  So does being stuck: no progress for
  ``retransmit_ticks`` while f+1 replicas committed a seq it cannot execute (it lost the
  pre-prepare), or while f+1 senders sent messages beyond its window (the f+1-th highest
  of their seqs is the target: one faulty sender's far seq is evidence, not a target).  So does a NEW-VIEW
  whose min-s is past this replica (viewchange.py).
- ``install`` takes one committed block: it must extend this replica's chain, carry
  2f+1 matching commits for its batch, and hash to what this replica computes for it
  (skip list included) before anything changes; then it executes through the same path
  as a normal commit.  The adapter checks the signatures first.
"""
from __future__ import annotations

from . import quorum as Q
from .actions import Broadcast, FetchState, Send
from .chain import block_hash, block_header
from .log import Entry
from .messages import (Checkpoint, Commit, MalformedMessage, PrePrepare, Request, batch_digest,
                       from_wire)

# A fetched block's fields and their JSON types (core/chain.py make_block, plus the
# certificate the adapter adds).
BLOCK_FIELDS = {"seq": int, "view": int, "digest": str, "prev": str, "skip": list,
                "hash": str, "requests": list, "certificate": list}


def block_shape(block: object) -> str | None:
    """What is wrong with the shape of a block from a peer, or None."""
    if type(block) is not dict:
        return "not an object"
    for name, kind in BLOCK_FIELDS.items():
        if type(block.get(name)) is not kind:
            return f"{name} must be a {kind.__name__}"
    if any(type(i) is not int for i in block["skip"]):
        return "skip must list integers"
    return None

class CatchUp:
    """Retransmission, help for a peer that is behind, state transfer, stuck check."""

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
        self._resend_certificates(entry, to, cause)  # collector mode (collector.py)

    def _retransmit_timeout(self) -> int:
        hi = self.cfg.retransmit_ticks
        return int(min(hi, max(hi // 4, 1, 4 * self.progress_ticks)))

    def _retransmit_if_silent(self, cause: str) -> None:
        if not self._has_work():
            self.quiet_since = self.now  # idle is not silence
        elif self.now - self.quiet_since >= self._retransmit_timeout():
            self.quiet_since = self.now
            self._retransmit(cause)

    def _observe_progress(self) -> None:
        """An execution: fold how long it took into the average, restart the silence."""
        sample = max(0, self.now - self.quiet_since)
        self.progress_ticks += (sample - self.progress_ticks) / 8
        self.quiet_since = self.now

    def _heard(self) -> None:
        """A new pre-prepare or vote for a seq not yet executed: the mesh is working on
        it, so this is not silence.  (A faulty sender can add at most one of each per
        seq in the window, so it cannot hold retransmission off for long.)"""
        self.quiet_since = self.now

    def _has_work(self) -> bool:
        return self.last_exec < max(self.log, default=0) or bool(self.pending)

    def _retransmit(self, cause: str) -> None:
        """Own messages for what is not executed yet, of the current view only: in a view
        change the VIEW-CHANGE is what goes out again (viewchange.py), and a vote of an
        earlier view is dropped by every replica that moved on (``wrong_view``).  Under
        load such copies were most of a cascade of view changes: every replica re-sent
        its old-view votes to every other on each silence, and the queues filled with
        messages nobody could use ahead of the VIEW-CHANGEs and NEW-VIEWs."""
        if not self.in_view_change:
            for seq in sorted(s for s in self.log if s > self.last_exec):
                e = self.log[seq]
                if e.preprepare is not None and e.preprepare.sender == self.id \
                        and e.preprepare.view == self.view:
                    self._msg(Broadcast(e.preprepare, cause))
                for votes in (e.prepares, e.commits):
                    mine = votes.get(self.id)
                    if mine is not None and mine.view == self.view:
                        self._send_vote(mine, cause)
                self._resend_certificates(e, None, cause)  # collector mode (collector.py)
        for seq, digest in sorted(self.own_checkpoints.items()):
            if seq > self.h:
                self._msg(Broadcast(Checkpoint(seq, digest, self.id), cause))

    # -- state transfer ----------------------------------------------------------------
    def _check_install(self, block: dict) -> tuple[str | None, Entry | None]:
        """Why a fetched block cannot be installed, or its log entry.  Its shape is
        checked first, field by field, so that what follows cannot raise on a peer's
        block: an exception past that point is our own bug, never evidence."""
        shape = block_shape(block)
        if shape:
            return f"malformed block: {shape}", None
        seq, view, digest = block["seq"], block["view"], block["digest"]
        if seq != self.last_exec + 1 or block["prev"] != self.head:
            return f"block {seq} does not extend this chain at {self.last_exec}", None
        try:
            batch = tuple(from_wire(w) for w in block["requests"])
            cert = [from_wire(w) for w in block["certificate"]]
        except MalformedMessage as exc:
            return f"malformed block {seq}: {exc}", None
        if any(not isinstance(r, Request) for r in batch) or batch_digest(batch) != digest:
            return f"block {seq}: requests do not match the digest", None
        senders = {c.sender for c in cert if isinstance(c, Commit) and c.view == view
                   and c.seq == seq and c.digest == digest and 0 <= c.sender < self.n}
        if len(senders) < self.quorum:
            return f"block {seq}: fewer than 2f+1 matching commits", None
        skip = self.clients.skip_list(batch)  # what _execute would skip
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
        ahead = self._seen_ahead_by_f1()
        for seq, e in self.log.items():
            if seq > self.last_exec and e.preprepare is None:
                voters = {c.sender for c in e.commits.values()}
                if len(voters) >= Q.weak_quorum(self.n):  # an honest replica committed it
                    ahead = max(ahead, seq)
        if ahead > self.last_exec:
            self._need_state(ahead, [s for s in range(self.n) if s != self.id], f"{cause}: stuck")

    def _seen_ahead_by_f1(self) -> int:
        """The highest seq beyond the window that f+1 senders (one of them honest) sent
        messages for: one faulty node's seq 2^62 is evidence, never a target (issue 10,
        finding 5).  Entries this replica has reached are forgotten."""
        self.seen_ahead = {s: seq for s, seq in self.seen_ahead.items() if seq > self.last_exec}
        tops = sorted(self.seen_ahead.values(), reverse=True)
        need = Q.weak_quorum(self.n)
        return tops[need - 1] if len(tops) >= need else 0

    def _need_state(self, seq: int, peers: list[int], cause: str) -> None:
        self.fetch_peers = tuple(sorted(peers)) or self.fetch_peers
        self.behind_to = max(self.behind_to, seq)
        if (self.fetch_asked_at is not None
                and self.now - self.fetch_asked_at < self.cfg.retransmit_ticks):
            return
        self.fetch_asked_at = self.now
        self._msg(FetchState(self.last_exec + 1, self.behind_to, self.fetch_peers, cause))
