"""Paper tests: one test per rule of Castro and Liskov, "Practical Byzantine Fault
Tolerance" (OSDI 1999), named after the rule (as etcd's raft_paper_test.go).

Each test has three parts: set up (a Replica or a Cluster), step (hand-made messages
or ticks), check (the actions returned or the replica's state).  Section numbers in
the docstrings are the paper's.
"""
from __future__ import annotations

import itertools

import pytest

from pbft_tasks.core import quorum as Q
from pbft_tasks.core.actions import Broadcast, Evidence, Execute, Persist, Send, SendClient
from pbft_tasks.core.chain import GENESIS, block_hash
from pbft_tasks.core.messages import (Certificate, Checkpoint, Commit, PrePrepare, Prepare, Reply,
                                      request_digest, to_wire)
from pbft_tasks.core.replica import Replica, ReplicaConfig
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.sim import Cluster as _SimCluster
from pbft_tasks.core.stimuli import Resume, Tick

from .helpers import (checkpoint_votes, client_replies, commit, commit_seq, config, executes,
                      fake_digest, feed, messages, ordered_like_contract, persisted, prepare,
                      preprepare, reasons, req)
from . import helpers

# Every paper test runs with both vote routings (core/collector.py): the fixture below
# gives this module's ``config`` and ``Cluster`` the routing.  Each rule holds in both;
# where a test looks at a replica's own votes it accepts them sent to all or to the
# collector.  tests/core/test_collector.py holds the collector's own rules.


@pytest.fixture(autouse=True)
def _vote_routing(votes, monkeypatch):
    module = __import__(__name__, fromlist=["_"])
    monkeypatch.setattr(module, "config", lambda n=4, **kw: helpers.config(n, **{"votes": votes, **kw}))
    monkeypatch.setattr(module, "Cluster", _with_votes(_SimCluster, votes))
    monkeypatch.setattr(module, "RecordingCluster", _with_votes(_RecordingCluster, votes))
    assert module.config().votes == votes and module.Cluster(4).config.votes == votes


def _with_votes(cls, votes):
    return lambda *a, **kw: cls(*a, **{"votes": votes, **kw})


# -- sec. 4.1: the system model and quorums -------------------------------------------

@pytest.mark.parametrize("n, f", [(4, 1), (7, 2), (10, 3)])
def test_n_equals_3f_plus_1_quorums(n, f):
    """Sec. 4.1: n = 3f+1 replicas tolerate f faults; certificates need 2f+1 votes,
    'prepared' needs 2f prepares besides the pre-prepare, and f+1 include an honest one."""
    # set up / step
    got = (Q.max_faulty(n), Q.quorum(n), Q.prepared_quorum(n), Q.weak_quorum(n))
    # check
    assert got == (f, 2 * f + 1, 2 * f, f + 1)
    # any two quorums intersect in at least f+1 replicas, so in one honest replica
    assert 2 * Q.quorum(n) - n >= f + 1


@pytest.mark.parametrize("n", [5, 6, 8, 9, 11, 13])
def test_quorums_for_other_n_intersect_in_an_honest_replica(n):
    """Sec. 4.1 generalised: for n != 3f+1 two quorums still share f+1 replicas and a
    quorum never exceeds the n - f replicas that are guaranteed to answer."""
    f = Q.max_faulty(n)
    assert 2 * Q.quorum(n) - n >= f + 1
    assert Q.quorum(n) <= n - f


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_fewer_than_four_replicas_are_refused(n):
    """Sec. 4.1: with n < 4 not even one Byzantine fault can be tolerated."""
    with pytest.raises(ValueError):
        Q.max_faulty(n)
    with pytest.raises(ValueError):
        ReplicaConfig(n=n)
    with pytest.raises(ValueError):
        Cluster(n)


def test_primary_is_view_mod_n():
    """Sec. 4.1: the primary of view v is replica p = v mod |R|."""
    # set up
    cfg = config(n=4)
    r = Replica(2, cfg)
    # step / check
    assert [Q.primary(v, 4) for v in range(9)] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [Q.primary(v, 7) for v in (0, 6, 7, 15)] == [0, 6, 0, 1]
    assert (r.primary, r.is_primary) == (0, False)
    r.view = 6
    assert (r.primary, r.is_primary) == (2, True)


