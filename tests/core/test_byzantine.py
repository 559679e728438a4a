"""Paper tests for Byzantine behaviours: one faulty replica of n = 4 runs an
honest core whose output is perverted (pbft_tasks/core/byzantine.py), in the simulator.

Castro and Liskov 1999, sec. 4.5: with at most f faulty replicas, correct replicas
agree on the requests that commit at each sequence number (safety), and clients
eventually get their replies (liveness); a client trusts a result once f+1 replicas
sent it (sec. 4.1).  Each test sets up a Cluster with ``behaviours={node: spec}``,
steps it (clients send every request to every replica, as after their timeout, then
messages flow and time passes), and checks:

- agreement: every honest replica holds the same block at every height;
- every request executed exactly once on every honest replica;
- nothing executed without 2f+1 matching commits from distinct replicas, each of which
  its sender really sent over the network (a forged or dropped one does not count);
- the client's f+1 rule yields the honest replicas' result for every request;
- what is particular to the behaviour: a view change for a faulty primary that stalls
  progress, evidence or rejected counts where the core or the verifier sees them.
"""
from __future__ import annotations

from collections import Counter

import pytest

from pbft_tasks.core import quorum as Q
from pbft_tasks.core.actions import Broadcast, Evidence, Execute, Persist
from pbft_tasks.core.byzantine import (BEHAVIOURS, Byzantine, conflicting_batch, falsify_result,
                                       parse_behaviours)
from pbft_tasks.core.messages import Certificate, Checkpoint, Commit, PrePrepare, Prepare, Request, batch_digest
from pbft_tasks.core.sim import Cluster

N = 4
F = Q.max_faulty(N)
CONFIG = dict(checkpoint_interval=4, log_window=8, max_batch=2, batch_timeout_ticks=1,
              retransmit_ticks=10, view_change_ticks=20)
STALLS = {"equivocate", "silent", "forge", "nosig"}  # as primary: no progress without a view change


class Watched(Cluster):
    """A Cluster that checks every honest Execute against the commits really sent."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.wire_commits: set[tuple] = set()   # (sender, view, seq, digest) that left
        self.from_node: Counter = Counter()      # node-signed messages that left each node

    def _send(self, to, msg, origin):
        before = len(self.network)
        super()._send(to, msg, origin)
        if len(self.network) > before and not isinstance(msg, Request):
            self.from_node[origin] += 1
            # a commit on its own, or (collector mode) the collector's own inside its certificate
            for m in (msg.votes if isinstance(msg, Certificate) else (msg,)):
                if isinstance(m, Commit) and m.sender == origin:
                    self.wire_commits.add((m.sender, m.view, m.seq, m.digest))

    def _apply(self, i, actions):
        if i in self.honest():
            for a in actions:
                if isinstance(a, Execute):
                    self.check_certificate(i, a)
        super()._apply(i, actions)

    def check_certificate(self, i: int, ex: Execute) -> None:
        block, cert = ex.block, ex.certificate
        senders = {c.sender for c in cert}
        assert len(senders) == len(cert) >= Q.quorum(N), f"node {i} seq {ex.seq}: {senders}"
        for c in cert:
            assert (c.view, c.seq, c.digest) == (block["view"], ex.seq, block["digest"])
            assert c.sender == i or (c.sender, c.view, c.seq, c.digest) in self.wire_commits, \
                f"node {i} executed seq {ex.seq} on a commit {c.sender} never sent"


def requests(count: int = 16) -> list[Request]:
    return [Request(f"c{k % 2}", k, {"op": "put", "key": f"k{k % 5}", "value": k, "expires_at": None})
            for k in range(1, count + 1)]


def submit(c: Cluster, reqs: list[Request]) -> None:
    """The client side after its timeout: every request to every replica."""
    for r in reqs:
        for i in range(N):
            c.inject(i, r, origin=r.client)


def executed(c: Cluster, i: int) -> list[tuple[str, int]]:
    out = []
    for b in c.nodes[i].blocks:
        out += [(r["client"], r["timestamp"]) for k, r in enumerate(b["requests"]) if k not in b["skip"]]
    return out


def run(c: Cluster, reqs: list[Request], rounds: int = 400) -> int:
    """Deliver, serve fetches and tick until every honest replica executed every
    request; returns the rounds it took (fails if the bound is reached)."""
    want = {(r.client, r.timestamp) for r in reqs}
    for k in range(rounds):
        c.stabilize()
        c.serve_fetches()
        if all(set(executed(c, i)) >= want for i in c.honest()) and not c.network:
            return k
        c.tick()
    pytest.fail(f"not every request executed after {rounds} rounds: "
                f"{ {i: len(executed(c, i)) for i in c.honest()} } of {len(want)}")


def accepted(c: Cluster, req: Request):
    """The client's rule: the first result that f+1 distinct replicas sent."""
    votes: dict[int, object] = {}
    for rep in c.replies[req.client]:
        for r in rep.results:
            if r["timestamp"] == req.timestamp and rep.sender not in votes:
                votes[rep.sender] = r["result"]
                if sum(1 for v in votes.values() if v == r["result"]) >= F + 1:
                    return r["result"]
    return None


