"""The message log of one sequence number, and the predicates over it (Castro and Liskov
1999, sec. 4.2).

Owns: ``Log``, the entries by sequence number, changed only through its own methods
(tests/core/test_owners.py checks that no other class writes an ``Entry``); and
``Entry``, what a replica has accepted for a sequence number in the current view (the
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
- What is durable is derived, not flagged (etcd raft's ``prevHardSt``): the durable part
  of an entry (``Entry.durable``) is its pre-prepare, this replica's own prepare and
  commit, and ``prior``.  Each ``Log`` method that changes an entry first remembers its
  durable part as it was before the step (``_touch``); ``changes`` compares the two and
  names the ``pp/`` and ``votes/`` records to write or delete.  A peer's vote on its own
  changes nothing durable: a vote short of a quorum commits this replica to nothing and
  peers send it again; the votes held are written with this replica's next own vote (the
  one that completes a certificate) and in the executed block's 2f+1 commits.
"""
from __future__ import annotations

from .messages import Commit, PrePrepare, Prepare, from_wire, to_wire


class Entry:
    __slots__ = ("seq", "preprepare", "prepares", "commits", "executed", "prior", "sent_certificates")

    def __init__(self, seq: int, preprepare: PrePrepare | None = None,
                 commits: dict[int, Commit] | None = None, executed: bool = False,
                 prior: tuple | None = None):
        self.seq = seq
        self.preprepare: PrePrepare | None = preprepare
        self.prepares: dict[int, Prepare] = {}
        self.commits: dict[int, Commit] = dict(commits or {})
        self.executed = executed
        self.prior: tuple[PrePrepare, tuple[Prepare, ...]] | None = prior
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

    def durable(self, me: int) -> tuple | None:
        """What a restart must find again (see the rules above), None if nothing."""
        out = (self.preprepare, self.prepares.get(me), self.commits.get(me), self.prior)
        return None if out == _NOTHING else out

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
    def from_records(cls, seq: int, pp: dict | None, votes: dict | None,
                     executed: bool = False) -> "Entry":
        e = cls(seq, executed=executed)
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


_NOTHING = (None, None, None, None)
_NO_VOTES = (None, None, None)


class Log:
    """The entries by sequence number: read as a mapping, changed only by these methods.
    ``me`` is this replica's id (its own votes are durable, see the rules above)."""

    __slots__ = ("me", "_entries", "_before")

    def __init__(self, me: int):
        self.me = me
        self._entries: dict[int, Entry] = {}
        self._before: dict[int, tuple | None] = {}  # seq -> durable part before this step

    # -- reading ------------------------------------------------------------------------
    def __contains__(self, seq: object) -> bool:
        return seq in self._entries

    def __getitem__(self, seq: int) -> Entry:
        return self._entries[seq]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, seq: int, default: Entry | None = None) -> Entry | None:
        return self._entries.get(seq, default)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    # -- changing -----------------------------------------------------------------------
    def _touch(self, seq: int) -> None:
        if seq not in self._before:
            e = self._entries.get(seq)
            self._before[seq] = e.durable(self.me) if e is not None else None

    def entry(self, seq: int) -> Entry:
        """The entry for ``seq``, a new empty one if there is none (nothing durable)."""
        e = self._entries.get(seq)
        if e is None:
            e = self._entries[seq] = Entry(seq)
        return e

    def set_preprepare(self, seq: int, pp: PrePrepare) -> Entry:
        self._touch(seq)
        e = self.entry(seq)
        e.preprepare = pp
        return e

    def add_vote(self, vote: Prepare | Commit) -> Prepare | Commit | None:
        """Count ``vote`` as its sender's for its seq; if the sender already voted, change
        nothing and return that earlier vote."""
        self._touch(vote.seq)
        votes = self.entry(vote.seq).prepares if type(vote) is Prepare else self.entry(vote.seq).commits
        old = votes.get(vote.sender)
        if old is None:
            votes[vote.sender] = vote
        return old

    def executed(self, seq: int) -> None:
        self._entries[seq].executed = True

    def certificate_sent(self, seq: int, phase: str) -> bool:
        """Note that the certificate ``phase`` of ``seq`` went out; False if it had before."""
        sent = self._entries[seq].sent_certificates
        if phase in sent:
            return False
        sent.add(phase)
        return True

    def put(self, entry: Entry) -> None:
        """``entry`` replaces whatever the log held for its seq (a new view, a fetched block)."""
        self._touch(entry.seq)
        self._entries[entry.seq] = entry

    def drop(self, seqs: list[int]) -> None:
        for s in seqs:
            self._touch(s)
            del self._entries[s]

    def restore(self, entry: Entry) -> None:
        """An entry read back from its records at start-up (nothing to write)."""
        self._entries[entry.seq] = entry

    # -- what changed -------------------------------------------------------------------
    def changes(self) -> dict:
        """The ``pp/`` and ``votes/`` records (None = delete) whose durable part this step
        changed; forgets the step."""
        out: dict = {}
        for s, before in self._before.items():
            e = self._entries.get(s)
            after = e.durable(self.me) if e is not None else None
            if after == before:
                continue
            if after is None:
                out[f"pp/{s}"] = out[f"votes/{s}"] = None
                continue
            if before is None or before[0] != after[0]:
                out[f"pp/{s}"] = e.preprepare_record()
            if (before[1:] if before else _NO_VOTES) != after[1:]:
                out[f"votes/{s}"] = e.votes_record()
        self._before = {}
        return out
