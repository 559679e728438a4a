"""Twins on the in-memory cluster (Bano et al., "Twins: BFT Systems Made Robust", 2020).

A twin is two replicas that share one node identity (and, on a real mesh, one key) but
run independently, each with its own state.  Together they behave like one equivocating
Byzantine node: each signs its own, possibly conflicting, pre-prepares, votes,
checkpoints, VIEW-CHANGEs and NEW-VIEWs, all valid under that identity.  No hand-written
attack is needed: the twins only have to see different messages (different requests,
in a different order), and the protocol itself makes them equivocate.

``TwinCluster`` is the simulator's ``Cluster`` (with the certificate checks of
test_stateful.CheckedCluster) where node i in ``twins`` runs two ``Replica`` objects,
twin A and twin B.  Every message to i goes to A, to B or to both (``deliver(k, to=)``;
``stabilize``/``run`` give both); both twins' outputs go out as node i's, tagged
``"<i>A"`` / ``"<i>B"`` in ``Envelope.origin`` so a test can route by author.  Node i
counts as Byzantine, so ``honest()`` and the invariants of test_stateful leave it out;
honest nodes never fetch state from it.  Subclassed here rather than built into sim.py,
so the simulator stays small.

With n = 4, f = 1 and one twinned node the honest nodes must agree (no two execute
different blocks at one height), nothing executes without 2f+1 matching commits from
distinct senders, and, since the honest nodes are 2f+1, every request commits once the
network delivers and time passes (with view changes where a twinned primary splits
the backups).
"""
from __future__ import annotations

import random
from itertools import combinations

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from pbft_tasks.core.messages import NewView, PrePrepare, Request
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import SimNode
from pbft_tasks.core.stimuli import Tick

from .test_stateful import SETTINGS, CheckedCluster, SafetyMachine, request

A, B = 0, 1
BOTH = (A, B)
N = 4


class TwinCluster(CheckedCluster):
    def __init__(self, n: int = N, twins=(), **cfg):
        super().__init__(n, **cfg)
        self.twins: dict[int, tuple[SimNode, SimNode]] = {}
        self._acting: tuple[int, int] | None = None   # the twin whose actions are applied
        for i in twins:
            self.add_twin(i)

    def add_twin(self, i: int) -> None:
        self.twins[i] = (SimNode(Replica(i, self.config)), SimNode(Replica(i, self.config)))
        self.byzantine.add(i)
        self.nodes[i].replica = None  # node i is its twins now

    def twin(self, i: int, k: int) -> SimNode:
        return self.twins[i][k]

    # -- stimuli ------------------------------------------------------------------
    def deliver(self, index: int = 0, to=BOTH) -> None:
        env = self.network[index]
        if env.to not in self.twins:
            return super().deliver(index)
        self.network.pop(index)
        for k in ((to,) if isinstance(to, int) else to):
            self._as_twin(env.to, k, lambda r: r.handle(env.msg))

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            super().tick()
            for i in self.twins:
                for k in BOTH:
                    self._as_twin(i, k, lambda r: r.handle(Tick()))

    def serve_fetches(self) -> int:
        """Honest requesters as in Cluster; a twin's requests are served the same way,
        one at a time with node i standing for that twin."""
        theirs = [(who, f) for who, f in self.fetches if isinstance(who, tuple)]
        self.fetches = [(who, f) for who, f in self.fetches if not isinstance(who, tuple)]
        served = super().serve_fetches()
        for (i, k), f in theirs:
            rest, self.fetches = self.fetches, [(i, f)]
            served += self._as_twin(i, k, lambda r: super(TwinCluster, self).serve_fetches())
            self.fetches = rest + self.fetches
        return served

    def _as_twin(self, i: int, k: int, stimulus):
        """Run ``stimulus`` with node i standing for twin k, so the Cluster's own
        _apply persists, executes and sends in that twin's name."""
        node, outer = self.twins[i][k], self.nodes[i]
        self.nodes[i], self._acting = node, (i, k)
        try:
            result = stimulus(node.replica)
            if isinstance(result, list):
                self._apply(i, result)
        finally:
            self.nodes[i], self._acting = outer, None
        return result

    def _apply(self, i, actions) -> None:
        before = len(self.fetches)
        super()._apply(i, actions)
        if self._acting is not None and self._acting[0] == i:  # a twin asks: remember which
            self.fetches[before:] = [(self._acting, f) for _, f in self.fetches[before:]]

    def _send(self, to, msg, origin) -> None:
        if self._acting is not None and self._acting[0] == origin:
            origin = f"{origin}{'AB'[self._acting[1]]}"
        super()._send(to, msg, origin)

    # -- observations -------------------------------------------------------------
    def executed_requests(self, i: int) -> list[tuple[str, int]]:
        """(client, timestamp) of every request node i executed (skipped duplicates out)."""
        out = []
        for b in self.nodes[i].blocks:
            out += [(r["client"], r["timestamp"]) for k, r in enumerate(b["requests"])
                    if k not in b["skip"]]
        return out


