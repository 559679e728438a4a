"""View change (Castro and Liskov 1999, sec. 4.4; liveness sec. 4.5.2): the pure rules
for VIEW-CHANGE and NEW-VIEW, and the replica's view-change state handling.

Owns: what makes a VIEW-CHANGE well-founded, and how the new primary's set O of
pre-prepares follows from 2f+1 of them, deterministically, so that every backup can
recompute O and refuse a NEW-VIEW whose O differs (the functions below); and
``ViewChanges``, a mixin of ``Replica`` (replica.py): the request and NEW-VIEW timers,
starting a view change, collecting VIEW-CHANGEs, sending or checking the NEW-VIEW and
entering the new view.  ``ViewChangeState`` owns the view-change fields
(``in_view_change``, persisted with the view; ``view_changes``, ``waiting_since``,
``started_at``, ``quorum_at``, ``busy_ticks``, ``attempts``, ``sent_at``, ``resends``,
``new_view_msg``, ``new_view_sent``, ``new_view_asked``, ``held_view``) and is changed
only by its own methods.  The mixin changes the replica's own ``view``; entering a view
it calls the owners of the log (``Window.drop_above``, ``put``), of batching
(``Batcher.enter_view``, ``lead_view``) and of state transfer (``_need_state``).

Rules of the messages:
- A VIEW-CHANGE for view v' from i proves its stable checkpoint n with 2f+1 matching
  CHECKPOINTs from distinct replicas (none when n = 0), and each prepared entry with the
  pre-prepare (from the primary of its view, view < v', digest = batch digest, n < seq
  <= n + L) and 2f prepares from distinct backups of that view matching it.  Anything
  else makes the whole message evidence.
- min-s = the largest stable checkpoint in V; max-s = the largest prepared seq in V.
- For each seq in (min-s, max-s]: if some VIEW-CHANGE in V has a prepared certificate
  for seq, O re-proposes the batch of the one with the highest view; otherwise a null
  request (an empty batch) fills the gap, so execution order has no holes.
- Signatures of every nested message are checked by the adapter before the core sees
  the VIEW-CHANGE; the core checks only the counting rules above.

Rules of the replica, each tested in tests/core/test_paper.py or
tests/core/test_view_change.py:
- A replica waiting for a request it knows of (a request it received or a pre-prepare
  it accepted, not yet executed; the primary: a batch it proposed, not yet executed)
  for ``view_change_ticks`` ticks (restarted by an execution, and once per seq when
  the next seq to execute prepares here, normalcase.py) moves to view v+1 (unless
  f+1 peers' statuses say it is merely behind: then it fetches, status.py): it
  stops accepting normal-case messages, multicasts a VIEW-CHANGE with its
  stable-checkpoint proof and prepared certificates, and holds messages of v+1 until
  the NEW-VIEW.  The primary of v+1 multicasts NEW-VIEW once it has 2f+1 VIEW-CHANGEs;
  backups check it by recomputing O.
- Stored VIEW-CHANGEs are bounded: the newest per sender only (an older one or a
  duplicate is ignored before its proofs are checked), and none for a view more than
  ``MAX_VIEWS_AHEAD`` past this replica's (``view_out_of_range``).  So a flood from one
  faulty node costs constant time per message, and its VIEW-CHANGEs count once toward
  the f+1 join rule, for its newest view only.
- If no NEW-VIEW comes in time after 2f+1 replicas asked for v+1 (sec. 4.5.2: the
  timer starts then, so a replica that timed out alone does not climb views on its
  own) it moves on to v+2 with the timeout doubled, so the mesh does not loop.  The
  request timer of the new view keeps the doubled timeout too, until a checkpoint
  becomes stable in it (checkpoints.py), not only until its first execution: on a
  loaded machine executions a little over the base timeout apart would otherwise
  cascade from one view change into the next.  A replica whose stored VIEW-CHANGE is for
  a later view counts as having asked for v+1 too, and once started the timer runs
  until a NEW-VIEW (a quorum member moving on must not stop it).
- A busy tick (``Tick.busy``: the driver has messages for this replica it has not
  handed over yet) counts a quarter toward the request and NEW-VIEW timers: a replica
  behind on its own queue cannot tell a slow primary from its own backlog, and under a
  flood a 1 s timer fired on replicas whose next pre-prepare or commit was already
  waiting for them, cascading into view changes that made the backlog worse (n = 10,
  window 2000: views 4-5, seven replicas not answering).  Bounded: a backlog that never
  empties (a faulty primary flooding its backups) stretches a timeout to 4 x, never
  stops it.
- Until a NEW-VIEW installs v+1, a replica re-broadcasts its VIEW-CHANGE after
  ``retransmit_ticks``, then at doubling intervals (up to 16 x); a replica that
  installed v+1 answers a re-sent VIEW-CHANGE for v+1 with the NEW-VIEW that installed
  it (sec. 4.5.2: a replica in v+1 must receive the NEW-VIEW or re-send its
  VIEW-CHANGE), so a lost VIEW-CHANGE or NEW-VIEW costs a retransmission, not a view.
  f+1 VIEW-CHANGEs for higher views make a replica join the smallest of them
  (sec. 4.5.2).
- A VIEW-CHANGE carries, per seq, the prepared certificate of the *latest view in which
  that seq prepared here*, not only of the view being left: entering a view (or
  installing a fetched block) replaces the log entry but keeps its certificate
  (``Entry.prior``), else a batch committed in v and re-proposed but not yet prepared in
  v+1 could be replaced by another in v+2.
- Entering a view whose min-s is past this replica's last executed seq starts state
  transfer (catchup.py); log entries above O (never prepared by a quorum) are dropped,
  clients retransmit.
"""
from __future__ import annotations