def check_safe_and_live(c: Watched, reqs: list[Request]) -> None:
    honest = c.honest()
    by_height: dict[int, set] = {}
    for i in honest:
        for b in c.nodes[i].blocks:
            by_height.setdefault(b["seq"], set()).add(b["hash"])
    assert all(len(h) == 1 for h in by_height.values()), f"honest replicas disagree: {by_height}"
    assert len({c.height(i) for i in honest}) == 1
    want = sorted((r.client, r.timestamp) for r in reqs)
    for i in honest:
        assert sorted(executed(c, i)) == want, f"node {i} did not execute each request once"
    for r in reqs:
        honest_results = {repr(rep_result(c, j, r)) for j in honest}
        assert len(honest_results) == 1, f"{r.client}/{r.timestamp}: honest results {honest_results}"
        assert accepted(c, r) == rep_result(c, honest[0], r), f"client misled on {r.client}/{r.timestamp}"


def rep_result(c: Cluster, node: int, req: Request):
    for rep in c.replies[req.client]:
        if rep.sender == node:
            for r in rep.results:
                if r["timestamp"] == req.timestamp:
                    return r["result"]
    return None


def views(c: Cluster) -> set[int]:
    return {c.nodes[i].replica.view for i in c.honest()}


# -- parsing ---------------------------------------------------------------------------

def test_parse_behaviours_accepts_names_and_lists():
    assert parse_behaviours("equivocate,replay") == {"equivocate", "replay"}
    assert parse_behaviours(" lie , silent,") == {"lie", "silent"}
    assert parse_behaviours(["forge"]) == {"forge"}
    assert parse_behaviours("") == frozenset()
    assert BEHAVIOURS == {"equivocate", "wrong_digest", "replay", "silent", "forge", "nosig", "lie",
                          "flood", "alter_push"}


@pytest.mark.parametrize("spec", ["equivocate,evil", "Silent", ["lie", "liar"]])
def test_parse_behaviours_rejects_unknown_names_clearly(spec):
    with pytest.raises(ValueError) as err:
        parse_behaviours(spec)
    text = str(err.value)
    assert "unknown Byzantine behaviour" in text
    assert ("'evil'" in text) or ("'Silent'" in text) or ("'liar'" in text)
    assert "valid behaviours: alter_push, equivocate, flood, forge, lie, nosig, replay, silent, wrong_digest" in text


def test_forge_and_nosig_exclude_each_other():
    with pytest.raises(ValueError, match="exclude each other"):
        parse_behaviours("forge,nosig")


def test_cluster_refuses_an_unknown_behaviour():
    with pytest.raises(ValueError, match="'fuzz'"):
        Cluster(N, behaviours={2: "fuzz"}, **CONFIG)


# -- every behaviour, as primary and as backup -------------------------------------------

@pytest.mark.parametrize("node", [0, 3], ids=["primary", "backup"])
@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_one_faulty_replica_keeps_safety_and_liveness(behaviour, node, votes):
    # set up
    c = Watched(N, behaviours={node: behaviour}, **CONFIG, votes=votes)
    assert node not in c.honest()
    reqs = requests()
    # step
    submit(c, reqs)
    run(c, reqs)
    # check
    check_safe_and_live(c, reqs)
    if node == 0 and behaviour in STALLS:
        assert min(views(c)) >= 1, f"a faulty primary ({behaviour}) was not replaced"
    else:
        assert views(c) == {0}, "no view change was needed"