# -- helpers for the scenario tests ---------------------------------------------------------

# pipeline=0: each twin proposes all its batches at once (seqs 1..3 at both twins), the
# split these scenarios are built on; the proposal window (normalcase.py) would hold
# the third back until one executed.
CONFIG = dict(checkpoint_interval=2, log_window=8, max_batch=1, batch_timeout_ticks=0,
              retransmit_ticks=6, view_change_ticks=12, pipeline=0)


def deliver_first(c: TwinCluster, pred, to=BOTH) -> int:
    """Deliver every queued message matching ``pred`` (in order) before anything else."""
    count = 0
    while True:
        ks = [k for k, e in enumerate(c.network) if pred(e)]
        if not ks:
            return count
        c.deliver(ks[0], to=to)
        count += 1


def flow(c: TwinCluster, lost=lambda e: False, held=lambda e: False, to=BOTH) -> None:
    """Deliver (FIFO, to the twins ``to``) all but the messages ``held`` picks, losing
    the ones ``lost`` picks."""
    while True:
        k = next((k for k, e in enumerate(c.network) if not held(e)), None)
        if k is None:
            return
        if lost(c.network[k]):
            c.drop(k)
        else:
            c.deliver(k, to=to)


def check_honest_agree(c: TwinCluster) -> None:
    by_height: dict[int, set] = {}
    for i in c.honest():
        for b in c.nodes[i].blocks:
            by_height.setdefault(b["seq"], set()).add(b["hash"])
    forks = sorted(h for h, s in by_height.items() if len(s) > 1)
    assert not forks, f"honest replicas executed different blocks at heights {forks}"


def settle(c: TwinCluster, reqs: list[Request], rounds: int = 30) -> int:
    """The network delivers and time passes; clients whose request is not executed by
    every honest replica send it to every replica (sec. 4.1).  Returns rounds used."""
    for k in range(rounds):
        c.run()
        check_honest_agree(c)
        done = [set(c.executed_requests(i)) for i in c.honest()]
        if all((r.client, r.timestamp) in d for d in done for r in reqs):
            if len({(c.height(i), c.head(i)) for i in c.honest()}) == 1:
                return k
        for r in reqs:
            if any((r.client, r.timestamp) not in d for d in done):
                for to in range(c.config.n):
                    c.inject(to, r, origin=r.client)
        c.tick(c.config.view_change_ticks)
    heights = {i: [(b["seq"], b["view"]) for b in c.nodes[i].blocks] for i in c.honest()}
    raise AssertionError(f"honest replicas did not commit every request: {heights}")


def views(c: TwinCluster) -> dict:
    return {i: c.nodes[i].replica.view for i in c.honest()}


def assert_each_once(c: TwinCluster, reqs: list[Request]) -> None:
    for i in c.honest():
        ex = c.executed_requests(i)
        for r in reqs:
            times = ex.count((r.client, r.timestamp))
            assert times == 1, f"node {i} executed {r.client}/{r.timestamp} {times} times"


# -- (a) a twinned primary -----------------------------------------------------------------

@pytest.mark.parametrize("first_a", [s for k in range(4) for s in combinations((1, 2, 3), k)],
                         ids=lambda s: "A-first-" + ("".join(map(str, s)) or "none"))
