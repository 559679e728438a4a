"""Paper-style tests of collector vote routing (core/collector.py; SBFT, Gueta et al.
2019, sec. IV): set up, step, check.  The safety tests of the other modules (stateful
machines, Twins, Byzantine behaviours, view change, fault scenarios) run in both modes;
these pin down the rules of the collector itself."""
from __future__ import annotations

import pytest

from pbft_tasks.core import quorum as Q
from pbft_tasks.core.actions import Broadcast, Send
from pbft_tasks.core.collector import check_certificate
from pbft_tasks.core.messages import Certificate, Commit, Prepare, ViewChange
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.stimuli import Tick

from .helpers import (commit, config, executes, fake_digest, feed, messages, preprepare, prepare,
                      reasons, req)

CFG = dict(checkpoint_interval=4, log_window=8, max_batch=1, batch_timeout_ticks=0)


def collector_config(n: int = 4, **kw):
    return config(n, votes="collector", **kw)


def cert(pp, phase: str, senders, sender: int = 0, digest: str | None = None) -> Certificate:
    kind = Prepare if phase == "prepare" else Commit
    d = digest or pp.digest
    return Certificate(pp.view, pp.seq, d, phase, tuple(kind(pp.view, pp.seq, d, s) for s in senders), sender)


def test_config_refuses_an_unknown_vote_routing():
    with pytest.raises(ValueError, match="votes must be one of"):
        config(votes="gossip")


def test_a_backup_sends_its_prepare_to_the_collector_only():
    # set up
    r = Replica(1, collector_config())
    pp = preprepare(1)
    # step
    out = r.handle(pp)
    # check
    sent = [a for a in out if isinstance(a, (Send, Broadcast))]
    assert sent == [Send(0, Prepare(0, 1, pp.digest, 1), sent[0].cause)]


def test_the_collector_sends_one_prepare_certificate_with_2f_backup_prepares():
    # set up
    r = Replica(0, collector_config())
    out = r.handle(req())
    (pp,) = messages(out)
    # step: the first backup prepare is short of 2f, the second completes it, a third adds nothing
    first = r.handle(prepare(pp, 1))
    second = r.handle(prepare(pp, 2))
    third = r.handle(prepare(pp, 3))
    # check
    assert messages(first) == []
    (c,) = [a for a in second if isinstance(a, Broadcast)]
    assert c.msg == cert(pp, "prepare", (1, 2)) and check_certificate(c.msg, 4) is None
    assert messages(third) == []  # its own commit stays with it: no vote to itself


def test_the_collector_sends_the_commit_certificate_at_2f_plus_1_commits_its_own_included():
    # set up
    r = Replica(0, collector_config())
    (pp,) = messages(r.handle(req()))
    feed(r, [prepare(pp, 1), prepare(pp, 2)])
    # step
    first = r.handle(commit(pp, 1))
    second = r.handle(commit(pp, 2))
    late = r.handle(commit(pp, 3))
    # check
    assert messages(first) == []
    (c,) = messages(second, Certificate)
    assert c.phase == "commit" and sorted(v.sender for v in c.votes) == [0, 1, 2]
    assert executes(second) and not messages(late, Certificate)


def test_a_backup_acts_on_certificates_exactly_as_on_the_votes_they_carry():
    # set up
    r = Replica(3, collector_config())
    pp = preprepare(1)
    r.handle(pp)
    # step
    after_prepare_cert = r.handle(cert(pp, "prepare", (1, 2)))
    after_commit_cert = r.handle(cert(pp, "commit", (0, 1, 2)))
    # check: prepared -> its commit goes to the collector; committed -> executes
    assert messages(after_prepare_cert) == [Commit(0, 1, pp.digest, 3)]
    assert [a.to for a in after_prepare_cert if isinstance(a, Send)] == [0]
    (ex,) = executes(after_commit_cert)
    assert sorted(c.sender for c in ex.certificate) == [0, 1, 2]


@pytest.mark.parametrize("case, expected", [
    ("short prepare", "1 prepare votes, 2 needed"),
    ("short commit", "2 commit votes, 3 needed"),
    ("not the collector", "its collector is 0"),
    ("prepare from the primary", "a prepare from the primary"),
    ("repeated sender", "unknown or repeated sender"),
    ("unknown sender", "unknown or repeated sender"),
    ("other seq", "in a certificate for"),
    ("other digest", "in a certificate for"),
    ("commit in a prepare certificate", "a Commit in a prepare certificate"),
])
def test_a_malformed_certificate_is_evidence_and_counts_nothing(case, expected):
    # set up
    r = Replica(3, collector_config())
    pp = preprepare(1)
    r.handle(pp)
    d = pp.digest
    bad = {
        "short prepare": cert(pp, "prepare", (1,)),
        "short commit": cert(pp, "commit", (0, 1)),
        "not the collector": cert(pp, "prepare", (1, 2), sender=2),
        "prepare from the primary": cert(pp, "prepare", (0, 1)),
        "repeated sender": cert(pp, "commit", (0, 1, 1)),
        "unknown sender": cert(pp, "commit", (0, 1, 9)),
        "other seq": Certificate(0, 1, d, "commit", (Commit(0, 1, d, 0), Commit(0, 1, d, 1), Commit(0, 2, d, 2)), 0),
        "other digest": Certificate(0, 1, d, "prepare", (Prepare(0, 1, d, 1), Prepare(0, 1, fake_digest("x"), 2)), 0),
        "commit in a prepare certificate": Certificate(0, 1, d, "prepare", (Commit(0, 1, d, 1), Commit(0, 1, d, 2)), 0),
    }[case]
    # step
    out = r.handle(bad)
    # check
    assert reasons(out) == ["bad_certificate"]
    assert expected in [a for a in out if hasattr(a, "detail")][0].detail
    assert r.window.log[1].prepares.keys() == {3} and not r.window.log[1].commits


