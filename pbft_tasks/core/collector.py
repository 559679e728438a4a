"""Collector vote routing: votes go to one replica, which forwards them as a certificate
(SBFT, Gueta et al. 2019, sec. IV; HotStuff's leader-collected votes), an option beside
PBFT's all-to-all votes (Castro and Liskov 1999, sec. 4.2).

Owns: the vote routing setting (``ReplicaConfig.votes``: ``"all-to-all"`` or
``"collector"``), where a replica's own PREPARE and COMMIT go (``_send_vote``), when the
collector forms and sends a CERTIFICATE (``_collect``), the pure check of a received
certificate (``check_certificate``) and the replica's handling of one
(``_on_certificate``).  ``Collector`` is a mixin of ``Replica`` (replica.py); it reads
the replica's ``view`` and ``cfg``, takes log entries from the ``Window``
(checkpoints.py), fills in their votes and ``sent_certificates`` through its ``Log``
(log.py), and tells the
catch-up state (catchup.py) what it saw ahead.

Why.  All-to-all PREPARE and COMMIT cost O(n^2) messages a batch; on the 2-core machine
every message is a task run of ~0.75 ms, so CPU per message, not bandwidth, bounds
latency and throughput.  With a collector each phase costs O(n) messages:
backups send their vote to the collector only, the collector sends one certificate to
every replica.

Rules (tests/core/test_collector.py; every safety test of the core runs in both modes):
- The collector of (view, seq) is the primary of that view: the replica that already
  orders requests, and the one a view change replaces.
- A backup sends its PREPARE and COMMIT to the collector only (in all-to-all mode: to
  every replica).  The collector keeps its own COMMIT and sends it inside the commit
  certificate.
- Once it has prepared (the pre-prepare and 2f matching prepares from backups) the
  collector sends every replica a prepare CERTIFICATE with exactly those 2f prepares;
  once it holds 2f+1 matching commits (its own included) and has prepared, a commit
  CERTIFICATE with 2f+1 of them.  Each at most once per entry; again on retransmission
  and to a peer that is behind.
- A certificate is well-formed only if it is sent by the primary of its view, all its
  votes are of its phase and match its view, seq and digest, come from distinct
  replicas in 0..n-1 (a prepare never from the primary), and there are at least 2f
  prepares or 2f+1 commits.  Anything else makes the whole certificate evidence
  (``bad_certificate``) and changes nothing.
- A well-formed certificate passes the same view, watermark and hold checks as a vote
  (normalcase.py ``_admit``), then each vote in it counts exactly as if it had been
  received on its own: one vote per sender, a second digest is equivocation evidence.
  The replica's own vote inside it is skipped (it has it).  So safety is PBFT's: a
  replica acts only on 2f+1 votes whose signatures its adapter checked (the adapter
  verifies every vote in a certificate, pbft_tasks/signing.py).
- Votes that come directly (a peer in all-to-all mode, or a retransmission) are counted
  as well, in either mode.
- A replica that moved to a later view alone (its request timer expired while the
  others kept committing, e.g. behind a busy collector) and receives a well-formed
  commit certificate of the earlier view above its last executed seq marks itself
  behind (``seen_ahead``): the stuck check then fetches the committed blocks by state
  transfer (catchup.py), rather than waiting for the next checkpoint.
- A collector that withholds certificates stalls the backups' request timers: a view
  change replaces it as any faulty primary (viewchange.py).  A replica that prepared
  from a certificate holds the 2f signed prepares, so its VIEW-CHANGE proves it exactly
  as in all-to-all mode.
- No SBFT fast path (3f+1 prepares without a commit phase) and no fallback to
  all-to-all: neither is needed for safety or liveness here, and neither is shown safe
  in this code base's simulator and Twins tests.
"""
from __future__ import annotations

from . import quorum as Q
from .actions import Broadcast, Send
from .log import Entry
from .messages import Certificate, Commit, Prepare

ALL_TO_ALL = "all-to-all"
COLLECTOR = "collector"
VOTE_ROUTINGS = (ALL_TO_ALL, COLLECTOR)


