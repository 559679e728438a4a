"""Hypothesis stateful tests on the in-memory cluster (raiden's
tests/fuzz/test_state_changes.py).

``SafetyMachine`` lets the network deliver any queued message, drop, duplicate and
reorder; ticks; clients submit and retransmit; one honest replica at a time crashes
(optionally losing its queue) and restarts; and up to f = 1 replica is Byzantine and
equivocates (conflicting pre-prepares if it is the primary, to one backup at a time or
two batches to two sets of backups at once; prepares, commits and checkpoints with
real or made-up digests, each to whichever replica it likes).  After every step:

- agreement: no two honest replicas hold different blocks at one height;
- nothing executes without 2f+1 matching commits from distinct replicas in its
  certificate, and an honest sender in a certificate really sent that commit;
- each replica's stable checkpoint h never goes backwards (restarts included);
- every chain is linked: seq k's block has prev = hash of block k-1.

``LivenessMachine`` keeps the faults the core can recover from without a view change
or state transfer (no drops, no lost queues, an honest primary, a window larger than
the run) and at teardown checks that, once faults stop and messages flow, the honest
replicas converge and every request is answered by f+1 replicas.
"""
from __future__ import annotations

import random

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from pbft_tasks.core import quorum as Q
from pbft_tasks.core.actions import Broadcast, Execute, Send
from pbft_tasks.core.chain import GENESIS, block_hash
from pbft_tasks.core.messages import (Certificate, Checkpoint, Commit, PrePrepare, Prepare, Request,
                                      batch_digest)
from pbft_tasks.core.sim import Cluster

from .helpers import fake_digest

N = 4
F = Q.max_faulty(N)
QUORUM = Q.quorum(N)