def test_twinned_primary_with_two_batches_per_seq_cannot_split_the_honest_nodes(first_a, votes):
    """Twin A of the primary gets requests a1..a3, twin B gets b1..b3: each proposes its
    own batch for seqs 1..3.  The backups in ``first_a`` see A's pre-prepares first, the
    others B's; then everything flows to both twins.  The honest backups agree at every
    height, and every request commits exactly once (through a view change when neither
    batch reaches 2f+1)."""
    # set up
    c = TwinCluster(N, twins={0}, **CONFIG, votes=votes)
    reqs_a = [request("a", t) for t in (1, 2, 3)]
    reqs_b = [request("b", t) for t in (1, 2, 3)]
    for reqs, twin in ((reqs_a, A), (reqs_b, B)):
        for r in reqs:
            c.inject(0, r, origin=r.client)
            c.deliver(len(c.network) - 1, to=twin)
    pps = {(e.origin, e.msg.seq): e.msg.digest for e in c.network if isinstance(e.msg, PrePrepare)}
    assert sorted(pps) == [(t, s) for t in ("0A", "0B") for s in (1, 2, 3)]
    assert all(pps[("0A", s)] != pps[("0B", s)] for s in (1, 2, 3)), "the twins agreed"
    # step: split the backups, then let the network and time do the rest
    deliver_first(c, lambda e: isinstance(e.msg, PrePrepare) and e.to in first_a and e.origin == "0A")
    deliver_first(c, lambda e: isinstance(e.msg, PrePrepare) and e.to not in first_a and e.origin == "0B")
    rounds = settle(c, reqs_a + reqs_b)
    # check
    check_honest_agree(c)
    assert_each_once(c, reqs_a + reqs_b)
    print(f"\nA first at {first_a}: {c.height(1)} blocks, views {views(c)}, {rounds} rounds")


@pytest.mark.parametrize("first_a", [(1, 2), (2, 3), (1, 3)], ids=lambda s: "A-quorum-" + "".join(map(str, s)))
def test_twinned_primary_sends_the_other_batch_after_one_has_executed(first_a, votes):
    """Twin A's batch for seq 1 prepares and commits at the backups ``first_a`` (with A's
    votes, that is 2f+1) before twin B's batch for seq 1 reaches anyone; then B's
    messages flow to every backup, the odd one out first (A's messages to it are lost).
    The backups that executed A's batch must refuse B's pre-prepare (else they vote for
    it too and the odd one out executes it); the odd one out, which took B's, must end
    up with A's batch at height 1 all the same (state transfer at the next checkpoint)."""
    # set up
    c = TwinCluster(N, twins={0}, **CONFIG, votes=votes)
    reqs_a = [request("a", t) for t in (1, 2, 3)]
    reqs_b = [request("b", t) for t in (1, 2, 3)]
    for r in reqs_a[:1]:
        c.inject(0, r, origin=r.client)
        c.deliver(len(c.network) - 1, to=A)
    for r in reqs_b[:1]:
        c.inject(0, r, origin=r.client)
        c.deliver(len(c.network) - 1, to=B)
    odd = ({1, 2, 3} - set(first_a)).pop()
    # step 1: A's seq 1 commits at first_a; B's messages wait; ``odd`` hears nothing of it
    flow(c, held=lambda e: e.origin == "0B", lost=lambda e: e.to == odd, to=A)
    assert [c.height(i) for i in first_a] == [1, 1]
    # step 2: B's pre-prepare reaches the odd one out first, then everything flows
    deliver_first(c, lambda e: e.origin == "0B" and isinstance(e.msg, PrePrepare) and e.to == odd)
    for r in reqs_a[1:] + reqs_b[1:]:
        c.inject(0, r, origin=r.client)
    rounds = settle(c, reqs_a + reqs_b)
    # check
    check_honest_agree(c)
    assert_each_once(c, reqs_a + reqs_b)
    first = c.nodes[odd].blocks[0]["requests"]
    assert [(r["client"], r["timestamp"]) for r in first] == [("a", 1)]
    print(f"\nA quorum {first_a}: {c.height(odd)} blocks, views {views(c)}, {rounds} rounds")