# -- sec. 4.2: accepting a pre-prepare ---------------------------------------------------

def test_backup_accepts_preprepare_only_from_primary_of_its_view():
    """Sec. 4.2: a backup accepts a pre-prepare only if it is signed by the primary."""
    # set up
    r = Replica(1, config())
    forged = preprepare(1, sender=2)
    # step
    out = r.handle(forged)
    # check
    assert messages(out, Prepare) == []
    assert reasons(out) == ["not_primary"]
    assert r.window.log.get(1) is None or r.window.log[1].preprepare is None


def test_backup_accepts_preprepare_only_in_its_view():
    """Sec. 4.2: '... it is in view v' - a pre-prepare of another view is refused even
    when it comes from that view's primary."""
    # set up
    r = Replica(2, config())
    other_view = preprepare(1, view=1)  # sent by replica 1, primary of view 1
    # step
    out = r.handle(other_view)
    # check
    assert messages(out, Prepare) == []
    assert reasons(out) == ["wrong_view"]


def test_backup_accepts_preprepare_only_inside_watermarks():
    """Sec. 4.2: the sequence number must lie between h and H = h + L.  Beyond H the
    message is held (not accepted, not evidence) and accepted once the window moves
    (sec. 4.3); far beyond it is refused as evidence."""
    # set up: K = 4, L = 8, so the window is (0, 8]
    cfg = config(checkpoint_interval=4, log_window=8)
    r = Replica(1, cfg)
    at_high, beyond_high = preprepare(8), preprepare(9)
    far_beyond = preprepare(8 + 8 + 1)
    # step
    out_high = r.handle(at_high)
    out_beyond = r.handle(beyond_high)
    out_far = r.handle(far_beyond)
    # check: H itself is inside, H+1 is held, H+L+1 is refused
    assert messages(out_high, Prepare) == [prepare(at_high, 1)]
    assert messages(out_beyond, Prepare) == [] and reasons(out_beyond) == []
    assert r.window.held == [beyond_high]
    assert messages(out_far, Prepare) == [] and reasons(out_far) == ["outside_watermarks"]

    # step: execute 1..4 and make checkpoint 4 stable; the window becomes (4, 12]
    for seq in range(1, 5):
        commit_seq(r, preprepare(seq))
    out = feed(r, checkpoint_votes(4, r.head, [0, 2]))
    # check: the held pre-prepare 9 is accepted in the call that moved the window
    assert (r.window.h, r.window.high) == (4, 12)
    assert messages(out, Prepare) == [prepare(beyond_high, 1)]
    assert r.window.held == []


def test_preprepare_at_or_below_low_watermark_is_dropped():
    """Sec. 4.3: messages for sequence numbers at or below h are garbage: ignored."""
    # set up: checkpoint 4 stable
    r = Replica(1, config(checkpoint_interval=4, log_window=8))
    for seq in range(1, 5):
        commit_seq(r, preprepare(seq))
    feed(r, checkpoint_votes(4, r.head, [0, 2]))
    assert r.window.h == 4
    # step
    out = feed(r, [preprepare(3, batch=[req(ts=99)]), prepare(preprepare(4), 2)])
    # check
    assert out == []
    assert 3 not in r.window.log and 4 not in r.window.log


def test_backup_accepts_preprepare_only_if_digest_matches_batch():
    """Sec. 4.2: 'the signatures ... are correct and d is the digest for m'."""
    # set up
    r = Replica(1, config())
    bad = preprepare(1, digest=fake_digest("not the batch"))
    # step
    out = r.handle(bad)
    # check
    assert messages(out, Prepare) == []
    assert reasons(out) == ["bad_digest"]