from typing import Any

from . import quorum as Q
from .actions import Broadcast, Send
from .log import Entry
from .messages import NewView, PrePrepare, Prepare, ViewChange, batch_digest


# A busy tick (Tick.busy) counts 1/BUSY_SLOWDOWN of a tick toward the view-change timers.
BUSY_SLOWDOWN = 4


def check_view_change(vc: ViewChange, n: int, log_window: int) -> str | None:
    """None if ``vc`` is well-founded, else the reason it is not."""
    need = Q.quorum(n)
    if vc.stable_seq:
        senders = {c.sender for c in vc.checkpoints
                   if c.seq == vc.stable_seq and 0 <= c.sender < n}
        digests = {c.state_digest for c in vc.checkpoints if c.seq == vc.stable_seq}
        if len(senders) < need or len(digests) != 1:
            return f"stable checkpoint {vc.stable_seq} is not proved by 2f+1 matching checkpoints"
    elif vc.checkpoints:
        return "checkpoint proof for stable checkpoint 0"
    seen = set()
    for pp, prepares in vc.prepared:
        if pp.seq in seen:
            return f"two prepared certificates for seq {pp.seq}"
        seen.add(pp.seq)
        if not vc.stable_seq < pp.seq <= vc.stable_seq + log_window:
            return f"prepared seq {pp.seq} outside ({vc.stable_seq}, {vc.stable_seq + log_window}]"
        if pp.view >= vc.new_view or pp.sender != Q.primary(pp.view, n):
            return f"seq {pp.seq}: pre-prepare not from the primary of an earlier view"
        if batch_digest(pp.batch) != pp.digest:
            return f"seq {pp.seq}: pre-prepare digest does not match its batch"
        backups = {p.sender for p in prepares
                   if p.view == pp.view and p.seq == pp.seq and p.digest == pp.digest
                   and p.sender != pp.sender and 0 <= p.sender < n}
        if len(backups) < Q.prepared_quorum(n):
            return f"seq {pp.seq}: fewer than 2f matching prepares"
    return None


def new_view_preprepares(view: int, vcs: list[ViewChange] | tuple, n: int) -> tuple[int, tuple]:
    """(min-s, O) for ``view`` from the VIEW-CHANGEs ``vcs`` (sec. 4.4)."""
    min_s = max((vc.stable_seq for vc in vcs), default=0)
    best: dict[int, PrePrepare] = {}
    for vc in vcs:
        for pp, _ in vc.prepared:
            if pp.seq > min_s and (pp.seq not in best or pp.view > best[pp.seq].view):
                best[pp.seq] = pp
    max_s = max(best, default=min_s)
    primary = Q.primary(view, n)
    out = []
    for seq in range(min_s + 1, max_s + 1):
        old = best.get(seq)
        batch = old.batch if old is not None else ()
        out.append(PrePrepare(view, seq, old.digest if old is not None else batch_digest(()),
                              batch, primary))
    return min_s, tuple(out)