# -- equivocate ------------------------------------------------------------------------------

def test_equivocating_primary_splits_the_backups_then_a_view_change_commits_everything(votes):
    # set up: node 0 is primary of view 0 and equivocates
    c = Watched(N, behaviours={0: "equivocate"}, **CONFIG, votes=votes)
    reqs = requests(8)
    # step: the first batch goes out
    submit(c, reqs)
    c.stabilize()
    c.tick(CONFIG["batch_timeout_ticks"])
    c.stabilize()
    # check: backups hold different pre-prepares for (view 0, seq 1), built from real requests
    pps = {i: c.nodes[i].replica.window.log[1].preprepare for i in (1, 2, 3)}
    assert pps[1].digest != pps[2].digest == pps[3].digest
    assert {(r.client, r.timestamp) for r in pps[2].batch} <= {(r.client, r.timestamp) for r in pps[1].batch}
    assert all(batch_digest(pp.batch) == pp.digest for pp in pps.values())
    assert all(c.height(i) == 0 for i in c.honest()), "nothing may commit in view 0"
    # step: the request timers expire, view 1 (primary 1) takes over
    run(c, reqs)
    # check
    check_safe_and_live(c, reqs)
    assert min(views(c)) >= 1
    assert all(b["view"] >= 1 for i in c.honest() for b in c.nodes[i].blocks)
    assert c.faulty[0].counts["equivocated"] > 0


def test_equivocating_backup_cannot_block_or_split_the_honest_quorum(votes):
    c = Watched(N, behaviours={3: "equivocate"}, **CONFIG, votes=votes)
    reqs = requests()
    submit(c, reqs)
    run(c, reqs)
    check_safe_and_live(c, reqs)
    # node 3 told node 0 the truth and nodes 1 and 2 something else (the upper half)
    assert c.faulty[3].told_lies == {1, 2}
    assert c.faulty[3].counts["equivocated"] > 0
    lied_to = [c.nodes[i].certs for i in (1, 2)]
    assert all(3 not in {m.sender for m in cert} for certs in lied_to for cert in certs.values())


# -- wrong digest ------------------------------------------------------------------------------

def test_wrong_digests_never_count_towards_a_certificate_or_a_stable_checkpoint(votes):
    c = Watched(N, behaviours={3: "wrong_digest"}, **CONFIG, votes=votes)
    reqs = requests()
    submit(c, reqs)
    run(c, reqs)
    check_safe_and_live(c, reqs)
    for i in c.honest():
        node = c.nodes[i]
        assert all(3 not in {m.sender for m in cert} for cert in node.certs.values())
        r = node.replica
        assert r.window.h >= CONFIG["checkpoint_interval"], "checkpoints became stable without node 3"
        theirs = r.window.checkpoints.get(r.window.h, {}).get(3)
        assert theirs is None or theirs.state_digest != r.window.stable_digest


# -- replay ------------------------------------------------------------------------------------

def test_replayed_old_messages_execute_nothing_twice(votes):
    c = Watched(N, behaviours={0: "replay"}, **CONFIG, votes=votes)
    reqs = requests()
    submit(c, reqs)
    run(c, reqs)
    check_safe_and_live(c, reqs)  # includes: every request executed exactly once
    assert c.faulty[0].counts["replayed"] > 0


def test_replays_of_an_old_view_are_evidence_after_a_view_change(votes):
    # set up: node 3 replays; a view change is forced by honest replicas' timers
    # (requests reach only the backups and the primary never hears of them)
    c = Watched(N, behaviours={3: "replay"}, **CONFIG, votes=votes)
    reqs = requests(8)
    for k, r in enumerate(reqs[:4]):
        c.inject(0, r, origin=r.client)
    run(c, reqs[:4])
    c.crash(0, lose_queue=True)  # the primary goes away (a crash, not a lie)
    for r in reqs[4:]:
        for i in (1, 2, 3):
            c.inject(i, r, origin=r.client)
    # step
    for _ in range(200):
        c.stabilize()
        c.tick()
        if all(set(executed(c, i)) >= {(r.client, r.timestamp) for r in reqs} for i in (1, 2)):
            break
    # check: view 1 with the replays of view-0 messages refused as evidence
    assert {c.nodes[i].replica.view for i in (1, 2)} == {1}
    wrong_view = [e for i in (1, 2) for e in c.nodes[i].evidence
                  if e.reason == "wrong_view" and e.sender == 3]
    assert wrong_view, "replayed view-0 messages should be refused in view 1"
    assert [b["hash"] for b in c.nodes[1].blocks] == [b["hash"] for b in c.nodes[2].blocks]


