"""View change: the pure rules for VIEW-CHANGE and NEW-VIEW (Castro and Liskov 1999,
sec. 4.4), used by replica.py.

Owns: what makes a VIEW-CHANGE well-founded, and how the new primary's set O of
pre-prepares follows from 2f+1 of them, deterministically, so that every backup can
recompute O and refuse a NEW-VIEW whose O differs.

Rules:
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
"""
from __future__ import annotations

from . import quorum as Q
from .messages import NewView, PrePrepare, ViewChange, batch_digest


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