def check_new_view(nv: NewView, n: int, log_window: int) -> str | None:
    """None if ``nv`` is a well-founded NEW-VIEW, else the reason."""
    if nv.sender != Q.primary(nv.view, n):
        return f"NEW-VIEW for view {nv.view} from {nv.sender}, not its primary"
    senders = set()
    for vc in nv.view_changes:
        if vc.new_view != nv.view:
            return f"VIEW-CHANGE for view {vc.new_view} inside NEW-VIEW {nv.view}"
        reason = check_view_change(vc, n, log_window)
        if reason:
            return f"VIEW-CHANGE from {vc.sender}: {reason}"
        senders.add(vc.sender)
    if len(senders) < Q.quorum(n) or len(senders) != len(nv.view_changes):
        return "fewer than 2f+1 VIEW-CHANGEs from distinct replicas"
    for pp in nv.preprepares:
        if pp.view != nv.view or pp.sender != nv.sender or batch_digest(pp.batch) != pp.digest:
            return f"re-proposed seq {pp.seq} is not a valid pre-prepare of view {nv.view}"
    _, expected = new_view_preprepares(nv.view, nv.view_changes, n)
    if [(p.seq, p.digest) for p in nv.preprepares] != [(p.seq, p.digest) for p in expected]:
        return "its pre-prepares are not the ones its VIEW-CHANGEs call for"
    return None


# A VIEW-CHANGE for a view further ahead of this replica's than this is evidence, never
# stored: honest replicas climb one view per failed view change and join others by the
# f+1 rule, so they are never this far apart.
MAX_VIEWS_AHEAD = 64