def test_backup_never_accepts_second_digest_for_same_view_and_seq():
    """Sec. 4.2: 'it has not accepted a pre-prepare message for view v and sequence
    number n containing a different digest'."""
    # set up
    r = Replica(1, config())
    first = preprepare(1, batch=[req(ts=1)])
    second = preprepare(1, batch=[req(ts=2)])
    r.handle(first)
    # step
    out = r.handle(second)
    # check
    assert messages(out, Prepare) == []
    assert reasons(out) == ["conflicting_preprepare"]
    assert r.window.log[1].preprepare == first
    assert r.window.log[1].prepares[1].digest == first.digest
    # the same pre-prepare again is a harmless duplicate
    assert r.handle(first) == []


# -- sec. 4.2: prepare, commit, execute ----------------------------------------------

def test_prepare_claiming_to_come_from_primary_is_not_counted():
    """Sec. 4.2: prepared needs 2f prepares from different *backups*; the primary's
    pre-prepare stands for its prepare."""
    # set up: replica 1 holds the pre-prepare and its own prepare (1 of 2f = 2)
    r = Replica(1, config())
    pp = preprepare(1)
    r.handle(pp)
    # step
    out = r.handle(prepare(pp, 0))
    # check
    assert reasons(out) == ["prepare_from_primary"]
    assert messages(out, Commit) == []
    assert 0 not in r.window.log[1].prepares
    # one real backup prepare makes it prepared
    assert messages(r.handle(prepare(pp, 2)), Commit) == [commit(pp, 1)]


@pytest.mark.parametrize("n", [4, 7])
def test_prepared_needs_preprepare_and_2f_matching_prepares(n):
    """Sec. 4.2: prepared(m, v, n, i) = pre-prepare + 2f matching prepares from
    different backups (its own included).  2f-1 is not enough, and prepares with
    another digest do not count."""
    # set up
    f = Q.max_faulty(n)
    r = Replica(1, config(n=n))
    pp = preprepare(1, n=n)
    others = [i for i in range(2, n)]
    out = r.handle(pp)                     # own prepare: 1 matching
    for s in others[: 2 * f - 2]:        # 2f-1 matching in all
        out += r.handle(prepare(pp, s))
    wrong = [prepare(pp, s, digest=fake_digest("other")) for s in others[2 * f - 2:]]
    # step: 2f-1 matching prepares plus every other backup voting another digest
    out += feed(r, wrong)
    # check
    assert r.window.log[1].matching_prepares(0) == 2 * f - 1
    assert messages(out, Commit) == []
    assert not r.window.log[1].prepared(0, 2 * f)

    # step: a fresh replica that gets one more matching prepare (2f in all)
    r2 = Replica(1, config(n=n))
    out2 = feed(r2, [pp] + [prepare(pp, s) for s in others[: 2 * f - 1]])
    # check
    assert messages(out2, Commit) == [commit(pp, 1)]


def test_prepared_requires_the_preprepare():
    """Sec. 4.2: without the pre-prepare, 2f (or more) prepares prove nothing."""
    # set up
    r = Replica(1, config())
    pp = preprepare(1)
    # step
    out = feed(r, [prepare(pp, 2), prepare(pp, 3)])
    # check
    assert messages(out) == []
    # the pre-prepare arriving late completes it
    assert messages(r.handle(pp), Commit) == [commit(pp, 1)]


def test_commit_is_multicast_exactly_once_when_prepared():
    """Sec. 4.2: 'when prepared becomes true, replica i multicasts a COMMIT' - once."""
    # set up
    r = Replica(1, config(n=7))
    pp = preprepare(1, n=7)
    # step: every backup prepares, duplicates included, then commits arrive
    out = r.handle(pp)
    for s in range(2, 7):
        out += feed(r, [prepare(pp, s), prepare(pp, s)])
    out += feed(r, [commit(pp, s) for s in (0, 2, 3, 4, 5, 6)])
    # check
    assert messages(out, Commit) == [commit(pp, 1)]


