"""Checkpoints, the stable checkpoint, watermarks and garbage collection (Castro and
Liskov 1999, sec. 4.3).

Owns: ``Checkpoints``, a mixin of ``Replica`` (replica.py).  It reads and writes the
replica state that ``Replica.__init__`` creates and documents (``h``,
``stable_digest``, ``checkpoints``, ``own_checkpoints``, ``held``, ``far_checkpoints``,
``seen_ahead``, ``behind_to``, ``helped``, ``log``).

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
  votes for it: without them a replica that caught up by state transfer kept h = 0,
  refused every later normal-case message as outside its window and never voted again
  (found by tests/core/scenarios/state_transfer.txt).
- A duplicate CHECKPOINT for the stable checkpoint is answered with our own (the sender
  missed stability), at most once per (peer, seq, ``retransmit_ticks``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import quorum as Q
from .actions import Broadcast, Send
from .messages import Checkpoint


class Checkpoints:
    """Checkpoints, stability, watermarks, garbage collection and the hold buffer."""

    # -- checkpoints and garbage collection (sec. 4.3) -------------------------------------
    def _take_checkpoint(self, seq: int, cause: str) -> None:
        self.own_checkpoints[seq] = self.head
        mine = Checkpoint(seq, self.head, self.id)
        votes = self.checkpoints.setdefault(seq, {})
        votes[self.id] = mine
        for far in self.far_checkpoints.values():  # heard of while beyond our window:
            if far.seq == seq:                     # after a state transfer, they make it
                votes.setdefault(far.sender, far)  # stable and the window moves on
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
            # Evidence, not a target: one sender's far checkpoint only counts once f+1
            # senders name the same one (at least one of them honest).
            self._evidence(ck.sender, "checkpoint_out_of_range",
                           f"seq {ck.seq} beyond {self.h + 2 * self.cfg.log_window}", cause)
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
        # A view change doubled the timers (viewchange.py); they come back down only
        # once the view has proved itself with a stable checkpoint, not at its first
        # execution: under load, executions a little over a timer apart would otherwise
        # bring it back to its base at once and trip the next view change, and the next
        # (a cascade of view changes on a loaded 2-core machine, issue 14).
        self.vc_attempts = 0
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
            self.seen_ahead[m.sender] = max(self.seen_ahead.get(m.sender, 0), m.seq)
            self._evidence(m.sender, "outside_watermarks", f"seq {m.seq} beyond {self.high}", cause)
        else:
            self.held.append(m)