class ViewChangeState:
    """Where this replica is in a view change: whether it waits for a NEW-VIEW
    (``in_view_change``, persisted in the meta record with the view), the VIEW-CHANGEs
    it stored, its timers and resend backoff, the NEW-VIEW that installed its view and
    whom it sent it to, and the messages it holds until that NEW-VIEW.  The rest is
    volatile."""

    __slots__ = ("in_view_change", "view_changes", "waiting_since", "started_at", "quorum_at",
                 "busy_ticks", "attempts", "sent_at", "resends", "new_view_msg", "new_view_sent",
                 "new_view_asked", "held_view")

    def __init__(self) -> None:
        self.in_view_change = False
        self.view_changes: dict[int, dict[int, ViewChange]] = {}  # view -> sender -> newest
        self.waiting_since: int | None = None  # the request timer
        self.started_at = 0
        self.quorum_at: int | None = None   # when 2f+1 VIEW-CHANGEs for the view were in
        self.busy_ticks = 0                 # busy ticks since the running timer started
        self.attempts = 0                   # view changes since the last stable checkpoint
        self.sent_at = 0                    # when our VIEW-CHANGE last went out
        self.resends = 0                    # copies of it re-sent so far (backoff)
        self.new_view_msg: NewView | None = None  # the NEW-VIEW that installed the view
        self.new_view_sent: dict[int, int] = {}  # peer -> tick we last sent it new_view_msg
        self.new_view_asked: set[int] = set()    # peers whose VIEW-CHANGE for the view we saw
        self.held_view: list[Any] = []      # messages of the view, until its NEW-VIEW

    # -- timers -------------------------------------------------------------------------
    def progress(self) -> None:
        """A request executed: the request timer restarts (the timeout stays as it is
        until ``stable``)."""
        self.waiting_since = None

    def stable(self) -> None:
        """A checkpoint became stable: the view has proved itself, and the timeout
        doubled by the view changes that led to it comes back to its base."""
        self.attempts = 0

    def timeout(self, base: int) -> int:
        return base << min(self.attempts, 16)

    def _elapsed(self, since: int, now: int, busy: bool) -> int:
        """Ticks charged to the running timer since ``since``: a busy tick counts 1/4
        (integer arithmetic: the core is deterministic)."""
        if busy:
            self.busy_ticks += 1
        return now - since - (self.busy_ticks * (BUSY_SLOWDOWN - 1)) // BUSY_SLOWDOWN

    def new_view_timer(self, view: int, quorum: int, now: int, timeout: int,
                       busy: bool = False) -> bool:
        """In a view change: True when no NEW-VIEW came ``timeout`` ticks after 2f+1
        replicas asked for ``view`` (one more attempt counted)."""
        # Sec. 4.5.2: the timer for moving on to v+2 starts only once 2f+1 replicas
        # asked for v+1.  A replica that timed out alone (slow, or cut off) stays at
        # v+1 instead of climbing views nobody else will reach; it is back in the
        # normal case at the mesh's next view change (and keeps its ledger up to date
        # by state transfer meanwhile).
        # Once started the timer runs until a NEW-VIEW: a VIEW-CHANGE of the quorum
        # that is later replaced by its sender's newer one (stored VIEW-CHANGEs are the
        # newest per sender) still asked for this view.  Counting only what is stored
        # for exactly this view, the count would fall to 2f when the new primary moves
        # on alone (its NEW-VIEW lost) and the timer would stop for good: the others
        # waiting in v+1 for ever, the primary alone in v+2.  So a sender asking for a
        # later view counts too.
        if self.quorum_at is None:
            asked = {s for v, vs in self.view_changes.items() if v >= view for s in vs}
            if len(asked) < quorum:
                return False
            self.quorum_at = now
            self.busy_ticks = 0
        if self._elapsed(self.quorum_at, now, busy) >= timeout:  # no NEW-VIEW in time: next view
            self.attempts += 1
            return True
        return False

    def request_timer(self, waiting: bool, now: int, timeout: int, busy: bool = False) -> bool:
        """In the normal case: True when a request has been waiting ``timeout`` ticks
        (busy ticks counting a quarter; one more attempt counted)."""
        if not waiting:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now
            self.busy_ticks = 0
        elif self._elapsed(self.waiting_since, now, busy) >= timeout:
            self.attempts += 1
            return True
        return False

    def defer(self) -> None:
        """The request timer fired in a replica that f+1 statuses show behind
        (status.py): no view change, no attempt counted; the timer starts again."""
        self.attempts -= 1
        self.waiting_since = None

    # -- VIEW-CHANGE and NEW-VIEW -------------------------------------------------------
    def start(self, mine: ViewChange, now: int) -> None:
        """Our VIEW-CHANGE ``mine`` for its view goes out now."""
        self.in_view_change = True
        self.started_at = now
        self.quorum_at = None
        self.busy_ticks = 0
        self.waiting_since = None
        self.add(mine)
        self.sent_at = now
        self.resends = 0

    def resend_due(self, now: int, base: int) -> bool:
        """True (and counted) when our VIEW-CHANGE should go out again: ``base`` ticks
        after the last copy, doubling with every copy up to 16 x."""
        interval = base << min(self.resends, 4)
        if not self.in_view_change or now - self.sent_at < interval:
            return False
        self.sent_at = now
        self.resends += 1
        return True

    def asked_by(self, sender: int) -> list[int]:
        """The views ``sender`` has a stored VIEW-CHANGE for."""
        return [v for v, vs in self.view_changes.items() if sender in vs]

    def add(self, vc: ViewChange) -> None:
        self.view_changes.setdefault(vc.new_view, {})[vc.sender] = vc

    def replace(self, vc: ViewChange, older: list[int]) -> None:
        """Store ``vc`` as its sender's newest, dropping its VIEW-CHANGEs for ``older``."""
        for v in older:  # the newest per sender only (Castro-Liskov): at most n stored
            del self.view_changes[v][vc.sender]
            if not self.view_changes[v]:
                del self.view_changes[v]
        self.add(vc)

    def new_view_for(self, to: int, view: int, now: int, period: int) -> NewView | None:
        """The NEW-VIEW to send ``to``, which asked again for ``view``: only for a re-sent
        VIEW-CHANGE, at most once per ``period``."""
        nv = self.new_view_msg
        if nv is None or nv.view != view:
            return None
        if to not in self.new_view_asked:
            self.new_view_asked.add(to)
            return None
        last = self.new_view_sent.get(to)
        if last is not None and now - last < period:
            return None
        self.new_view_sent[to] = now
        return nv

    def hold(self, m: Any, limit: int) -> None:
        """A message of the view being installed: kept (up to ``limit``) until its NEW-VIEW."""
        if len(self.held_view) < limit:
            self.held_view.append(m)

    def enter(self, view: int) -> None:
        """``view`` is installed: the view change is over."""
        self.in_view_change = False
        self.new_view_sent = {}
        self.new_view_asked = set(self.view_changes.get(view, {}))
        self.view_changes = {v: vs for v, vs in self.view_changes.items() if v > view}
        self.waiting_since = None

    def take_held(self) -> list[Any]:
        held, self.held_view = self.held_view, []
        return held

    def installed(self, nv: NewView) -> None:
        self.new_view_msg = nv

    def restore(self, in_view_change: bool) -> None:
        self.in_view_change = in_view_change