def test_committed_local_needs_prepared_and_2f_plus_1_matching_commits():
    """Sec. 4.2: committed-local(m, v, n, i) = prepared + 2f+1 matching commits from
    different replicas (possibly its own); 2f are not enough and commits for another
    digest do not count."""
    # set up: prepared, own commit sent (1 of 3)
    r = Replica(1, config())
    pp = preprepare(1)
    feed(r, [pp, prepare(pp, 2)])
    # step: 2f = 2 matching commits, plus one for another digest
    out = feed(r, [commit(pp, 2), commit(pp, 3, digest=fake_digest("x"))])
    # check
    assert executes(out) == []
    assert r.last_exec == 0
    # step: the third matching commit (from the primary)
    out = r.handle(commit(pp, 0))
    # check
    assert [e.seq for e in executes(out)] == [1]


def test_replica_without_preprepare_never_executes():
    """Sec. 4.2: committed-local requires prepared, which requires the pre-prepare, so a
    replica that never saw the request does not execute even with 2f+1 commits."""
    # set up
    r = Replica(1, config())
    pp = preprepare(1)
    # step: every other replica's prepare and commit, but no pre-prepare
    out = feed(r, [prepare(pp, 2), prepare(pp, 3)] + [commit(pp, s) for s in (0, 2, 3)])
    # check
    assert executes(out) == [] and messages(out) == []
    assert r.last_exec == 0


def test_execution_is_strictly_in_sequence_order():
    """Sec. 4.2: a replica executes m after committed-local and after executing every
    request with a lower sequence number."""
    # set up
    r = Replica(1, config())
    pp1, pp2 = preprepare(1), preprepare(2)
    # step: seq 2 commits first
    out2 = commit_seq(r, pp2)
    # check
    assert executes(out2) == []
    # step: seq 1 commits; both execute, in order, in this call
    out1 = commit_seq(r, pp1)
    assert [e.seq for e in executes(out1)] == [1, 2]
    assert r.last_exec == 2


def test_every_seq_yields_one_block_linked_to_the_previous():
    """Sec. 4.2 with batching (sec. 5.1): each sequence number executes one batch; our
    ledger appends one block per seq whose prev is the previous block's hash."""
    # set up
    c = Cluster(4, checkpoint_interval=4, log_window=8, max_batch=2, batch_timeout_ticks=1)
    # step
    for ts in range(1, 8):
        c.request("a", ts, f"k{ts}", ts)
        c.run()
    # check
    for i in range(4):
        blocks = c.nodes[i].blocks
        assert [b["seq"] for b in blocks] == list(range(1, len(blocks) + 1))
        assert len(blocks) >= 4
        prev = GENESIS
        for b in blocks:
            assert b["prev"] == prev
            assert b["hash"] == block_hash(b)
            prev = b["hash"]
    assert len({c.head(i) for i in range(4)}) == 1


def test_certificate_has_exactly_2f_plus_1_matching_commits_from_distinct_senders():
    """Sec. 4.2: committed-local is certified by 2f+1 matching commits from different
    replicas; the certificate carries exactly that many."""
    # set up: n = 7, all 7 commits will arrive, one of them for another digest
    r = Replica(1, config(n=7))
    pp = preprepare(1, n=7)
    feed(r, [pp] + [prepare(pp, s) for s in range(2, 5)])
    # step
    out = feed(r, [commit(pp, 2, digest=fake_digest("x"))]
               + [commit(pp, s) for s in (0, 3, 4, 5, 6)])
    # check
    (ex,) = executes(out)
    cert = ex.certificate
    assert len(cert) == 2 * 2 + 1
    assert len({c.sender for c in cert}) == len(cert)
    assert all(isinstance(c, Commit) and (c.view, c.seq, c.digest) == (0, 1, pp.digest)
               for c in cert)
    assert ex.block["digest"] == pp.digest


# -- sec. 4.1/4.2: the client table and deduplication -------------------------------