def test_twinned_primary_keeps_equivocating_on_every_seq(votes):
    """Both twins get their own stream of 12 requests, one at a time, and each backup
    sees the twins' messages in a different order (seeded shuffle); still one chain."""
    c = TwinCluster(N, twins={0}, **CONFIG, votes=votes)
    rnd = random.Random(4)
    reqs = []
    for t in range(1, 13):
        for client, twin in (("a", A), ("b", B)):
            r = request(client, t)
            reqs.append(r)
            c.inject(0, r, origin=client)
            c.deliver(len(c.network) - 1, to=twin)
        for _ in range(40):  # a shuffled partial flow: twins get their messages apart
            ks = [k for k, e in enumerate(c.network)]
            if not ks:
                break
            c.deliver(rnd.choice(ks), to=rnd.choice([A, B, BOTH]))
        c.tick()
    settle(c, reqs)
    check_honest_agree(c)
    assert_each_once(c, reqs)


# -- (b) a twinned backup -----------------------------------------------------------------

def test_twinned_backup_that_becomes_primary_sends_two_new_views(votes):
    """Node 1 is twinned and is the primary of view 1.  The view-0 primary's
    pre-prepares are lost, so the backups' timers expire; each twin of node 1 collects
    2f+1 VIEW-CHANGEs and sends its own NEW-VIEW, then proposes its own requests for the
    same seqs.  Node 0 sees twin A's first, nodes 2 and 3 twin B's.  The honest nodes
    0, 2, 3 agree and every request commits."""
    # set up: everything before the view change flows normally
    c = TwinCluster(N, twins={1}, **CONFIG, votes=votes)
    warm = [request("w", 1)]
    c.inject(0, warm[0], origin="w")
    settle(c, warm)
    reqs_a = [request("a", t) for t in (1, 2)]
    reqs_b = [request("b", t) for t in (1, 2)]
    # step 1: requests reach the backups (the client timed out) but every pre-prepare of
    # view 0 is lost; the twins each take one client's requests
    for r in reqs_a + reqs_b:
        for to in (2, 3):
            c.inject(to, r, origin=r.client)
        c.inject(1, r, origin=r.client)
        c.deliver(len(c.network) - 1, to=A if r.client == "a" else B)
    for _ in range(4 * CONFIG["view_change_ticks"]):
        c.tick()
        flow(c, lost=lambda e: isinstance(e.msg, PrePrepare) and e.msg.view == 0,
             held=lambda e: isinstance(e.msg, NewView))
        if any(isinstance(e.msg, NewView) for e in c.network):
            break
    # step 2: each twin sent its own NEW-VIEW; node 0 hears A's first, 2 and 3 hear B's
    senders = {e.origin for e in c.network if isinstance(e.msg, NewView)}
    assert senders == {"1A", "1B"}, f"NEW-VIEWs from {senders}"
    deliver_first(c, lambda e: isinstance(e.msg, NewView) and e.to == 0 and e.origin == "1A")
    deliver_first(c, lambda e: isinstance(e.msg, NewView) and e.to in (2, 3) and e.origin == "1B")
    assert all(v >= 1 for v in views(c).values()), views(c)
    settle(c, warm + reqs_a + reqs_b)
    # check
    check_honest_agree(c)
    assert_each_once(c, warm + reqs_a + reqs_b)
    print(f"\ntwinned new primary: {c.height(0)} blocks, views {views(c)}")


@pytest.mark.parametrize("seed", range(6))
def test_twinned_backup_voting_on_what_each_twin_saw(seed, votes):
    """Node 2 is twinned; each message to it goes to one twin or both at random, so the
    twins vote, checkpoint and time out at different moments under one identity."""
    c = TwinCluster(N, twins={2}, **CONFIG, votes=votes)
    rnd = random.Random(seed)
    reqs = [request(cl, t) for t in range(1, 9) for cl in ("a", "b")]
    for r in reqs:
        c.inject(rnd.choice([0, 0, 0, 2]), r, origin=r.client)
        for _ in range(rnd.randrange(1, 30)):
            if not c.network:
                break
            c.deliver(rnd.randrange(len(c.network)), to=rnd.choice([A, B, BOTH]))
        c.tick(rnd.randrange(0, 4))
    settle(c, reqs)
    check_honest_agree(c)
    assert_each_once(c, reqs)


# -- (c) hypothesis: any routing to twin A, twin B or both ----------------------------------

ROUTES = st.sampled_from(["A", "B", "both", "split"])


