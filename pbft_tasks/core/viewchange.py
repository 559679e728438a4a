"""View change (Castro and Liskov 1999, sec. 4.4; liveness sec. 4.5.2): the pure rules
for VIEW-CHANGE and NEW-VIEW, and the replica's view-change state handling.

Owns: what makes a VIEW-CHANGE well-founded, and how the new primary's set O of
pre-prepares follows from 2f+1 of them, deterministically, so that every backup can
recompute O and refuse a NEW-VIEW whose O differs (the functions below); and
``ViewChanges``, a mixin of ``Replica`` (replica.py): the request and NEW-VIEW timers,
starting a view change, collecting VIEW-CHANGEs, sending or checking the NEW-VIEW and
entering the new view.  The mixin reads and writes the replica state that
``Replica.__init__`` creates and documents (``view``, ``in_view_change``,
``view_changes``, ``awaiting``, ``waiting_since``, ``vc_started_at``,
``vc_quorum_at``, ``vc_attempts``, ``vc_sent_at``, ``vc_resends``, ``new_view_msg``, ``new_view_sent``,
``new_view_asked``, ``held_view``, ``log``, ...).

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
  it accepted, not yet executed) for ``view_change_ticks`` ticks moves to view v+1: it
  stops accepting normal-case messages, multicasts a VIEW-CHANGE with its
  stable-checkpoint proof and prepared certificates, and holds messages of v+1 until
  the NEW-VIEW.  The primary of v+1 multicasts NEW-VIEW once it has 2f+1 VIEW-CHANGEs;
  backups check it by recomputing O.
- Stored VIEW-CHANGEs are bounded: the newest per sender only (an older one or a
  duplicate is ignored before its proofs are checked), and none for a view more than
  ``MAX_VIEWS_AHEAD`` past this replica's (``view_out_of_range``).  So a flood from one
  faulty node costs constant time per message, and its VIEW-CHANGEs count once toward
  the f+1 join rule, for its newest view only (issue 10, finding 6).
- If no NEW-VIEW comes in time after 2f+1 replicas asked for v+1 (sec. 4.5.2: the
  timer starts then, so a replica that timed out alone does not climb views on its
  own) it moves on to v+2 with the timeout doubled, so the mesh does not loop.  The
  request timer of the new view keeps the doubled timeout too, until a checkpoint
  becomes stable in it (checkpoints.py), not only until its first execution: on a
  loaded machine executions a little over the base timeout apart would otherwise
  cascade from one view change into the next.  A replica whose stored VIEW-CHANGE is for
  a later view counts as having asked for v+1 too, and once started the timer runs
  until a NEW-VIEW (a quorum member moving on must not stop it).
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

from . import quorum as Q
from .actions import Broadcast, Send
from .log import Entry
from .messages import NewView, PrePrepare, Prepare, ViewChange, batch_digest


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


class ViewChanges:
    """The replica's side of the view change: timers, VIEW-CHANGE, NEW-VIEW, new view."""

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
            # Once started the timer runs until a NEW-VIEW: a VIEW-CHANGE of the quorum
            # that is later replaced by its sender's newer one (stored VIEW-CHANGEs are the
            # newest per sender) still asked for this view.  It used to count only what
            # was stored for exactly this view, so when the new primary moved on alone
            # (its NEW-VIEW lost) the count fell to 2f and the timer stopped for good:
            # the others waited in v+1 for ever, the primary alone in v+2 (the stall of
            # the 4-node RabbitMQ benchmark).  A sender asking for a later view counts too.
            if self.vc_quorum_at is None:
                asked = {s for v, vs in self.view_changes.items() if v >= self.view for s in vs}
                if len(asked) < self.quorum:
                    return
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
        self.vc_quorum_at = None
        self.waiting_since = None
        self._dirty_meta = True
        mine = self._own_view_change(new_view)
        self.view_changes.setdefault(new_view, {})[self.id] = mine
        self.vc_sent_at = self.now
        self.vc_resends = 0
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
        interval = self.cfg.retransmit_ticks << min(self.vc_resends, 4)
        if not self.in_view_change or self.now - self.vc_sent_at < interval:
            return
        self.vc_sent_at = self.now
        self.vc_resends += 1
        mine = self.view_changes.get(self.view, {}).get(self.id)
        if mine is None:
            mine = self._own_view_change(self.view)
            self.view_changes.setdefault(self.view, {})[self.id] = mine
        self._msg(Broadcast(mine, cause))

    def _on_view_change(self, vc: ViewChange, cause: str) -> None:
        if vc.sender == self.id:
            return self._evidence(vc.sender, "replayed_own", "own VIEW-CHANGE came back", cause)
        if vc.new_view == self.view and not self.in_view_change:
            return self._send_new_view(vc.sender, cause)  # it missed the NEW-VIEW
        if vc.new_view < self.view:
            return  # a view this replica has already left
        if vc.new_view > self.view + MAX_VIEWS_AHEAD:
            return self._evidence(vc.sender, "view_out_of_range",
                                  f"VIEW-CHANGE for view {vc.new_view}, this replica is in "
                                  f"view {self.view}", cause)
        held = [v for v, vs in self.view_changes.items() if vc.sender in vs]
        if any(v >= vc.new_view for v in held):
            return  # a duplicate, or older than what this sender already asked for
        reason = check_view_change(vc, self.n, self.cfg.log_window)
        if reason:
            return self._evidence(vc.sender, "bad_view_change", reason, cause)
        for v in held:  # the newest per sender only (Castro-Liskov): at most n stored
            del self.view_changes[v][vc.sender]
            if not self.view_changes[v]:
                del self.view_changes[v]
        self.view_changes.setdefault(vc.new_view, {})[vc.sender] = vc
        # sec. 4.5.2: f+1 replicas want a higher view, so at least one honest one does
        higher = {s for v, vs in self.view_changes.items() if v > self.view for s in vs}
        if len(higher) >= Q.weak_quorum(self.n):
            target = min(v for v, vs in self.view_changes.items() if v > self.view and vs)
            self._start_view_change(target, cause)
        self._try_new_view(vc.new_view, cause)

    def _send_new_view(self, to: int, cause: str) -> None:
        """``to`` asks again for the view this replica installed: it is still waiting
        for the NEW-VIEW (lost, or it lagged), so send it the one that installed the
        view, at most once per ``retransmit_ticks`` per peer.  Any replica may: a
        NEW-VIEW proves itself (its VIEW-CHANGEs and pre-prepares are signed by their
        senders).  Only a re-sent VIEW-CHANGE is answered (from a sender whose
        VIEW-CHANGE for this view was already seen here): a first copy is usually just
        late, with the broadcast NEW-VIEW behind it."""
        nv = self.new_view_msg
        if nv is None or nv.view != self.view:
            return
        if to not in self.new_view_asked:
            self.new_view_asked.add(to)
            return
        last = self.new_view_sent.get(to)
        if last is not None and self.now - last < self.cfg.retransmit_ticks:
            return
        self.new_view_sent[to] = self.now
        self._msg(Send(to, nv, cause))

    def _try_new_view(self, view: int, cause: str) -> None:
        if not (self.in_view_change and view == self.view and Q.primary(view, self.n) == self.id):
            return
        votes = self.view_changes.get(view, {})
        if len(votes) < self.quorum:
            return
        chosen = tuple(vc for _, vc in sorted(votes.items())[: self.quorum])
        min_s, pps = new_view_preprepares(view, chosen, self.n)
        nv = NewView(view, chosen, pps, self.id)
        self._msg(Broadcast(nv, cause))
        self._enter_view(view, pps, min_s, cause)
        self.new_view_msg = nv

    def _on_new_view(self, nv: NewView, cause: str) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.in_view_change):
            return
        reason = check_new_view(nv, self.n, self.cfg.log_window)
        if reason:
            return self._evidence(nv.sender, "bad_new_view", reason, cause)
        min_s, _ = new_view_preprepares(nv.view, nv.view_changes, self.n)
        self._enter_view(nv.view, nv.preprepares, min_s, cause)
        self.new_view_msg = nv

    def _enter_view(self, view: int, pps: tuple, min_s: int, cause: str) -> None:
        self.view = view
        self.in_view_change = False
        self.new_view_sent = {}
        self.new_view_asked = set(self.view_changes.get(view, {}))
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
                self._send_vote(mine, cause)
        self.pending_bytes = {}  # recomputed as the new view's batches are cut
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