def test_requests_are_deduplicated_by_client_and_timestamp():
    """Sec. 4.1: a replica keeps the last reply per client and never executes a request
    twice.  The same (client, timestamp) in two batches executes once: the second block
    lists it in "skip" and the same result is replied again."""
    # set up
    r = Replica(1, config())
    same = req("a", 7, "k", "v")
    # step
    out1 = commit_seq(r, preprepare(1, batch=[same]))
    out2 = commit_seq(r, preprepare(2, batch=[req("a", 8), same]))
    # check
    (b1,), (b2,) = [e.block for e in executes(out1)], [e.block for e in executes(out2)]
    assert b1["skip"] == [] and b2["skip"] == [1]
    (r1,), (r2,) = client_replies(out1), client_replies(out2)
    d = request_digest
    assert r1.results == ({"timestamp": 7, "result": {"seq": 1, "index": 0, "request": d(same)}},)
    assert r2.results == ({"timestamp": 8, "result": {"seq": 2, "index": 0, "request": d(req("a", 8))}},
                          {"timestamp": 7, "result": {"seq": 1, "index": 0, "request": d(same)}})


def test_retransmitted_executed_request_is_answered_from_client_table():
    """Sec. 4.1: 'if the request has already been executed, the replica re-sends the
    reply' - without executing or forwarding it again."""
    # set up
    r = Replica(1, config())
    request = req("a", 1)
    commit_seq(r, preprepare(1, batch=[request]))
    # step
    out = r.handle(request)
    # check
    assert executes(out) == [] and messages(out) == []
    (reply,) = client_replies(out)
    assert reply == Reply(0, 1, "a", 1, ({"timestamp": 1, "result": {
        "seq": 1, "index": 0, "request": request_digest(request)}},))


def test_backup_forwards_new_request_to_primary():
    """Sec. 4.1: a backup that receives a request relays it to the primary."""
    r = Replica(2, config())
    request = req("a", 1)
    out = r.handle(request)
    assert out == [Send(0, request, "Request a/1")]


def test_backup_relays_a_request_once_not_at_every_retransmission():
    """Sec. 4.1 relays a request to the primary; the client's retransmission goes to
    every replica, the primary included, so a backup relays it the first time only.
    Relaying every copy made a client's retransmission round under overload cost the
    primary one task run per backup and outstanding request, ahead of the votes."""
    # set up
    r = Replica(2, config())
    request = req("a", 1)
    first = r.handle(request)
    # step: the client re-sends it, twice
    again = r.handle(request) + r.handle(request)
    # check
    assert messages(first) == [request] and messages(again) == []
    assert r.awaiting == {("a", 1): request}  # still timed: the request timer runs


def test_primary_does_not_propose_same_request_twice():
    """Sec. 4.2/5.1: the primary assigns a sequence number to a request once; a
    retransmission while it is in flight or after it executed is not proposed again."""
    # set up
    p = Replica(0, config(max_batch=1))
    request = req("a", 1)
    first = p.handle(request)
    # step: retransmitted while in flight
    again = p.handle(request)
    # check
    assert [m.seq for m in messages(first, PrePrepare)] == [1]
    assert messages(again, PrePrepare) == []
    # step: execute it, then the client retransmits once more
    pp = messages(first, PrePrepare)[0]
    feed(p, [prepare(pp, 1), prepare(pp, 2)] + [commit(pp, s) for s in (1, 2)])
    assert p.last_exec == 1
    after = p.handle(request) + p.handle(Tick()) + p.handle(Tick())
    # check
    assert messages(after, PrePrepare) == []
    assert len(client_replies(after)) == 1


# -- sec. 5.1: batching -------------------------------------------------------------

def test_batch_is_cut_at_max_batch_immediately():
    """Sec. 5.1: the primary batches requests; a full batch goes out at once."""
    # set up
    p = Replica(0, config(max_batch=3, batch_timeout_ticks=5))
    out = feed(p, [req("a", 1), req("a", 2)])
    assert messages(out, PrePrepare) == []
    # step
    out = p.handle(req("a", 3))
    # check
    (pp,) = messages(out, PrePrepare)
    assert [r.timestamp for r in pp.batch] == [1, 2, 3]
    assert p.batcher.pending == []


