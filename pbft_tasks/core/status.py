"""The status exchange: catching up without traffic (Castro and Liskov 1999, sec. 4.3
and the implementation notes of their BFT library: a replica that is behind learns so
from its peers' checkpoints, which are retransmitted, and fetches the state it lacks;
CometBFT's blocksync does the same with a periodic status of every peer's height).

Why.  Retransmission (catchup.py) and the stuck check ride on traffic: a replica that
missed commits while it was cut off, paused or down only learns it is behind from a
later message of the mesh.  In an idle mesh none comes, and it stays behind for good;
if a request then arrives, the pre-prepare it accepts cannot execute (a seq before it
is missing), its request timer fires and it starts a view change alone.

Owns: ``StatusState`` (``replica.statuses``: ``peers``, ``sent_at``, ``answered``,
``exec_seen``, ``exec_at``), changed only by its own methods; and ``StatusExchange``, a
mixin of ``Replica`` (replica.py) with the step functions: the tick part, the handler of
``Status`` (messages.py), and the check the request timer asks before a view change
(viewchange.py).

Rules, each tested in tests/core/test_status.py:
- Every ``status_ticks`` (0: never) a replica broadcasts a signed
  STATUS(view, last executed seq, head, stable checkpoint); on ``Resume`` at once; and
  once more when its request timer is half-way (a replica about to suspect the primary
  asks first whether it is merely behind).  Idle cost: n-1 messages a node a period.
- STATUS is a claim, not a proof.  The newest per sender is kept (one entry a peer:
  bounded), and only the f+1-th highest seq among them is a target (one of those f+1
  senders is honest and has executed that far, so the blocks exist; they carry their
  own 2f+1 commits and are checked on ``Install``, catchup.py).  A faulty peer's seq
  2^62 changes nothing on its own.
- A replica that is behind that target and has not executed anything for
  ``retransmit_ticks`` / 4 asks for the missing blocks (``FetchState`` to the peers at
  or past the target, at most once per ``retransmit_ticks``; catchup.py continues
  until the target is reached).  Executing replicas never fetch on a status: under
  load a peer's status is often a few seqs ahead, and normal case is faster.
- A replica that receives a STATUS from a peer behind its own last executed seq
  answers it with its own STATUS, and if the peer's stable checkpoint is below its
  own, with the 2f+1 signed CHECKPOINTs that prove its stable checkpoint (the paper's
  checkpoint retransmission): so the peer gets f+1 statuses within a round trip, and
  its checkpoint at that seq becomes stable once it gets there.  At most once per peer
  a status period (``retransmit_ticks`` when statuses are off).
- The request timer does not start a view change in a replica behind that target:
  it fetches and the timer restarts (viewchange.py).  A replica restored one block
  behind would otherwise move to view v+1 alone while f+1 others are happy in v.
  Bounded: the target is something an honest peer executed, so one fetch reaches it.
"""
from __future__ import annotations

from . import quorum as Q
from .actions import Broadcast, Send
from .messages import Status


class StatusState:
    """Peers' newest statuses, when ours last went out and whom we answered, and when
    this replica last executed something.  All volatile."""

    __slots__ = ("peers", "sent_at", "answered", "exec_seen", "exec_at")

    def __init__(self) -> None:
        self.peers: dict[int, Status] = {}  # sender -> its newest STATUS
        self.sent_at: int | None = None     # tick our STATUS last went out
        self.answered: dict[int, int] = {}  # peer -> tick we last answered it
        self.exec_seen = 0                  # last_exec as of exec_at
        self.exec_at = 0                    # tick last_exec last moved

    def heard(self, st: Status) -> None:
        self.peers[st.sender] = st

    def executed(self, last_exec: int, now: int) -> None:
        if last_exec != self.exec_seen:
            self.exec_seen, self.exec_at = last_exec, now

    def stalled(self, now: int, ticks: int) -> bool:
        return now - self.exec_at >= ticks

    def due(self, now: int, period: int, asking_at: int | None) -> bool:
        """True when our periodic STATUS should go out now, or our ask before a view
        change (``asking_at``: the tick the request timer is half-way)."""
        if self.sent_at is None or now - self.sent_at >= period:
            return True
        return asking_at is not None and self.sent_at < asking_at <= now

    def sent(self, now: int) -> None:
        self.sent_at = now

    def may_answer(self, to: int, now: int, period: int) -> bool:
        last = self.answered.get(to)
        if last is not None and now - last < period:
            return False
        self.answered[to] = now
        return True

    def target(self, need: int) -> tuple[int, list[int]]:
        """The ``need``-th highest executed seq peers claim (0 if fewer sent one), and
        the peers at or past it."""
        tops = sorted((st.seq for st in self.peers.values()), reverse=True)
        if len(tops) < need:
            return 0, []
        seq = tops[need - 1]
        return seq, sorted(s for s, st in self.peers.items() if st.seq >= seq)


class StatusExchange:
    """The periodic STATUS, answers to a peer behind, and catching up from f+1 statuses."""

    def _own_status(self) -> Status:
        return Status(self.view, self.last_exec, self.head, self.window.h, self.id)

    def _status_period(self) -> int:
        return self.cfg.status_ticks or self.cfg.retransmit_ticks

    def _announce_status(self, cause: str) -> None:
        if self.cfg.status_ticks:
            self.statuses.sent(self.now)
            self._msg(Broadcast(self._own_status(), cause))

    def _status_tick(self, cause: str) -> None:
        if not self.cfg.status_ticks:
            return
        st = self.statuses
        st.executed(self.last_exec, self.now)
        waiting = self.vc.waiting_since
        asking = None
        if waiting is not None and not self.vc.in_view_change:
            asking = waiting + self.vc.timeout(self.cfg.view_change_ticks) // 2
        if st.due(self.now, self.cfg.status_ticks, asking):
            self._announce_status(cause)
        self._catch_up_from_statuses(cause)

    def _on_status(self, msg: Status, cause: str) -> None:
        if msg.sender == self.id:
            return self._evidence(msg.sender, "replayed_own", "own STATUS came back", cause)
        st = self.statuses
        st.heard(msg)
        if msg.seq < self.last_exec and st.may_answer(msg.sender, self.now, self._status_period()):
            self._msg(Send(msg.sender, self._own_status(), cause))
            w = self.window
            if msg.stable_seq < w.h:  # the proof of our stable checkpoint (sec. 4.3)
                for sender, ck in sorted(w.checkpoints.get(w.h, {}).items()):
                    if ck.state_digest == w.stable_digest and sender != msg.sender:
                        self._msg(Send(msg.sender, ck, cause))
        st.executed(self.last_exec, self.now)
        self._catch_up_from_statuses(cause)

    def _status_target(self) -> tuple[int, list[int]]:
        return self.statuses.target(Q.weak_quorum(self.n))

    def _catch_up_from_statuses(self, cause: str) -> None:
        seq, peers = self._status_target()
        if seq > self.last_exec and self.statuses.stalled(self.now, self.cfg.retransmit_ticks // 4):
            self._need_state(seq, peers, f"{cause}: f+1 statuses at {seq}")

    def _behind_peers(self, cause: str) -> bool:
        """Asked by the request timer before it starts a view change: True (and a fetch
        asked for) if f+1 statuses say this replica is behind."""
        seq, peers = self._status_target()
        if seq <= self.last_exec:
            return False
        self._need_state(seq, peers, f"{cause}: behind f+1 statuses at {seq}, not a view change")
        return True
