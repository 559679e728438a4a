"""The message log of one sequence number, and the predicates over it (Castro and Liskov
1999, sec. 4.2).

Owns: what a replica has accepted for a sequence number in the current view (the
pre-prepare, prepares and commits, first vote per sender), the predicates ``prepared``
and ``committed_local``, and the JSON form of an entry for persistence.  Also the
prepared certificate this seq earned in an earlier view (``prior``), kept when a view
change or state transfer replaces the entry (sec. 4.4: P holds, per seq, the
certificate of the latest view in which the request prepared).

Rules:
- One vote per sender per (view, seq): a second vote with another digest is
  equivocation; the first is kept and the second reported as evidence.
- prepared(m, v, n, i): the pre-prepare for m in view v at n, plus 2f prepares from
  distinct *backups* (the primary's pre-prepare stands for its prepare; a prepare that
  claims to come from the primary does not count) matching v, n and D(m).
- committed-local(m, v, n, i): prepared, plus 2f+1 commits from distinct replicas
  (possibly including i) matching v, n and D(m).
"""
from __future__ import annotations

from .messages import Commit, PrePrepare, Prepare, from_wire, to_wire


class Entry:
    __slots__ = ("seq", "preprepare", "prepares", "commits", "executed", "prior", "sent_certificates")

    def __init__(self, seq: int):
        self.seq = seq
        self.preprepare: PrePrepare | None = None
        self.prepares: dict[int, Prepare] = {}
        self.commits: dict[int, Commit] = {}
        self.executed = False
        self.prior: tuple[PrePrepare, tuple[Prepare, ...]] | None = None
        # Collector mode (collector.py): the certificate phases this replica, as the
        # collector, has sent for this entry.  Volatile: after a restart it sends them again.
        self.sent_certificates: set[str] = set()

    def matching_prepares(self, primary: int) -> int:
        pp = self.preprepare
        if pp is None:
            return 0
        return sum(1 for s, p in self.prepares.items()
                   if s != primary and p.view == pp.view and p.digest == pp.digest)

    def matching_commits(self) -> list[Commit]:
        pp = self.preprepare
        if pp is None:
            return []
        return [c for c in self.commits.values() if c.view == pp.view and c.digest == pp.digest]

    def prepared(self, primary: int, need_prepares: int) -> bool:
        return self.preprepare is not None and self.matching_prepares(primary) >= need_prepares

    def committed_local(self, primary: int, need_prepares: int, quorum: int) -> bool:
        return (self.prepared(primary, need_prepares)
                and len(self.matching_commits()) >= quorum)

    def certificate(self, primary: int, need_prepares: int) -> tuple | None:
        """The newest prepared certificate held for this seq: (pre-prepare, its 2f
        matching backup prepares) if it prepared in this entry's view, else ``prior``."""
        if not self.prepared(primary, need_prepares):
            return self.prior
        pp = self.preprepare
        return pp, tuple(p for s, p in sorted(self.prepares.items())
                         if s != primary and p.view == pp.view and p.digest == pp.digest)

    # -- persistence: the pre-prepare (large, written once) apart from the votes --------
    def preprepare_record(self) -> dict | None:
        return to_wire(self.preprepare) if self.preprepare else None

    def votes_record(self) -> dict:
        out = {"prepares": [to_wire(p) for _, p in sorted(self.prepares.items())],
               "commits": [to_wire(c) for _, c in sorted(self.commits.items())]}
        if self.prior is not None:
            out["prior"] = [to_wire(self.prior[0]), [to_wire(p) for p in self.prior[1]]]
        return out

    @classmethod
    def from_records(cls, seq: int, pp: dict | None, votes: dict | None) -> "Entry":
        e = cls(seq)
        if pp is not None:
            e.preprepare = from_wire(pp)
        for w in (votes or {}).get("prepares", []):
            p = from_wire(w)
            e.prepares[p.sender] = p
        for w in (votes or {}).get("commits", []):
            c = from_wire(w)
            e.commits[c.sender] = c
        prior = (votes or {}).get("prior")
        if prior:
            e.prior = (from_wire(prior[0]), tuple(from_wire(w) for w in prior[1]))
        return e