def test_partial_batch_is_cut_after_batch_timeout_ticks_and_not_before():
    """Sec. 5.1: a partial batch waits at most batch_timeout_ticks ticks."""
    # set up
    p = Replica(0, config(max_batch=3, batch_timeout_ticks=3))
    p.handle(req("a", 1))
    # step
    early = p.handle(Tick()) + p.handle(Tick())
    on_time = p.handle(Tick())
    # check
    assert messages(early, PrePrepare) == []
    (pp,) = messages(on_time, PrePrepare)
    assert [r.timestamp for r in pp.batch] == [1]


# -- sec. 4.3: checkpoints and garbage collection --------------------------------------

def test_checkpoint_is_multicast_every_k_sequence_numbers():
    """Sec. 4.3: a replica produces a checkpoint when n is divisible by K."""
    # set up
    r = Replica(1, config(checkpoint_interval=4, log_window=8))
    # step
    outs = [commit_seq(r, preprepare(s)) for s in range(1, 9)]
    # check
    sent = [[m.seq for m in messages(o, Checkpoint)] for o in outs]
    assert sent == [[], [], [], [4], [], [], [], [8]]
    assert messages(outs[3], Checkpoint) == [Checkpoint(4, executes(outs[3])[0].block["hash"], 1)]


def test_checkpoint_becomes_stable_with_2f_plus_1_matching_digests():
    """Sec. 4.3: a checkpoint with a proof of 2f+1 matching messages is stable; 2f are
    not enough and messages with another digest do not count."""
    # set up: executed 1..4, own checkpoint (1 of 3)
    r = Replica(1, config(checkpoint_interval=4, log_window=8))
    for s in range(1, 5):
        commit_seq(r, preprepare(s))
    digest = r.window.own_checkpoints[4]
    # step: one matching and one mismatching
    out = feed(r, [Checkpoint(4, digest, 2), Checkpoint(4, fake_digest("other state"), 3)])
    # check
    assert r.window.h == 0 and r.window.high == 8
    assert "meta" not in persisted(out)
    # step: the third matching one
    out = r.handle(Checkpoint(4, digest, 0))
    # check
    assert (r.window.h, r.window.stable_digest) == (4, digest)


def test_stable_checkpoint_garbage_collects_log_and_moves_watermarks():
    """Sec. 4.3: when a checkpoint at n becomes stable, the replica discards every
    pre-prepare, prepare and commit with seq <= n and earlier checkpoints; h = n and
    H = h + L."""
    # set up: executed 1..8, seq 9 pre-prepared; checkpoint 4 already stable
    cfg = config(checkpoint_interval=4, log_window=8)
    r = Replica(1, cfg)
    for s in range(1, 9):
        commit_seq(r, preprepare(s))
    r.handle(preprepare(9))
    feed(r, checkpoint_votes(4, r.window.own_checkpoints[4], [0, 2]))
    assert sorted(r.window.log) == [5, 6, 7, 8, 9]
    # step
    out = feed(r, checkpoint_votes(8, r.window.own_checkpoints[8], [0, 2]))
    # check: log emptied below the checkpoint, records deleted, window moved
    assert sorted(r.window.log) == [9]
    assert (r.window.h, r.window.high) == (8, 8 + cfg.log_window)
    rec = persisted(out)
    for s in range(5, 9):
        assert rec[f"pp/{s}"] is None and rec[f"votes/{s}"] is None
    assert rec["ckpt/4"] is None
    assert rec["meta"]["h"] == 8
    assert sorted(r.window.checkpoints) == [8]


# -- persistence (the paper assumes stable storage for votes) --------------------------