class TwinsMachine(SafetyMachine):
    """SafetyMachine's network, clients, crashes and invariants (agreement, 2f+1 distinct
    matching commits in every certificate, linked chains, stable checkpoints never going
    back), with the Byzantine node a twin instead of hand-made injections: every rule
    that delivers chooses, for a message to the twinned node, twin A, twin B or both.
    A request timer of 3 ticks makes view changes (and twinned new primaries) common."""
    CONFIG = dict(SafetyMachine.CONFIG, view_change_ticks=3)

    def __init__(self):
        super().__init__()
        self.c = TwinCluster(N, **self.CONFIG)

    @initialize(twin=st.integers(0, N - 1))
    def choose_byzantine(self, twin):
        self.byz = twin
        self.c.add_twin(twin)

    @staticmethod
    def _route(route: str, rnd: random.Random):
        if route == "split":
            return rnd.choice([A, B, BOTH])
        return {"A": A, "B": B, "both": BOTH}[route]

    @precondition(lambda self: any(self.c.nodes[e.to].up for e in self.c.network))
    @rule(data=st.data(), to=st.sampled_from([A, B, BOTH]))
    def deliver(self, data, to):
        ks = self.deliverable()
        self.c.deliver(ks[data.draw(st.integers(0, len(ks) - 1), label="deliver")], to=to)

    @precondition(lambda self: any(self.c.nodes[e.to].up for e in self.c.network))
    @rule(count=st.integers(1, 80), seed=st.integers(0, 2**16), route=ROUTES,
          fifo=st.booleans())
    def deliver_many(self, count, seed, route, fifo):
        rnd = random.Random(seed)
        for _ in range(count):
            ks = self.deliverable()
            if not ks:
                return
            self.c.deliver(ks[0] if fifo else rnd.choice(ks), to=self._route(route, rnd))

    @precondition(lambda self: any(self.c.nodes[e.to].up for e in self.c.network))
    @rule(seed=st.integers(0, 2**16), route=ROUTES, fifo=st.booleans())
    def flow(self, seed, route, fifo):
        rnd = random.Random(seed)
        for _ in range(2000):
            ks = self.deliverable()
            if not ks:
                return
            self.c.deliver(ks[0] if fifo else rnd.choice(ks), to=self._route(route, rnd))

    @precondition(lambda self: len(self.submitted) < self.MAX_REQUESTS - 1)
    @rule(count=st.integers(1, 2))
    def twins_get_different_requests(self, count):
        """Client a's requests reach twin A only, client b's twin B only (a broker that
        round-robins node i's queue between its two processes does this): a twinned
        primary then proposes two batches for one seq."""
        for client, twin in (("a", A), ("b", B)):
            for _ in range(count):
                req = request(client, self.next_ts[client])
                self.next_ts[client] += 1
                self.submitted.append(req)
                self.c.inject(self.byz, req, origin=client)
                self.c.deliver(len(self.c.network) - 1, to=twin)

    # the twins are the Byzantine node: no hand-made injections on top
    byzantine_preprepare = byzantine_equivocate = byzantine_vote = byzantine_checkpoint = None
    byzantine_certificate = None

    @invariant()
    def twins_never_fork_from_the_honest_nodes(self):
        """A twin executes only with 2f+1 commits, f+1 of them honest: its chain is a
        prefix-compatible copy of the honest one too (a fork here would mean two
        certificates for one seq)."""
        honest = {b["seq"]: b["hash"] for i in self.honest() for b in self.c.nodes[i].blocks}
        for k in BOTH:
            for b in self.c.twin(self.byz, k).blocks:
                assert honest.get(b["seq"], b["hash"]) == b["hash"], \
                    f"twin {'AB'[k]} of node {self.byz} executed another block at {b['seq']}"

    def teardown(self):
        views = [n.replica.view for n in self.c.nodes if n.replica is not None]
        event(f"twinned node {self.byz}; highest honest view {min(max(views, default=0), 3)}")
        super().teardown()


TestTwins = TwinsMachine.TestCase
TestTwins.settings = settings(SETTINGS, max_examples=600)


class CollectorTwinsMachine(TwinsMachine):
    """The same with collector vote routing (core/collector.py): a twinned primary is
    a twinned collector, each twin forming its own certificates."""
    CONFIG = dict(TwinsMachine.CONFIG, votes="collector")


TestCollectorTwins = CollectorTwinsMachine.TestCase
TestCollectorTwins.settings = settings(SETTINGS, max_examples=300)
