"""Catching up: retransmission to a replica that is behind, state transfer, and the
stuck check (Castro and Liskov 1999, sec. 4.3: a replica that learns it is behind
fetches the state it lacks; the paper assumes messages are retransmitted until
received, sec. 3, and leaves how to the implementation).

Owns: ``CatchUpState`` (``quiet_since``, ``progress_ticks``, ``last_progress``,
``behind_to``, ``helped``, ``fetch_asked_at``, ``seen_ahead``, ``fetch_peers``), changed
only by its own methods; and ``CatchUp``, a mixin of ``Replica`` (replica.py) with the
step functions, which reads the log and own checkpoints of the ``Window``
(checkpoints.py), and the handlers of the state-transfer stimuli (stimuli.py):
``Install`` (one fetched block, checked by ``_check_install``) and ``FetchDone``.  The
``Tick`` handler on ``Replica`` drives retransmission and the stuck check.

Rules, each tested in tests/core/test_paper.py or tests/core/test_state_transfer.py:
- Retransmission waits for silence: a replica with work (a logged seq not yet
  executed, or requests pending) that made no progress for the retransmission timeout
  re-broadcasts its own pre-prepares and votes *of the current view* for every seq it
  has not executed (none in a view change: there its VIEW-CHANGE is re-sent,
  viewchange.py), and its own checkpoints above h.  Silence is measured from the last sign of progress
  (``quiet_since``): an execution, a new pre-prepare or a new vote for an unexecuted
  seq; time without work is not silence either (``quiet_since`` follows the clock while
  idle), so a message is never re-sent just because the replica was idle before
  sending it (otherwise, at low load, every PRE-PREPARE would go out twice, ~10 ms apart),
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
- ``Install`` takes one committed block: it must extend this replica's chain, carry
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
from .stimuli import FetchDone, Install

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

class CatchUpState:
    """What catching up needs to remember: the silence before retransmission, the stuck
    check's period, how far behind this replica knows it is, whom it helped and when,
    and its state-transfer request.  All volatile: a restarted replica starts afresh."""

    __slots__ = ("quiet_since", "progress_ticks", "last_progress", "behind_to", "helped",
                 "fetch_asked_at", "seen_ahead", "fetch_peers")

    def __init__(self, node_id: int, n: int, retransmit_ticks: int):
        # Retransmission waits for silence: the tick since which this replica has had
        # work and seen no progress, and what progress usually takes (a moving average
        # of ticks, started at a quarter of retransmit_ticks).
        self.quiet_since = 0
        self.progress_ticks = retransmit_ticks / 4
        self.last_progress = 0          # the last execution, or the stuck check's period
        self.behind_to = 0              # a stable checkpoint we have not reached yet
        self.helped: dict[tuple[int, int], int] = {}   # (peer, seq) -> tick we last helped
        self.fetch_asked_at: int | None = None
        # Per sender, the highest seq of its messages dropped beyond the window: evidence,
        # and a state-transfer target only as far as f+1 senders agree.
        self.seen_ahead: dict[int, int] = {}
        self.fetch_peers: tuple = tuple(i for i in range(n) if i != node_id)

    # -- retransmission ----------------------------------------------------------------
    def may_help(self, to: int, seq: int, now: int, period: int) -> bool:
        """True (and remembered) unless ``to`` was helped at ``seq`` within ``period``."""
        last = self.helped.get((to, seq))
        if last is not None and now - last < period:
            return False
        self.helped[(to, seq)] = now
        return True

    def forget_helped_below(self, seq: int) -> None:
        """The window moved to ``seq``: help below it is garbage."""
        self.helped = {k: t for k, t in self.helped.items() if k[1] >= seq}

    def retransmit_timeout(self, hi: int) -> int:
        return int(min(hi, max(hi // 4, 1, 4 * self.progress_ticks)))

    def silent(self, now: int, has_work: bool, hi: int) -> bool:
        """A tick: True when this replica has had work and no progress for the
        retransmission timeout (and the silence starts again)."""
        if not has_work:
            self.quiet_since = now  # idle is not silence
        elif now - self.quiet_since >= self.retransmit_timeout(hi):
            self.quiet_since = now
            return True
        return False

    def progress(self, now: int) -> None:
        """An execution: fold how long it took into the average, restart the silence
        and the stuck check."""
        self.last_progress = now
        sample = max(0, now - self.quiet_since)
        self.progress_ticks += (sample - self.progress_ticks) / 8
        self.quiet_since = now

    def heard(self, now: int) -> None:
        """A new pre-prepare or vote for a seq not yet executed: the mesh is working on
        it, so this is not silence.  (A faulty sender can add at most one of each per
        seq in the window, so it cannot hold retransmission off for long.)"""
        self.quiet_since = now

    def stuck_checked(self, now: int) -> None:
        """The stuck check ran with work and no progress: its next period starts now."""
        self.last_progress = now

    # -- state transfer ----------------------------------------------------------------
    def saw_ahead(self, sender: int, seq: int) -> None:
        self.seen_ahead[sender] = max(self.seen_ahead.get(sender, 0), seq)

    def seen_ahead_by(self, need: int, last_exec: int) -> int:
        """The highest seq beyond the window that ``need`` senders sent messages for
        (0 if fewer did); entries at or below ``last_exec`` are forgotten."""
        self.seen_ahead = {s: seq for s, seq in self.seen_ahead.items() if seq > last_exec}
        tops = sorted(self.seen_ahead.values(), reverse=True)
        return tops[need - 1] if len(tops) >= need else 0

    def behind(self, seq: int) -> None:
        """``seq`` is stable elsewhere and not executed here."""
        self.behind_to = max(self.behind_to, seq)

    def need_state(self, seq: int, peers: list[int], now: int, period: int) -> bool:
        """Behind up to ``seq``: True if a FetchState should go out now (at most once per
        ``period``)."""
        self.fetch_peers = tuple(sorted(peers)) or self.fetch_peers
        self.behind_to = max(self.behind_to, seq)
        if self.fetch_asked_at is not None and now - self.fetch_asked_at < period:
            return False
        self.fetch_asked_at = now
        return True

    def installed(self, last_exec: int) -> None:
        """A fetched block executed: caught up means the next request is a new one."""
        if self.behind_to <= last_exec:
            self.fetch_asked_at = None

    def fetch_done(self, last_exec: int) -> bool:
        """A batch of fetched blocks is in: True if still behind (ask again now)."""
        if self.behind_to > last_exec:
            self.fetch_asked_at = None
            return True
        return False


class CatchUp:
    """Retransmission, help for a peer that is behind, state transfer, stuck check."""

    # -- retransmission -------------------------------------------------------------
    def _may_help(self, to: int, seq: int) -> bool:
        return self.catchup.may_help(to, seq, self.now, self.cfg.retransmit_ticks)

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
        return self.catchup.retransmit_timeout(self.cfg.retransmit_ticks)

    def _retransmit_if_silent(self, cause: str) -> None:
        if self.catchup.silent(self.now, self._has_work(), self.cfg.retransmit_ticks):
            self._retransmit(cause)

    def _has_work(self) -> bool:
        return self.last_exec < max(self.window.log, default=0) or bool(self.batcher.pending)

    def _retransmit(self, cause: str) -> None:
        """Own messages for what is not executed yet, of the current view only: in a view
        change the VIEW-CHANGE is what goes out again (viewchange.py), and a vote of an
        earlier view is dropped by every replica that moved on (``wrong_view``).  Under
        load such copies were most of a cascade of view changes: every replica re-sent
        its old-view votes to every other on each silence, and the queues filled with
        messages nobody could use ahead of the VIEW-CHANGEs and NEW-VIEWs."""
        log = self.window.log
        if not self.vc.in_view_change:
            for seq in sorted(s for s in log if s > self.last_exec):
                e = log[seq]
                if e.preprepare is not None and e.preprepare.sender == self.id \
                        and e.preprepare.view == self.view:
                    self._msg(Broadcast(e.preprepare, cause))
                for votes in (e.prepares, e.commits):
                    mine = votes.get(self.id)
                    if mine is not None and mine.view == self.view:
                        self._send_vote(mine, cause)
                self._resend_certificates(e, None, cause)  # collector mode (collector.py)
        for seq, digest in sorted(self.window.own_checkpoints.items()):
            if seq > self.window.h:
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
        return None, Entry(seq, preprepare=PrePrepare(view, seq, digest, batch, Q.primary(view, self.n)),
                           commits={c.sender: c for c in cert if c.sender in senders})

    def _on_install(self, stimulus: Install, cause: str) -> None:
        """Execute one committed block fetched from a peer (its signatures already
        checked by the adapter).  A block that does not fit is evidence and changes
        nothing."""
        reason, entry = self._check_install(stimulus.block)  # raises only on our own bug
        if reason:
            self._evidence(None, "bad_state_transfer", reason, cause)
            return
        self.window.put(Entry(entry.seq, preprepare=entry.preprepare, commits=entry.commits,
                              prior=self._certificate(self.window.log.get(entry.seq))))
        entry = self.window.log[entry.seq]
        self._execute(entry, cause)
        self._execute_ready(cause)
        self.catchup.installed(self.last_exec)

    def _on_fetch_done(self, stimulus: FetchDone, cause: str) -> None:
        """After a batch of fetched blocks: ask for the rest if still behind."""
        if self.catchup.fetch_done(self.last_exec):
            self._need_state(self.catchup.behind_to, list(self.catchup.fetch_peers),
                             cause.derive("state transfer continues"))

    def _stuck_check(self, cause: str) -> None:
        if self.now - self.catchup.last_progress < self.cfg.retransmit_ticks:
            return
        ahead = self._seen_ahead_by_f1()
        for seq, e in self.window.log.items():
            if seq > self.last_exec and e.preprepare is None:
                voters = {c.sender for c in e.commits.values()}
                if len(voters) >= Q.weak_quorum(self.n):  # an honest replica committed it
                    ahead = max(ahead, seq)
        if ahead > self.last_exec:
            self._need_state(ahead, [s for s in range(self.n) if s != self.id], cause.derive(f"{cause}: stuck"))

    def _seen_ahead_by_f1(self) -> int:
        """The highest seq beyond the window that f+1 senders (one of them honest) sent
        messages for: one faulty node's seq 2^62 is evidence, never a target.
        Entries this replica has reached are forgotten."""
        return self.catchup.seen_ahead_by(Q.weak_quorum(self.n), self.last_exec)

    def _need_state(self, seq: int, peers: list[int], cause: str) -> None:
        cu = self.catchup
        if cu.need_state(seq, peers, self.now, self.cfg.retransmit_ticks):
            self._msg(FetchState(self.last_exec + 1, cu.behind_to, cu.fetch_peers, cause))