class RecordingCluster(_SimCluster):
    """A Cluster that keeps every action list its replicas returned."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[tuple[int, list]] = []

    def _apply(self, i, actions):
        self.calls.append((i, list(actions)))
        super()._apply(i, actions)


def test_persist_precedes_every_send():
    """Sec. 4.2 / actions.py: in every call, Persist and Execute come before any
    message; a replica's own pre-prepare, prepare and commit are in the Persist records
    of the call that sends them."""
    # set up
    c = RecordingCluster(4, checkpoint_interval=2, log_window=4, max_batch=2,
                         batch_timeout_ticks=1, retransmit_ticks=3)
    # step: a workload that crosses checkpoints, with a retransmission round
    for ts in range(1, 10):
        c.request("a", ts, f"k{ts}", ts)
        c.request("b", ts, f"j{ts}", ts, to=ts % 4)
        c.run()
    c.request("a", 99, "late", 1)
    c.deliver(0)
    c.tick(4)
    c.run()
    # check
    checked = {"pp": 0, "vote": 0}
    first: set = set()
    durable: dict = {}  # node -> every record it persisted so far (latest value per key)
    for i, actions in c.calls:
        assert ordered_like_contract(actions), actions
        records = persisted(actions)
        durable.setdefault(i, {}).update(records)
        for a in actions:
            if not isinstance(a, (Broadcast, Send)) or a.cause.startswith(("tick", "resume")):
                continue  # retransmissions re-send what an earlier call persisted
            m = a.msg
            if isinstance(m, PrePrepare) and isinstance(a, Broadcast):
                assert records[f"pp/{m.seq}"] == to_wire(m)
                checked["pp"] += 1
            # own votes, sent to all, to the collector, or (the collector's own commit)
            # inside its certificate: the first time one leaves it is durable, persisted
            # by this call or (a commit the collector keeps for its certificate) an earlier one
            votes = m.votes if isinstance(m, Certificate) else (m,)
            for v in votes:
                if not isinstance(v, (Prepare, Commit)):
                    continue
                key = (i, type(v).__name__, v.view, v.seq, v.digest)
                if v.sender == i and key not in first:
                    first.add(key)
                    kind = "prepares" if isinstance(v, Prepare) else "commits"
                    where = durable[i] if isinstance(m, Certificate) else records
                    assert to_wire(v) in where[f"votes/{v.seq}"][kind], (i, v)
                    checked["vote"] += 1
    assert checked["pp"] >= 9 and checked["vote"] >= 9 * 5


def test_own_votes_are_persisted_in_the_call_that_sends_them():
    """Sec. 4.2: a replica that restarts must never sign a conflicting vote, so its
    prepare and commit are durable before they leave."""
    # set up
    r = Replica(1, config())
    pp = preprepare(1)
    # step
    out_prepare = r.handle(pp)
    out_commit = r.handle(prepare(pp, 2))
    # check
    assert isinstance(out_prepare[0], Persist) and isinstance(out_commit[0], Persist)
    assert out_prepare[0].records["pp/1"] == to_wire(pp)
    assert to_wire(prepare(pp, 1)) in out_prepare[0].records["votes/1"]["prepares"]
    assert to_wire(commit(pp, 1)) in out_commit[0].records["votes/1"]["commits"]


def test_restarted_replica_refuses_to_prepare_another_digest_for_same_view_and_seq():
    """Sec. 4.2 with stable storage: after a restart from its persisted records, a
    replica that prepared d for (v, n) does not prepare d' != d for (v, n), and
    resume() re-sends the vote it may not have sent before crashing."""
    # set up
    r = Replica(1, config())
    pp = preprepare(1, batch=[req(ts=1)])
    records = persisted(r.handle(pp))
    # step
    again = Replica(1, config(), records=records)
    resumed = again.handle(Resume())
    out = again.handle(preprepare(1, batch=[req(ts=2)]))
    # check
    assert messages(resumed) == [prepare(pp, 1)]
    assert messages(out, Prepare) == []
    assert reasons(out) == ["conflicting_preprepare"]


def test_restarted_replica_resumes_executing_to_the_same_head():
    """Sec. 4.2 with stable storage: a backup that crashes and restarts from its
    records executes the rest of the sequence and ends at the same head."""
    # set up
    c = Cluster(4, checkpoint_interval=2, log_window=4, max_batch=1, batch_timeout_ticks=1)
    for ts in range(1, 4):
        c.request("a", ts, "k", ts)
        c.run()
    # step
    c.crash(3)
    for ts in range(4, 6):
        c.request("a", ts, "k", ts)
        c.run()
    assert c.height(3) == 3 and c.height(0) == 5
    c.restart(3)
    c.run()
    # check
    assert [c.height(i) for i in range(4)] == [5, 5, 5, 5]
    assert len({c.head(i) for i in range(4)}) == 1
    assert c.nodes[3].replica.window.h == c.nodes[0].replica.window.h == 4


# -- Byzantine peers ---------------------------------------------------------------

@pytest.mark.parametrize("kind", [Prepare, Commit])
def test_equivocating_votes_produce_evidence_and_first_vote_is_kept(kind):
    """Sec. 4.2: a replica accepts one vote per sender per (v, n); a second with another
    digest proves the sender faulty."""
    # set up
    r = Replica(1, config())
    d1, d2 = fake_digest("one"), fake_digest("two")
    # step
    first = r.handle(kind(0, 1, d1, 2))
    second = r.handle(kind(0, 1, d2, 2))
    # check
    assert reasons(first) == []
    assert reasons(second) == ["equivocation"]
    votes = r.window.log[1].prepares if kind is Prepare else r.window.log[1].commits
    assert votes[2].digest == d1


def test_equivocating_checkpoint_produces_evidence():
    """Sec. 4.3: two checkpoint digests for one seq from one sender is equivocation."""
    r = Replica(1, config(checkpoint_interval=4, log_window=8))
    out = feed(r, [Checkpoint(4, fake_digest("a"), 2), Checkpoint(4, fake_digest("b"), 2)])
    assert reasons(out) == ["equivocation"]
    assert r.window.checkpoints[4][2].state_digest == fake_digest("a")


@pytest.mark.parametrize("node, msg", [
    (1, Prepare(0, 1, fake_digest("x"), 1)),
    (1, Commit(0, 1, fake_digest("x"), 1)),
    (1, Checkpoint(4, fake_digest("x"), 1)),
    (0, preprepare(1)),
], ids=["prepare", "commit", "checkpoint", "preprepare"])
def test_replica_ignores_its_own_messages_coming_back(node, msg):
    """Sec. 4.2: a replica's own vote is inserted when it sends it; a copy that comes
    back through the network is a replay, counted as evidence and ignored."""
    # set up
    r = Replica(node, config(checkpoint_interval=4, log_window=8))
    # step
    out = r.handle(msg)
    # check
    assert reasons(out) == ["replayed_own"]
    assert not any(isinstance(a, (Persist, Execute, Send, Broadcast, SendClient)) for a in out)


def test_unexpected_message_type_is_evidence():
    """Replies go to clients; a replica that receives one drops it as evidence."""
    r = Replica(1, config())
    out = r.handle(Reply(0, 1, "a", 2, ()))
    assert [type(a) for a in out] == [Evidence]
    assert reasons(out) == ["unexpected_type"]


def test_byzantine_backup_cannot_commit_alone_with_conflicting_votes():
    """Sec. 4.2 safety: f Byzantine replicas voting for another digest cannot make an
    honest replica prepare or commit it."""
    # set up
    r = Replica(1, config())
    pp = preprepare(1)
    evil = fake_digest("evil")
    r.handle(pp)
    # step: replica 3 votes the evil digest everywhere, twice
    out = feed(r, [Prepare(0, 1, evil, 3), Commit(0, 1, evil, 3)] * 2)
    # check
    assert messages(out) == [] and executes(out) == []
    # honest votes still complete the good digest
    out = feed(r, [prepare(pp, 2), commit(pp, 2), commit(pp, 0)])
    (ex,) = executes(out)
    assert ex.block["digest"] == pp.digest
    assert {c.sender for c in ex.certificate} == {0, 1, 2}


def test_permutations_of_one_sequences_votes_execute_the_same_block():
    """Sec. 4.2: the order in which a replica receives a seq's messages does not change
    what it executes."""
    pp = preprepare(1)
    msgs = [pp, prepare(pp, 2), prepare(pp, 3), commit(pp, 0), commit(pp, 2)]
    blocks = set()
    for perm in itertools.permutations(msgs):
        r = Replica(1, config())
        out = feed(r, perm)
        (ex,) = executes(out)
        blocks.add(ex.block["hash"])
    assert len(blocks) == 1


_RecordingCluster = RecordingCluster