def test_a_vote_in_a_certificate_that_contradicts_one_received_is_equivocation():
    # set up: replica 1's prepare for another digest arrived on its own first
    r = Replica(3, collector_config())
    pp = preprepare(1)
    r.handle(pp)
    r.handle(prepare(pp, 1, digest=fake_digest("other")))
    # step
    out = r.handle(cert(pp, "prepare", (1, 2)))
    # check: the first vote is kept, replica 2's counts (with its own, 2f: prepared)
    assert reasons(out) == ["equivocation"]
    assert r.window.log[1].prepares[1].digest == fake_digest("other")
    assert sorted(r.window.log[1].prepares) == [1, 2, 3] and messages(out, Commit)


def test_a_view_change_proves_a_seq_prepared_from_a_certificate_with_its_2f_signed_prepares():
    # set up
    r = Replica(3, collector_config(view_change_ticks=5))
    pp = preprepare(1)
    feed(r, [pp, cert(pp, "prepare", (1, 2))])
    # step: the commit certificate never comes, the request timer expires
    out = []
    for _ in range(6):
        out += r.handle(Tick())
    # check
    (vc,) = messages(out, ViewChange)
    ((p, prepares),) = vc.prepared
    assert p == pp and sorted(x.sender for x in prepares) == [1, 2, 3]  # its own too


def test_a_withholding_collector_is_replaced_and_every_request_commits():
    # set up: the primary's certificates never leave it
    c = Cluster(4, **CFG, votes="collector", retransmit_ticks=10_000, view_change_ticks=5)

    def flow():
        while c.network:
            c.network = [e for e in c.network if not (isinstance(e.msg, Certificate) and e.origin == 0)]
            if c.network:
                c.deliver(0)

    c.request("a", 1, "k", 1)
    flow()
    before = c.height(1)
    # step
    for _ in range(30):
        c.tick()
        flow()
    # check
    assert before == 0
    assert all(c.nodes[i].replica.view >= 1 for i in (1, 2, 3))
    assert {c.height(i) for i in (1, 2, 3)} == {1} and len({c.head(i) for i in (1, 2, 3)}) == 1


@pytest.mark.parametrize("lost", ["prepare", "commit"])
def test_a_lost_certificate_is_sent_again(lost):
    # set up: replica 3 misses one certificate
    c = Cluster(4, **CFG, votes="collector", retransmit_ticks=3)
    c.request("a", 1, "k", 1)
    for _ in range(50):
        k = next((k for k, e in enumerate(c.network)
                  if isinstance(e.msg, Certificate) and e.msg.phase == lost and e.to == 3), None)
        if k is not None:
            c.drop(k)
            break
        c.deliver(0)
    c.stabilize()
    stalled = c.height(3)
    # step
    for _ in range(10):
        c.tick()
        c.stabilize()
    # check
    assert stalled == 0 and c.height(3) == 1 and len({c.head(i) for i in range(4)}) == 1


def test_a_restarted_collector_sends_its_certificates_again():
    # set up: the collector crashes after prepared, before its certificate left
    c = Cluster(4, **CFG, votes="collector")
    c.request("a", 1, "k", 1)
    while not any(isinstance(e.msg, Certificate) for e in c.network):
        c.deliver(0)
    c.crash(0)
    c.network = [e for e in c.network if not isinstance(e.msg, Certificate)]
    # step
    c.restart(0)
    c.stabilize()
    # check
    assert {c.height(i) for i in range(4)} == {1}


@pytest.mark.parametrize("n", [4, 7, 10, 16])
def test_messages_per_batch_grow_linearly_with_the_collector(n):
    # set up
    counts = {}
    for votes in ("all-to-all", "collector"):
        c = Cluster(n, **CFG, votes=votes)
        for ts in range(1, 4):
            c.request("a", ts, f"k{ts}", ts)
        # step
        c.run()
        counts[votes] = c.sent / 3  # per batch (one request a batch), replies not counted
        assert {c.height(i) for i in range(n)} == {3}
    # check: pre-prepare, prepares in, prepare certificate, commits in, commit certificate
    assert counts["collector"] == 5 * (n - 1)
    assert counts["all-to-all"] == (n - 1) + (n - 1) ** 2 + n * (n - 1)
    assert Q.quorum(n) <= n


def test_a_replica_alone_in_a_later_view_catches_up_from_commit_certificates():
    """Found on the real mesh under load: backup 3's request timer expired behind a busy
    collector; it moved to view 1 alone and dropped the others' view-0 messages, so it
    executed nothing more until the next checkpoint.  A commit certificate of the view it
    left now marks it behind and the stuck check fetches the blocks."""
    # set up: backup 3 times out alone while the others commit in view 0
    cfg = dict(CFG, checkpoint_interval=64, log_window=128)  # no checkpoint to catch up from
    c = Cluster(4, **cfg, votes="collector", retransmit_ticks=5, view_change_ticks=10_000)
    c.request("a", 1, "k1", 1)
    c.stabilize()
    r3 = c.nodes[3].replica
    r3._start_view_change(1, "test: request timer expired alone")
    c.network = [e for e in c.network if e.to == 3]  # its VIEW-CHANGE convinces nobody
    c.stabilize()
    for ts in (2, 3, 4):
        c.request("a", ts, f"k{ts}", ts)
    c.stabilize()
    behind = c.height(3)
    # step
    for _ in range(12):
        c.tick()
        c.serve_fetches()
        c.stabilize()
    # check
    assert behind == 1 and r3.view == 1 and r3.vc.in_view_change
    assert c.height(3) == c.height(0) == 4 and c.head(3) == c.head(0)