# -- silent, forge, nosig ---------------------------------------------------------------------------

@pytest.mark.parametrize("behaviour,reason", [("silent", None), ("forge", "bad_signature"),
                                              ("nosig", "missing_signature")])
def test_a_replica_nobody_can_hear_is_routed_around(behaviour, reason, votes):
    c = Watched(N, behaviours={3: behaviour}, **CONFIG, votes=votes)
    reqs = requests()
    submit(c, reqs)
    run(c, reqs)
    check_safe_and_live(c, reqs)
    assert c.from_node[3] == 0, "nothing node 3 signs may reach anyone (forwarded requests may)"
    assert all(rep.sender != 3 for reps in c.replies.values() for rep in reps)
    if reason:
        assert c.rejected[(3, reason)] > 0 and set(c.rejected) == {(3, reason)}
    else:
        assert not c.rejected and c.faulty[3].counts["withheld"] > 0


# -- lie -----------------------------------------------------------------------------------------

def test_a_lying_replica_cannot_mislead_a_client(votes):
    c = Watched(N, behaviours={3: "lie"}, **CONFIG, votes=votes)
    reqs = requests() + [Request("c0", 100, {"op": "get", "key": "k1"})]
    submit(c, reqs)
    run(c, reqs)
    check_safe_and_live(c, reqs)  # includes: the f+1 rule picks the honest result
    for r in reqs:
        assert rep_result(c, 3, r) != rep_result(c, 0, r), "node 3 should have lied"
    # the get was ordered like any request; its placeholder carries the key (the
    # adapter puts the value in, pbft_tasks/reads.py)
    assert rep_result(c, 0, reqs[-1])["read"] == "k1"


def test_falsified_read_results_keep_their_shape_and_change_the_value():
    console = {"seq": 7, "index": 0, "key": "console/i-1/novnc", "version": 2, "expires_at": None,
               "value": {"host": "10.0.0.5", "port": 5900, "token": "t0k"}}
    lie = falsify_result(console)
    assert lie["value"]["host"] != "10.0.0.5" and lie["value"]["port"] != 5900
    assert lie["value"]["token"] != "t0k"
    assert {k: v for k, v in lie.items() if k != "value"} == {k: v for k, v in console.items() if k != "value"}
    missing = {"seq": 7, "index": 1, "key": "gone", "version": 0, "deleted": True}
    assert "deleted" not in falsify_result(missing) and falsify_result(missing)["value"] is not None


# -- the filter itself -------------------------------------------------------------------------

def test_persist_and_execute_pass_through_first_and_unchanged():
    byz = Byzantine(0, N, "equivocate,wrong_digest,replay,lie")
    reqs = tuple(requests(3))
    pp = PrePrepare(0, 1, batch_digest(reqs), reqs, 0)
    persist = Persist({"meta": {}}, "x")
    ex = Execute(1, {"seq": 1}, (), "x")
    ev = Evidence(2, "wrong_view", "", "x")
    out = byz.outgoing([persist, ex, Broadcast(pp, "x"), ev])
    assert out[0] is persist and out[1] is ex and out[-1] is ev
    sent = {a.to: a.msg for a in out[2:-1]}
    assert sent[1] == pp and sent[2] == sent[3] != pp
    assert sent[2].batch == conflicting_batch(reqs) == tuple(reversed(reqs))
    assert byz.outgoing([Broadcast(Prepare(0, 1, pp.digest, 0), "x")])[0].msg.digest != pp.digest


def test_the_same_peer_always_gets_the_same_version():
    byz = Byzantine(3, N, "equivocate", seed=5)
    ck = Checkpoint(4, "a" * 64, 3)
    first = {a.to: a.msg for a in byz.outgoing([Broadcast(ck, "x")])}
    again = {a.to: a.msg for a in byz.outgoing([Broadcast(ck, "x")])}
    assert first == again and first[0] == ck and first[1] != ck