class ViewChanges:
    """The replica's side of the view change: timers, VIEW-CHANGE, NEW-VIEW, new view."""

    # -- view change (sec. 4.4) ---------------------------------------------------------
    def _waiting(self) -> bool:
        """A backup waits for every request it knows of (received, or in a pre-prepare it
        accepted) and has not executed (sec. 4.4).  The primary only for what it has
        proposed: requests still in its batcher wait for its own proposal window
        (normalcase.py), not for anyone else, and under a flood a primary timing out on
        that queue was the first to start a view change (n = 7 and 10 on two cores)."""
        pending = any(e.preprepare is not None and not e.executed
                      for s, e in self.window.log.items() if s > self.last_exec)
        if self.is_primary and not self.vc.in_view_change:
            return pending
        return pending or bool(self.awaiting)

    def _view_change_timers(self, cause: str, busy: bool = False) -> None:
        vc = self.vc
        timeout = vc.timeout(self.cfg.view_change_ticks)
        if vc.in_view_change:
            if vc.new_view_timer(self.view, self.quorum, self.now, timeout, busy):
                self._start_view_change(self.view + 1, f"{cause}: no NEW-VIEW for view {self.view}")
            return
        if vc.request_timer(self._waiting(), self.now, timeout, busy):
            if self._behind_peers(cause):  # status.py: behind, not a faulty primary
                vc.defer()
                return
            self._start_view_change(self.view + 1, f"{cause}: request timer expired in view {self.view}")

    def _own_view_change(self, new_view: int) -> ViewChange:
        w = self.window
        proof = ()
        if w.h:
            proof = tuple(c for _, c in sorted(w.checkpoints.get(w.h, {}).items())
                          if c.state_digest == w.stable_digest)
        prepared = []
        for seq in sorted(s for s in w.log if s > w.h):
            cert = self._certificate(w.log[seq])
            if cert is not None and cert[0].view < new_view:
                prepared.append(cert)
        return ViewChange(new_view, w.h, proof, tuple(prepared), self.id)

    def _certificate(self, e: Entry | None) -> tuple | None:
        """The newest prepared certificate ``e`` holds, of its own view or an earlier one."""
        if e is None or e.preprepare is None:
            return e.prior if e is not None else None
        return e.certificate(Q.primary(e.preprepare.view, self.n), self.need_prepares)

    def _start_view_change(self, new_view: int, cause: str) -> None:
        self.view = new_view
        mine = self._own_view_change(new_view)
        self.vc.start(mine, self.now)
        self._msg(Broadcast(mine, cause))
        self._try_new_view(new_view, cause)

    def _resend_view_change(self, cause: str) -> None:
        """In a view change, our VIEW-CHANGE goes out again every ``retransmit_ticks``
        until a NEW-VIEW installs the view (sec. 4.5.2: a replica in v+1 must receive
        NEW-VIEW or re-send its VIEW-CHANGE): a lost one, or one a lagging peer dropped,
        would otherwise leave the new primary short of 2f+1 for ever.  A receiver that
        has it drops the copy before checking it; one that installed the view answers
        with the NEW-VIEW (``_on_view_change``).  The interval doubles with every copy
        (up to 16 x): a VIEW-CHANGE carries whole batches, and the receiving adapter
        checks every nested signature before the core can tell it is a duplicate."""
        if not self.vc.resend_due(self.now, self.cfg.retransmit_ticks):
            return
        mine = self.vc.view_changes.get(self.view, {}).get(self.id)
        if mine is None:
            mine = self._own_view_change(self.view)
            self.vc.add(mine)
        self._msg(Broadcast(mine, cause))

    def _on_view_change(self, msg: ViewChange, cause: str) -> None:
        if msg.sender == self.id:
            return self._evidence(msg.sender, "replayed_own", "own VIEW-CHANGE came back", cause)
        if msg.new_view == self.view and not self.vc.in_view_change:
            return self._send_new_view(msg.sender, cause)  # it missed the NEW-VIEW
        if msg.new_view < self.view:
            return  # a view this replica has already left
        if msg.new_view > self.view + MAX_VIEWS_AHEAD:
            return self._evidence(msg.sender, "view_out_of_range",
                                  f"VIEW-CHANGE for view {msg.new_view}, this replica is in "
                                  f"view {self.view}", cause)
        held = self.vc.asked_by(msg.sender)
        if any(v >= msg.new_view for v in held):
            return  # a duplicate, or older than what this sender already asked for
        reason = check_view_change(msg, self.n, self.cfg.log_window)
        if reason:
            return self._evidence(msg.sender, "bad_view_change", reason, cause)
        self.vc.replace(msg, held)
        # sec. 4.5.2: f+1 replicas want a higher view, so at least one honest one does
        stored = self.vc.view_changes
        higher = {s for v, vs in stored.items() if v > self.view for s in vs}
        if len(higher) >= Q.weak_quorum(self.n):
            target = min(v for v, vs in stored.items() if v > self.view and vs)
            self._start_view_change(target, cause)
        self._try_new_view(msg.new_view, cause)

    def _send_new_view(self, to: int, cause: str) -> None:
        """``to`` asks again for the view this replica installed: it is still waiting
        for the NEW-VIEW (lost, or it lagged), so send it the one that installed the
        view, at most once per ``retransmit_ticks`` per peer.  Any replica may: a
        NEW-VIEW proves itself (its VIEW-CHANGEs and pre-prepares are signed by their
        senders).  Only a re-sent VIEW-CHANGE is answered (from a sender whose
        VIEW-CHANGE for this view was already seen here): a first copy is usually just
        late, with the broadcast NEW-VIEW behind it."""
        nv = self.vc.new_view_for(to, self.view, self.now, self.cfg.retransmit_ticks)
        if nv is not None:
            self._msg(Send(to, nv, cause))

    def _try_new_view(self, view: int, cause: str) -> None:
        if not (self.vc.in_view_change and view == self.view and Q.primary(view, self.n) == self.id):
            return
        votes = self.vc.view_changes.get(view, {})
        if len(votes) < self.quorum:
            return
        chosen = tuple(vc for _, vc in sorted(votes.items())[: self.quorum])
        min_s, pps = new_view_preprepares(view, chosen, self.n)
        nv = NewView(view, chosen, pps, self.id)
        self._msg(Broadcast(nv, cause))
        self._enter_view(view, pps, min_s, cause)
        self.vc.installed(nv)

    def _on_new_view(self, nv: NewView, cause: str) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.vc.in_view_change):
            return
        reason = check_new_view(nv, self.n, self.cfg.log_window)
        if reason:
            return self._evidence(nv.sender, "bad_new_view", reason, cause)
        min_s, _ = new_view_preprepares(nv.view, nv.view_changes, self.n)
        self._enter_view(nv.view, nv.preprepares, min_s, cause)
        self.vc.installed(nv)

    def _enter_view(self, view: int, pps: tuple, min_s: int, cause: str) -> None:
        w = self.window
        self.view = view
        self.vc.enter(view)
        if min_s > self.last_exec:  # the new view starts past us: fetch what we lack
            peers = [s for s in range(self.n) if s != self.id]
            self._need_state(min_s, peers, cause)
        top = max((pp.seq for pp in pps), default=min_s)
        w.drop_above(max(top, self.last_exec))  # never prepared by a quorum: clients retransmit
        primary = Q.primary(view, self.n)
        for pp in pps:
            if pp.seq <= w.h or pp.seq > w.high:
                continue
            w.put(Entry(pp.seq, preprepare=pp, executed=pp.seq <= self.last_exec,
                        prior=self._certificate(w.log.get(pp.seq))))  # sec. 4.4: never lost
            if self.id != primary:
                mine = Prepare(view, pp.seq, pp.digest, self.id)
                w.log.add_vote(mine)
                self._send_vote(mine, cause)
        self.batcher.enter_view()
        if self.id == primary:
            proposed = {(r.client, r.timestamp) for pp in pps for r in pp.batch}
            pending = [r for k, r in self.awaiting.items()
                       if k not in proposed and not self.clients.executed(*k)]
            self.batcher.lead_view(max(top, self.last_exec, w.h) + 1, pending,
                                   proposed | set(self.awaiting), self.now)
        for m in self.vc.take_held():
            if m.view == view:
                self._handlers[type(m)](self, m, cause)
        for seq in sorted(w.log):
            if seq > self.last_exec:
                self._check(w.log[seq], cause)
        if self.id == primary:
            self._cut_partial(cause)
