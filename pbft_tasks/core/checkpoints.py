"""Checkpoints, the stable checkpoint, watermarks and garbage collection (Castro and
Liskov 1999, sec. 4.3).

Owns: ``Window``, the log between the watermarks (``h``, ``stable_digest``, ``high``,
``log`` (a log.py ``Log``), ``checkpoints``, ``own_checkpoints``, ``far_checkpoints`` and
the ``held`` messages), changed only by its own methods, and its part of persistence
(``changes``: the ``pp/``, ``votes/`` and ``ckpt/`` records a step changed, derived by
comparing what it touched with what was there before; restoring the log); and ``Checkpoints``, a mixin of ``Replica`` (replica.py)
with the checkpoint step functions.  The mixin tells the catch-up state (catchup.py)
when this replica is behind, what it saw ahead and when the window moved.

Rules, each tested in tests/core/test_paper.py under the rule's name:
- Every K = ``checkpoint_interval`` seqs a replica multicasts CHECKPOINT(n, digest),
  the digest being the hash of its block at n; 2f+1 matching make it stable: the low
  watermark h moves to n, H = h + L (``Replica.high``), and the log at or below n and
  the checkpoints below n are garbage-collected.  A checkpoint stable elsewhere but not executed here
  marks this replica behind (``behind_to``) instead; one whose 2f+1 digest differs from
  our own is ``state_divergence`` evidence against ourselves.
- Messages beyond H are held (bounded: at most 4 L n of them and none beyond H + L;
  the rest are dropped as evidence, their highest seq per sender remembered in
  ``seen_ahead`` for the stuck check) and replayed when the window moves; messages at or below h are
  dropped.
- f+1 matching CHECKPOINTs for a seq this replica has not executed, or beyond 2L past
  h (kept bounded: the newest per sender), start state transfer (catchup.py).  When it
  then takes its own checkpoint at such a far seq, the far ones for that seq count as
  votes for it: without them a replica that caught up by state transfer would keep
  h = 0, refuse every later normal-case message as outside its window and never vote
  again (tests/core/scenarios/state_transfer.txt).
- A duplicate CHECKPOINT for the stable checkpoint is answered with our own (the sender
  missed stability), at most once per (peer, seq, ``retransmit_ticks``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import quorum as Q
from .actions import Broadcast, Send
from .chain import GENESIS
from .log import Entry, Log
from .messages import Checkpoint, from_wire, to_wire


class Window:
    """The log between the watermarks and the checkpoints that move them (sec. 4.3):
    h and the stable digest (persisted in the meta record), the log entries (``pp/`` and
    ``votes/`` records), the checkpoint votes and our own checkpoints (``ckpt/``
    records); volatile: the far checkpoints and the messages held beyond H."""

    __slots__ = ("log_window", "h", "stable_digest", "log", "checkpoints", "own_checkpoints",
                 "far_checkpoints", "held", "_ckpt_before")

    def __init__(self, log_window: int, me: int = 0):
        self.log_window = log_window
        self.h = 0                      # low watermark = seq of the last stable checkpoint
        self.stable_digest = GENESIS
        self.log = Log(me)
        self.checkpoints: dict[int, dict[int, Checkpoint]] = {}
        self.own_checkpoints: dict[int, str] = {}
        self.far_checkpoints: dict[int, Checkpoint] = {}  # newest beyond the window, per sender
        self.held: list[Any] = []       # messages beyond H, replayed when the window moves
        self._ckpt_before: dict[int, tuple | None] = {}  # seq -> its ckpt/ record's content before this step

    @property
    def high(self) -> int:
        return self.h + self.log_window

    # -- the log ------------------------------------------------------------------------
    def entry(self, seq: int) -> Entry:
        """The log entry for ``seq``, a new empty one if there is none."""
        return self.log.entry(seq)

    def put(self, entry: Entry) -> None:
        """``entry`` replaces whatever the log held for its seq (a new view, a fetched block)."""
        self.log.put(entry)

    def drop_above(self, seq: int) -> list[int]:
        """Forget the entries above ``seq``; the seqs forgotten."""
        gone = [s for s in self.log if s > seq]
        self.log.drop(gone)
        return gone

    def hold(self, m: Any, limit: int) -> bool:
        """Keep ``m`` (beyond H) for when the window moves, unless it is beyond H + L or
        ``limit`` messages are held already."""
        if m.seq > self.high + self.log_window or len(self.held) >= limit:
            return False
        self.held.append(m)
        return True

    # -- checkpoints --------------------------------------------------------------------
    def _ckpt_state(self, seq: int) -> tuple | None:
        votes = self.checkpoints.get(seq)
        return None if votes is None else (self.own_checkpoints.get(seq), dict(votes))

    def _touch_ckpt(self, seq: int) -> None:
        if seq not in self._ckpt_before:
            self._ckpt_before[seq] = self._ckpt_state(seq)

    def take_checkpoint(self, mine: Checkpoint) -> None:
        """Our own checkpoint, with the far ones for its seq as votes for it."""
        self._touch_ckpt(mine.seq)
        self.own_checkpoints[mine.seq] = mine.state_digest
        votes = self.checkpoints.setdefault(mine.seq, {})
        votes[mine.sender] = mine
        for far in self.far_checkpoints.values():  # heard of while beyond our window:
            if far.seq == mine.seq:                # after a state transfer, they make it
                votes.setdefault(far.sender, far)  # stable and the window moves on

    def add_checkpoint(self, ck: Checkpoint) -> Checkpoint | None:
        """Count ``ck`` as its sender's vote; if the sender already voted for that seq,
        change nothing and return its earlier vote."""
        self._touch_ckpt(ck.seq)
        votes = self.checkpoints.setdefault(ck.seq, {})
        old = votes.get(ck.sender)
        if old is None:
            votes[ck.sender] = ck
        return old

    def add_far_checkpoint(self, ck: Checkpoint) -> list[int]:
        """Remember ``ck`` (beyond 2L past h) if it is its sender's newest; the senders of
        far checkpoints that match it."""
        old = self.far_checkpoints.get(ck.sender)
        if old is None or ck.seq > old.seq:  # bounded: the newest per sender
            self.far_checkpoints[ck.sender] = ck
        return [c.sender for c in self.far_checkpoints.values()
                if (c.seq, c.state_digest) == (ck.seq, ck.state_digest)]

    def advance(self, seq: int, digest: str) -> list[str]:
        """The checkpoint at ``seq`` is stable: move h there and garbage-collect the log
        at or below it and the checkpoints below it."""
        self.h, self.stable_digest = seq, digest
        self.log.drop([s for s in self.log if s <= seq])
        for s in [s for s in self.checkpoints if s < seq]:
            self._touch_ckpt(s)
            del self.checkpoints[s]
            self.own_checkpoints.pop(s, None)

    def take_held(self) -> list[Any]:
        held, self.held = self.held, []
        return held

    # -- persistence --------------------------------------------------------------------
    def changes(self) -> dict:
        """The records (None = delete) whose content this step changed: the log's
        (log.py ``Log.changes``) and the ``ckpt/`` ones; forgets the step."""
        out = self.log.changes()
        for s, before in self._ckpt_before.items():
            if self._ckpt_state(s) != before:
                out[f"ckpt/{s}"] = self.checkpoint_record(s) if s in self.checkpoints else None
        self._ckpt_before = {}
        return out

    def checkpoint_record(self, seq: int) -> dict:
        return {"own": self.own_checkpoints.get(seq),
                "msgs": [to_wire(c) for _, c in sorted(self.checkpoints[seq].items())]}

    def restore(self, h: int, stable_digest: str) -> None:
        self.h, self.stable_digest = h, stable_digest

    def restore_records(self, records: dict, last_exec: int) -> None:
        """The log and checkpoints from persisted records (after ``restore``)."""
        seqs = {int(k.split("/")[1]) for k in records if k.startswith(("pp/", "votes/"))}
        for s in seqs:
            if s > self.h:
                self.log.restore(Entry.from_records(s, records.get(f"pp/{s}"), records.get(f"votes/{s}"),
                                                    executed=s <= last_exec))
        for k, v in records.items():
            if k.startswith("ckpt/"):
                s = int(k.split("/")[1])
                self.checkpoints[s] = {c.sender: c for c in map(from_wire, v["msgs"])}
                if v["own"]:
                    self.own_checkpoints[s] = v["own"]


class Checkpoints:
    """Checkpoints, stability, watermarks, garbage collection and the hold buffer."""

    # -- checkpoints and garbage collection (sec. 4.3) -------------------------------------
    def _take_checkpoint(self, seq: int, cause: str) -> None:
        mine = Checkpoint(seq, self.head, self.id)
        self.window.take_checkpoint(mine)
        self._msg(Broadcast(mine, cause))
        self._check_stable(seq, cause)

    def _on_checkpoint(self, ck: Checkpoint, cause: str) -> None:
        if ck.sender == self.id:
            return self._evidence(ck.sender, "replayed_own", "own checkpoint came back", cause)
        if ck.seq % self.cfg.checkpoint_interval:
            return self._evidence(ck.sender, "bad_checkpoint_seq", f"seq {ck.seq}", cause)
        w = self.window
        if ck.seq <= w.h:
            stable = w.checkpoints.get(ck.seq, {})
            if (ck.seq == w.h and ck.sender in stable and self.id in stable
                    and self._may_help(ck.sender, ck.seq)):
                self._msg(Send(ck.sender, stable[self.id], cause))  # it missed stability
            return
        if ck.seq > w.h + 2 * self.cfg.log_window:
            # Evidence, not a target: one sender's far checkpoint only counts once f+1
            # senders name the same one (at least one of them honest).
            self._evidence(ck.sender, "checkpoint_out_of_range",
                           f"seq {ck.seq} beyond {w.h + 2 * self.cfg.log_window}", cause)
            same = w.add_far_checkpoint(ck)
            if len(same) >= Q.weak_quorum(self.n):
                self._need_state(ck.seq, same, cause)
            return
        old = w.add_checkpoint(ck)
        if old is not None:
            if old.state_digest != ck.state_digest:
                self._evidence(ck.sender, "equivocation", f"checkpoint {ck.seq}", cause)
            return
        if ck.seq > self.last_exec:
            same = [c.sender for c in w.checkpoints[ck.seq].values()
                    if c.state_digest == ck.state_digest]
            if len(same) >= Q.weak_quorum(self.n):
                self._need_state(ck.seq, same, cause)
        self._check_stable(ck.seq, cause)

    def _check_stable(self, seq: int, cause: str) -> None:
        w = self.window
        if seq <= w.h:
            return
        counts: dict[str, int] = defaultdict(int)
        for ck in w.checkpoints.get(seq, {}).values():
            counts[ck.state_digest] += 1
        digest = next((d for d, c in counts.items() if c >= self.quorum), None)
        if digest is None:
            return
        if self.last_exec < seq:
            self.catchup.behind(seq)  # stable elsewhere: catch up first
            return
        if w.own_checkpoints.get(seq) != digest:
            self._evidence(self.id, "state_divergence",
                           f"2f+1 replicas agree on {digest[:12]} at {seq}, this replica has "
                           f"{w.own_checkpoints.get(seq, '?')[:12]}", cause)
            return
        self._advance_watermarks(seq, digest, cause)

    def _advance_watermarks(self, seq: int, digest: str, cause: str) -> None:
        self.window.advance(seq, digest)
        # A view change doubled the timers (viewchange.py); they come back down only
        # once the view has proved itself with a stable checkpoint, not at its first
        # execution: under load, executions a little over a timer apart would otherwise
        # bring it back to its base at once and trip the next view change, and the next
        # (a cascade of view changes on a loaded 2-core machine).
        self.vc.stable()
        self.catchup.forget_helped_below(seq)
        for m in self.window.take_held():  # the window moved: messages we held may now be in it
            self._handlers[type(m)](self, m, cause)
        if self.is_primary:
            self._propose(cause, force=False, limit=self._room())

    def _hold(self, m: Any, cause: str) -> None:
        if not self.window.hold(m, 4 * self.cfg.log_window * self.n):
            self.catchup.saw_ahead(m.sender, m.seq)
            self._evidence(m.sender, "outside_watermarks", f"seq {m.seq} beyond {self.window.high}", cause)