SETTINGS = settings(max_examples=300, stateful_step_count=60, deadline=None,
                    derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


class CheckedCluster(Cluster):
    """A Cluster that checks every Execute against the commits actually sent."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sent_commits: set[tuple] = set()
        self.sent_votes: set = set()  # every Prepare and Commit a replica really sent
        self.executed = 0

    def _apply(self, i, actions):
        for a in actions:
            if isinstance(a, (Broadcast, Send)):
                # a vote on its own, or (collector mode) the collector's own commit
                # inside its certificate
                votes = a.msg.votes if isinstance(a.msg, Certificate) else (a.msg,)
                for m in votes:
                    if isinstance(m, (Prepare, Commit)) and (m.sender == i or i in self.byzantine):
                        self.sent_votes.add(m)
                    if isinstance(m, Commit) and m.sender == i:
                        self.sent_commits.add((m.sender, m.view, m.seq, m.digest))
        for a in actions:
            if isinstance(a, Execute):
                self.executed += 1
                check_certificate(self, a)
        super()._apply(i, actions)


def check_certificate(c: CheckedCluster, ex: Execute) -> None:
    block = ex.block
    cert = ex.certificate
    assert len(cert) == QUORUM, f"seq {ex.seq}: certificate of {len(cert)} commits"
    assert len({m.sender for m in cert}) == QUORUM, "certificate repeats a sender"
    for m in cert:
        assert isinstance(m, Commit)
        assert (m.view, m.seq, m.digest) == (block["view"], ex.seq, block["digest"]), \
            f"seq {ex.seq}: commit {m} does not match the block"
        if m.sender not in c.byzantine:
            assert (m.sender, m.view, m.seq, m.digest) in c.sent_commits, \
                f"honest {m.sender} never sent {m}"


def request(client: str, ts: int) -> Request:
    return Request(client, ts, {"op": "put", "key": f"{client}{ts % 3}", "value": ts,
                                "expires_at": None})


class SafetyMachine(RuleBasedStateMachine):
    LIVENESS = False
    CONFIG = dict(checkpoint_interval=2, log_window=4, max_batch=2, batch_timeout_ticks=1,
                  retransmit_ticks=4)
    MAX_REQUESTS = 40

    def __init__(self):
        super().__init__()
        self.c = CheckedCluster(N, **self.CONFIG)
        self.byz: int | None = None
        self.down: int | None = None
        self.submitted: list[Request] = []
        self.next_ts = {"a": 1, "b": 1}
        self.max_h = [0] * N

    # -- set up ------------------------------------------------------------------
    @initialize(data=st.data())
    def choose_byzantine(self, data):
        choices = [None, 1, 2, 3] if self.LIVENESS else [None, 0, 1, 2, 3]
        self.byz = data.draw(st.sampled_from(choices), label="byzantine")
        if self.byz is not None:
            self.c.byzantine.add(self.byz)

    # -- helpers ---------------------------------------------------------------
    def honest(self) -> list[int]:
        return [i for i in range(N) if i != self.byz]

    def deliverable(self) -> list[int]:
        return [k for k, e in enumerate(self.c.network) if self.c.nodes[e.to].up]

    def frontier(self) -> int:
        return max(self.c.height(i) for i in self.honest())

    def real_digests(self, seq: int) -> list[str]:
        out = []
        for i in self.honest():
            r = self.c.nodes[i].replica
            if r is not None and seq in r.window.log and r.window.log[seq].preprepare is not None:
                out.append(r.window.log[seq].preprepare.digest)
        return out

    # -- network -----------------------------------------------------------------
    @precondition(lambda self: any(self.c.nodes[e.to].up for e in self.c.network))
    @rule(data=st.data())
    def deliver(self, data):
        ks = self.deliverable()
        self.c.deliver(ks[data.draw(st.integers(0, len(ks) - 1), label="deliver")])

    @precondition(lambda self: any(self.c.nodes[e.to].up for e in self.c.network))
    @rule(count=st.integers(1, 80), seed=st.one_of(st.none(), st.integers(0, 2**16)))
    def deliver_many(self, count, seed):
        """The network works for a while: FIFO, or in a seeded random order."""
        rnd = random.Random(seed) if seed is not None else None
        for _ in range(count):
            ks = self.deliverable()
            if not ks:
                return
            self.c.deliver(rnd.choice(ks) if rnd else ks[0])

    @precondition(lambda self: any(self.c.nodes[e.to].up for e in self.c.network))
    @rule(seed=st.one_of(st.none(), st.integers(0, 2**16)))
    def flow(self, seed):
        """Deliver until nothing deliverable is queued (bounded), FIFO or shuffled."""
        rnd = random.Random(seed) if seed is not None else None
        for _ in range(2000):
            ks = self.deliverable()
            if not ks:
                return
            self.c.deliver(rnd.choice(ks) if rnd else ks[0])

    @precondition(lambda self: not self.LIVENESS and self.c.network)
    @rule(data=st.data())
    def drop(self, data):
        self.c.drop(data.draw(st.integers(0, len(self.c.network) - 1), label="drop"))

    @precondition(lambda self: self.c.network)
    @rule(data=st.data())
    def duplicate(self, data):
        self.c.duplicate(data.draw(st.integers(0, len(self.c.network) - 1), label="dup"))

    @precondition(lambda self: len(self.c.network) > 1)
    @rule(seed=st.one_of(st.none(), st.integers(0, 2**16)))
    def reorder(self, seed):
        if seed is None:
            self.c.network.reverse()
        else:
            random.Random(seed).shuffle(self.c.network)

    @rule(times=st.integers(1, 5))
    def tick(self, times):
        self.c.tick(times)

    # -- clients ---------------------------------------------------------------
    @precondition(lambda self: len(self.submitted) < self.MAX_REQUESTS)
    @rule(client=st.sampled_from(["a", "b"]), count=st.integers(1, 4),
          to=st.one_of(st.none(), st.integers(0, N - 1)))
    def submit(self, client, count, to):
        for _ in range(min(count, self.MAX_REQUESTS - len(self.submitted))):
            req = request(client, self.next_ts[client])
            self.next_ts[client] += 1
            self.submitted.append(req)
            self.c.inject(0 if to is None else to, req, origin=client)

    @precondition(lambda self: self.submitted)
    @rule(data=st.data(), to=st.integers(0, N - 1))
    def retransmit_request(self, data, to):
        req = data.draw(st.sampled_from(self.submitted), label="request")
        self.c.inject(to, req, origin=req.client)

    # -- crashes ---------------------------------------------------------------
    @precondition(lambda self: self.down is None)
    @rule(data=st.data(), lose_queue=st.booleans())
    def crash(self, data, lose_queue):
        i = data.draw(st.sampled_from(self.honest()), label="crash")
        self.c.crash(i, lose_queue=lose_queue and not self.LIVENESS)
        self.down = i

    @precondition(lambda self: self.down is not None)
    @rule()
    def restart(self):
        self.c.restart(self.down)
        self.down = None

    # -- Byzantine behaviour -------------------------------------------------------
    @precondition(lambda self: self.byz == 0)
    @rule(data=st.data(), to=st.integers(1, N - 1), value=st.integers(0, 3))
    def byzantine_preprepare(self, data, to, value):
        """The Byzantine primary proposes a batch of its own to one backup; different
        backups get different batches for the same seq."""
        seq = self.frontier() + data.draw(st.integers(1, 3), label="seq")
        batch = (Request("z", value, {"op": "put", "key": "z", "value": value,
                                      "expires_at": None}),) if value else ()
        self.c.inject(to, PrePrepare(0, seq, batch_digest(batch), batch, 0), origin=0)

    @precondition(lambda self: self.byz == 0)
    @rule(data=st.data(), first=st.sets(st.integers(1, N - 1), min_size=1),
          second=st.sets(st.integers(1, N - 1), min_size=1), value=st.integers(1, 3))
    def byzantine_equivocate(self, data, first, second, value):
        """The Byzantine primary sends batch A to some backups and batch B to others
        (the sets may overlap) for one seq, and votes for both."""
        seq = self.frontier() + data.draw(st.integers(1, 2), label="seq")
        for batch, targets in (((request("z", value),), first), ((request("z", value + 10),), second)):
            pp = PrePrepare(0, seq, batch_digest(batch), batch, 0)
            for to in sorted(targets):
                self.c.inject(to, pp, origin=0)
                self.c.inject(to, Commit(0, seq, pp.digest, 0), origin=0)

    @precondition(lambda self: self.byz is not None)
    @rule(data=st.data(), kind=st.sampled_from([Prepare, Commit]),
          to=st.integers(0, N - 1), real=st.booleans(), word=st.integers(0, 3))
    def byzantine_vote(self, data, kind, to, real, word):
        seq = self.frontier() + data.draw(st.integers(0, 3), label="seq")
        digests = self.real_digests(seq) if real else []
        digest = data.draw(st.sampled_from(digests), label="digest") if digests \
            else fake_digest(f"byz{word}")
        if to != self.byz and seq >= 1:
            self.c.inject(to, kind(0, seq, digest, self.byz), origin=self.byz)

    @precondition(lambda self: self.byz is not None)
    @rule(to=st.integers(0, N - 1), word=st.integers(0, 3), ahead=st.integers(0, 2))
    def byzantine_checkpoint(self, to, word, ahead):
        k = self.CONFIG["checkpoint_interval"]
        seq = (self.frontier() // k + ahead) * k
        if to != self.byz and seq >= k:
            self.c.inject(to, Checkpoint(seq, fake_digest(f"state{word}"), self.byz),
                          origin=self.byz)

    @precondition(lambda self: self.byz is not None and self.CONFIG.get("votes") == "collector")
    @rule(data=st.data(), to=st.integers(0, N - 1), phase=st.sampled_from(["prepare", "commit"]),
          real=st.booleans(), word=st.integers(0, 3))
    def byzantine_certificate(self, data, to, phase, real, word):
        """Collector mode: the Byzantine node sends a certificate in its own name made of
        any votes it could hold (votes really sent, in the simulator where the adapter's
        signature check cannot be forged) plus votes of its own with any digest; too few
        votes, or for a view it does not lead, is evidence."""
        seq = self.frontier() + data.draw(st.integers(0, 3), label="seq")
        view = data.draw(st.sampled_from([0, self.byz]), label="view")
        digests = self.real_digests(seq) if real else []
        digest = data.draw(st.sampled_from(digests), label="digest") if digests \
            else fake_digest(f"byz{word}")
        kind = Prepare if phase == "prepare" else Commit
        known = sorted((v for v in self.c.sent_votes if type(v) is kind and v.sender != self.byz
                        and (v.view, v.seq, v.digest) == (view, seq, digest)), key=lambda v: v.sender)
        chosen = data.draw(st.lists(st.sampled_from(known), unique=True), label="votes") if known else []
        if kind is Commit or view % N != self.byz:
            chosen.append(kind(view, seq, digest, self.byz))
        event(f"byzantine {phase} certificate, {min(len(chosen), 3)}{'+' if len(chosen) > 3 else ''} votes")
        if to != self.byz and seq >= 1:
            self.c.inject(to, Certificate(view, seq, digest, phase, tuple(chosen), self.byz),
                          origin=self.byz)

    # -- invariants -----------------------------------------------------------------
    @invariant()
    def agreement(self):
        by_height: dict[int, set[str]] = {}
        for i in self.honest():
            for b in self.c.nodes[i].blocks:
                by_height.setdefault(b["seq"], set()).add(b["hash"])
        forks = {h: s for h, s in by_height.items() if len(s) > 1}
        if forks:
            detail = {i: [(b["seq"], b["view"], b["digest"][:8]) for b in self.c.nodes[i].blocks]
                      for i in self.honest()}
            raise AssertionError(f"honest replicas disagree at heights {sorted(forks)}: {detail}")

    @invariant()
    def chains_are_linked(self):
        for i in self.honest():
            prev = GENESIS
            for k, b in enumerate(self.c.nodes[i].blocks, start=1):
                assert b["seq"] == k and b["prev"] == prev and b["hash"] == block_hash(b)
                prev = b["hash"]

    @invariant()
    def stable_checkpoints_never_go_backwards(self):
        for i in self.honest():
            r = self.c.nodes[i].replica
            if r is None:
                continue
            assert r.window.h >= self.max_h[i], f"replica {i}: h went from {self.max_h[i]} to {r.window.h}"
            assert r.window.h <= r.last_exec and r.window.high == r.window.h + self.CONFIG["log_window"]
            self.max_h[i] = r.window.h


class LivenessMachine(SafetyMachine):
    LIVENESS = True
    # A window larger than any run: a lagging replica never needs state transfer.
    CONFIG = dict(checkpoint_interval=2, log_window=32, max_batch=2, batch_timeout_ticks=1,
                  retransmit_ticks=4)
    MAX_REQUESTS = 8

    def settle(self) -> None:
        for _ in range(10):
            self.c.run()
            self.c.tick(self.CONFIG["retransmit_ticks"])
            if not self.deliverable():
                break

    def teardown(self):
        # faults stop: the crashed replica comes back, messages flow, time passes
        if self.down is not None:
            self.restart()
        self.settle()
        # clients retransmit what the primary may have lost in a crash
        for req in self.submitted:
            self.c.inject(0, req, origin=req.client)
        self.settle()
        honest = self.honest()
        heads = {i: (self.c.height(i), self.c.head(i)) for i in honest}
        assert len(set(heads.values())) == 1, f"honest replicas did not converge: {heads}"
        for req in self.submitted:
            senders = {rep.sender for rep in self.c.replies[req.client]
                       if any(r["timestamp"] == req.timestamp for r in rep.results)}
            assert len(senders) >= F + 1, f"{req.client}/{req.timestamp} answered by {senders}"


TestSafety = SafetyMachine.TestCase
TestSafety.settings = SETTINGS
TestLiveness = LivenessMachine.TestCase
TestLiveness.settings = settings(SETTINGS, max_examples=150)


class ViewChangeSafetyMachine(SafetyMachine):
    """The same faults with a request timer of 3 ticks: drops, crashes and an
    equivocating primary now also trigger view changes (sec. 4.4), often several in a
    row, and the safety invariants above must still hold across views."""
    CONFIG = dict(SafetyMachine.CONFIG, view_change_ticks=3)

    def teardown(self):
        views = [n.replica.view for n in self.c.nodes if n.replica is not None]
        event(f"highest view reached: {min(max(views, default=0), 3)}{'+' if max(views, default=0) > 3 else ''}")
        super().teardown()


TestViewChangeSafety = ViewChangeSafetyMachine.TestCase
TestViewChangeSafety.settings = SETTINGS


# Every machine again with collector vote routing (core/collector.py).
class CollectorSafetyMachine(SafetyMachine):
    CONFIG = dict(SafetyMachine.CONFIG, votes="collector")


class CollectorLivenessMachine(LivenessMachine):
    CONFIG = dict(LivenessMachine.CONFIG, votes="collector")


class CollectorViewChangeSafetyMachine(ViewChangeSafetyMachine):
    CONFIG = dict(ViewChangeSafetyMachine.CONFIG, votes="collector")


TestCollectorSafety = CollectorSafetyMachine.TestCase
TestCollectorSafety.settings = SETTINGS
TestCollectorLiveness = CollectorLivenessMachine.TestCase
TestCollectorLiveness.settings = settings(SETTINGS, max_examples=150)
TestCollectorViewChangeSafety = CollectorViewChangeSafetyMachine.TestCase
TestCollectorViewChangeSafety.settings = SETTINGS


# And with the status exchange (core/status.py): statuses every 3 ticks set fetch targets
# and hold back a request timer; drops, crashes, an equivocating replica and view changes
# must still leave one history, and a lagging replica must still converge.
class StatusViewChangeSafetyMachine(ViewChangeSafetyMachine):
    CONFIG = dict(ViewChangeSafetyMachine.CONFIG, status_ticks=3)


class StatusLivenessMachine(LivenessMachine):
    CONFIG = dict(LivenessMachine.CONFIG, status_ticks=3)


TestStatusViewChangeSafety = StatusViewChangeSafetyMachine.TestCase
TestStatusViewChangeSafety.settings = SETTINGS
TestStatusLiveness = StatusLivenessMachine.TestCase
TestStatusLiveness.settings = settings(SETTINGS, max_examples=150)