def check_certificate(cert: Certificate, n: int) -> str | None:
    """None if ``cert`` is a well-formed certificate for a mesh of ``n``, else why not."""
    primary = Q.primary(cert.view, n)
    if cert.sender != primary:
        return f"certificate for view {cert.view} from {cert.sender}, its collector is {primary}"
    kind = Prepare if cert.phase == "prepare" else Commit
    senders = set()
    for v in cert.votes:
        if type(v) is not kind:
            return f"a {type(v).__name__} in a {cert.phase} certificate"
        if (v.view, v.seq, v.digest) != (cert.view, cert.seq, cert.digest):
            return f"vote from {v.sender} for v{v.view} n{v.seq} in a certificate for v{cert.view} n{cert.seq}"
        if not 0 <= v.sender < n or v.sender in senders:
            return f"vote from {v.sender}: unknown or repeated sender"
        if kind is Prepare and v.sender == primary:
            return "a prepare from the primary"
        senders.add(v.sender)
    need = Q.prepared_quorum(n) if kind is Prepare else Q.quorum(n)
    if len(senders) < need:
        return f"{len(senders)} {cert.phase} votes, {need} needed"
    return None


class Collector:
    """Vote routing: where own votes go, and the collector's certificates."""

    @property
    def _collecting(self) -> bool:
        return self.cfg.votes == COLLECTOR

    def _send_vote(self, vote: Prepare | Commit, cause: str) -> None:
        """Send this replica's own vote: to all, or to the collector of its view."""
        if not self._collecting:
            self._msg(Broadcast(vote, cause))
            return
        collector = Q.primary(vote.view, self.n)
        if collector != self.id:  # the collector counts its own vote and sends it in a certificate
            self._msg(Send(collector, vote, cause))

    def _collect(self, entry: Entry, cause: str) -> None:
        """The collector sends each certificate of ``entry`` once it can."""
        if not self._collecting or entry.preprepare is None:
            return
        for cert in self._certificates(entry):
            if self.window.log.certificate_sent(entry.seq, cert.phase):
                self._msg(Broadcast(cert, cause))

    def _certificates(self, entry: Entry) -> list[Certificate]:
        """The certificates this replica, as collector, can make for ``entry`` now."""
        pp = entry.preprepare
        if pp is None or Q.primary(pp.view, self.n) != self.id or pp.view != self.view:
            return []
        primary = self.id
        if not entry.prepared(primary, self.need_prepares):
            return []
        prepares = tuple(p for s, p in sorted(entry.prepares.items())
                         if s != primary and p.view == pp.view and p.digest == pp.digest)
        out = [Certificate(pp.view, pp.seq, pp.digest, "prepare", prepares[: self.need_prepares], self.id)]
        commits = sorted(entry.matching_commits(), key=lambda c: c.sender)
        if len(commits) >= self.quorum:
            out.append(Certificate(pp.view, pp.seq, pp.digest, "commit", tuple(commits[: self.quorum]), self.id))
        return out

    def _resend_certificates(self, entry: Entry, to: int | None, cause: str) -> None:
        """Retransmission: the certificates again, to ``to`` or (None) to every replica."""
        if not self._collecting or entry.preprepare is None:
            return
        for cert in self._certificates(entry):
            self.window.log.certificate_sent(entry.seq, cert.phase)
            self._msg(Broadcast(cert, cause) if to is None else Send(to, cert, cause))

    def _on_certificate(self, cert: Certificate, cause: str) -> None:
        reason = check_certificate(cert, self.n)
        if reason:
            return self._evidence(cert.sender, "bad_certificate", reason, cause)
        if cert.phase == "commit" and cert.view < self.view and cert.seq > self.last_exec:
            # This replica left the view the others still commit in (its request timer
            # expired alone, sec. 4.5.2): 2f+1 signed commits prove f+1 honest replicas
            # executed ``seq``, so the stuck check fetches the blocks (checked block by
            # block as ever) instead of waiting for the next checkpoint.
            # Each signed commit inside counts as its sender seen at ``seq`` (the f+1 rule
            # of catchup.py: 2f+1 distinct signers are more than f+1).
            for v in cert.votes:
                self.catchup.saw_ahead(v.sender, cert.seq)
        if not self._admit(cert, cause):
            return
        entry = self.window.entry(cert.seq)
        for v in cert.votes:
            if v.sender == self.id:
                continue  # our own vote: we have it (persisted before we sent it)
            old = self.window.log.add_vote(v)
            if old is not None and old.digest != v.digest:
                self._evidence(v.sender, "equivocation",
                               f"{type(v).__name__} seq {v.seq}: digests {old.digest[:12]} and "
                               f"{v.digest[:12]} (one in a certificate from {cert.sender})", cause)
        self._check(entry, cause)
