"""Plain regression tests: failures the stateful tests (or a review) can find, each
shrunk to the few steps that show it, with the rule it breaks."""
from __future__ import annotations

import json

import pytest

from pbft_tasks.core.messages import (Commit, MalformedMessage, NewView, Prepare, PrePrepare, ViewChange,
                                      parse, to_wire)
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.stimuli import Install, Tick

from .helpers import config, fake_digest, messages, persisted, preprepare, req, run_dropping


def test_vote_from_a_peer_does_not_make_a_restarted_primary_skip_a_seq():
    """(LivenessMachine.)  A Byzantine backup sends the primary a prepare for seq 1; the
    primary crashes and restarts.  If _restore set next_seq past every seq in the log,
    including seqs that only hold *other* replicas' votes, the primary would propose
    seq 2, nobody would ever pre-prepare seq 1, and execution (strictly in order) would
    stall for good."""
    # set up: the primary logs a Byzantine vote for seq 1, then restarts
    p = Replica(0, config(max_batch=1))
    records = persisted(p.handle(Prepare(0, 1, fake_digest("byz"), 1)))
    restarted = Replica(0, config(max_batch=1), records=records)
    # step
    out = restarted.handle(req("a", 1))
    # check
    assert [m.seq for m in messages(out, PrePrepare)] == [1]


def test_vote_far_ahead_does_not_stall_a_restarted_cluster():
    """The same bug end to end: one Byzantine vote at the top of the window, a primary
    restart, and the cluster must still execute requests."""
    # set up
    c = Cluster(4, checkpoint_interval=2, log_window=4, max_batch=1, batch_timeout_ticks=1)
    c.byzantine.add(3)
    c.inject(0, Prepare(0, 4, fake_digest("byz"), 3), origin=3)
    c.stabilize()
    c.crash(0)
    c.restart(0)
    # step
    c.request("a", 1, "k", 1)
    c.run()
    # check
    assert [c.height(i) for i in range(3)] == [1, 1, 1]


def test_restarted_primary_never_reuses_a_seq_it_proposed():
    """The other half of the same rule: the restarted primary still skips every seq for
    which it sent a pre-prepare, even one that has not executed."""
    cfg = config(max_batch=1, pipeline=0)  # no window: both seqs in flight, and a third
    p = Replica(0, cfg)
    records = persisted(p.handle(req("a", 1)) + p.handle(req("a", 2)))
    restarted = Replica(0, cfg, records=records)
    out = restarted.handle(req("a", 3))
    assert [m.seq for m in messages(out, PrePrepare)] == [3]


@pytest.mark.parametrize("raw", [
    '{"type": ["Prepare"]}',
    json.dumps(to_wire(req())).replace('"expires_at": null', '"expires_at": NaN'),
    json.dumps(to_wire(req())).replace('"value": 1', '"value": Infinity'),
    "[" * 50_000,
], ids=["unhashable-type", "nan-expires", "infinite-value", "deep-nesting"])
def test_parse_raises_only_malformed_message(raw):
    """A peer's bytes that trip TypeError, ValueError or RecursionError in a naive
    parse()/from_wire() come out as MalformedMessage: a bad message is evidence, never an
    exception out of the adapter (docs/architecture.md, "The replica: choices"); NaN in a
    request would otherwise reach the primary and crash it in batch_digest()."""
    with pytest.raises(MalformedMessage):
        parse(raw)


def test_backup_that_lost_the_preprepare_catches_up():
    """Castro-Liskov sec. 4.2 assumes messages are retransmitted until received.  Drop the
    pre-prepare to backup 3 only: 0, 1 and 2 still prepare (2f backup prepares) and
    commit (2f+1), so they execute and stop retransmitting; 3 holds prepares and commits
    but never the pre-prepare.  This was a strict xfail (it stayed at height 0 for
    ever); state transfer on being stuck fixes it: f+1 commits for a seq it cannot
    execute make it fetch the committed block."""
    # set up
    c = Cluster(4, checkpoint_interval=2, log_window=4, max_batch=1, batch_timeout_ticks=1,
                retransmit_ticks=3)
    c.request("a", 1, "k", 1)
    c.deliver(0)                                   # the request reaches the primary
    k = next(k for k, e in enumerate(c.network) if e.to == 3)
    c.drop(k)                                      # the pre-prepare to 3 is lost
    # step
    for _ in range(5):
        c.run()
        c.tick(10)
    # check
    assert [c.height(i) for i in range(4)] == [1, 1, 1, 1]


def test_vote_from_a_sender_outside_the_mesh_is_evidence_not_a_vote():
    """Found in review: the core counted votes from any sender id; a sender outside
    0..n-1 must never count towards a quorum, whatever the adapter let through."""
    r = Replica(1, config())
    out = r.handle(Prepare(0, 1, fake_digest("x"), 99))
    assert [a.reason for a in out if type(a).__name__ == "Evidence"] == ["unknown_sender"]
    assert 1 not in r.window.log or 99 not in r.window.log[1].prepares


def test_a_batch_committed_in_two_views_makes_the_same_block():
    """(ViewChangeSafetyMachine.)  Seq 1 commits at one replica in view 0 and,
    re-proposed by the new primary, at the others in view 1 -- same seq and digest; a
    block hash covering the view would make honest ledgers 'disagree' at height 1."""
    from pbft_tasks.core.chain import GENESIS, make_block
    a = make_block(1, 0, fake_digest("b"), GENESIS, (), [])
    b = make_block(1, 1, fake_digest("b"), GENESIS, (), [])
    assert a["hash"] == b["hash"] and a["view"] != b["view"]


def test_a_batch_committed_in_v_survives_two_view_changes():
    """No Byzantine node needed.  Seq 1 commits at node 1 only, in view 0.  View 1's
    NEW-VIEW re-proposes it, but only node 2 sees that NEW-VIEW, so it never prepares in
    view 1.  If entering view 1 replaced each log entry by a fresh one for the
    re-proposal, discarding its view-0 prepared certificate, the VIEW-CHANGEs of nodes 1,
    2 and 3 for view 2 would carry none, the NEW-VIEW of view 2 would leave seq 1 empty,
    and its primary would put another request there: two honest ledgers with different
    blocks at height 1.  Castro-Liskov sec. 4.4: P holds the certificate of the latest
    view in which each request prepared (``Entry.prior``)."""
    # set up: view 0, r1 prepares at 0, 1 and 2; only node 1 gets the commits
    c = Cluster(4, checkpoint_interval=4, log_window=8, max_batch=2, batch_timeout_ticks=0,
                view_change_ticks=5, retransmit_ticks=1000)

    def flow(lost=lambda e: False):
        while True:
            k = next((k for k, e in enumerate(c.network) if c.nodes[e.to].up), None)
            if k is None:
                return
            c.drop(k) if lost(c.network[k]) else c.deliver(k)

    r1 = req("a", 1, "k", "r1")
    c.inject(0, r1, origin="a")
    flow(lost=lambda e: e.to == 3 or (isinstance(e.msg, Commit) and e.to != 1))
    assert [c.height(i) for i in range(4)] == [0, 1, 0, 0]
    c.crash(0)  # its queue keeps what is sent to it meanwhile
    # step 1: view 1; its NEW-VIEW (r1 again at seq 1) and prepares reach only 1 and 2
    c.inject(3, r1, origin="a")
    for _ in range(50):
        c.tick()
        flow(lost=lambda e: isinstance(e.msg, (NewView, Prepare)) and e.to == 3)
        if (c.nodes[2].replica.view, c.nodes[2].replica.vc.in_view_change) == (1, False):
            break
    # check 1: the view-0 certificate for seq 1 is still in the next VIEW-CHANGE
    for i in (1, 2):  # in memory and after a restart from what it persisted
        for r in (c.nodes[i].replica, Replica(i, c.config, records=dict(c.nodes[i].records))):
            vc = r._own_view_change(2)
            assert [(pp.seq, pp.view) for pp, _ in vc.prepared] == [(1, 0)], f"node {i}"
    # step 2: view 2 among 1, 2 and 3; node 0 comes back; a new request
    for _ in range(50):
        c.tick()
        flow()
        if all((n.replica.view, n.replica.vc.in_view_change) == (2, False) for n in c.nodes[1:]):
            break
    c.restart(0)
    c.request("b", 1, "k", "r2", to=2)
    c.run()
    # check 2: one chain; r1 stays at seq 1
    heads = {i: (c.height(i), c.head(i)) for i in range(4)}
    assert len(set(heads.values())) == 1, heads
    assert c.nodes[3].blocks[0]["requests"][0]["op"]["value"] == "r1"


def test_state_transfer_keeps_the_prepared_certificate_it_replaces():
    """The same rule for ``Install``: a replica that prepared seq 1 and then fetched the
    committed block still names its prepared certificate in a VIEW-CHANGE."""
    from pbft_tasks.core.chain import GENESIS, make_block
    from .helpers import commit, prepare, preprepare
    r = Replica(1, config())
    pp = preprepare(1)
    r.handle(pp)
    r.handle(prepare(pp, 2))
    block = make_block(1, 0, pp.digest, GENESIS, pp.batch, [])
    r.handle(Install(dict(block, certificate=[to_wire(commit(pp, s)) for s in (0, 2, 3)])))
    assert r.last_exec == 1
    vc = r._own_view_change(1)
    assert [(p.seq, p.view, p.digest) for p, _ in vc.prepared] == [(1, 0, pp.digest)]


def _view_change_cluster(retransmit_ticks: int) -> Cluster:
    """Primary 0 executed one request and crashed; view change timers of 20 ticks."""
    c = Cluster(4, checkpoint_interval=4, log_window=8, max_batch=1, batch_timeout_ticks=0,
                retransmit_ticks=retransmit_ticks, view_change_ticks=20)
    c.request("a", 1, "k1", 1)
    c.stabilize()
    c.crash(0)
    return c


def _state(c: Cluster) -> list:
    return [(n.replica.view, n.replica.vc.in_view_change, len(n.blocks)) if n.replica else None
            for n in c.nodes]


def test_a_new_primary_that_moves_on_alone_does_not_stop_the_others_view_change_timer():
    """(A 4-node RabbitMQ benchmark under load.)  The new primary's NEW-VIEW does not
    arrive, the new primary itself moves on to the next view, and the others must not
    wait in the previous one for ever.  Sec. 4.5.2: the timer for v+2 starts once 2f+1
    VIEW-CHANGEs for v+1 are in, and then runs until a NEW-VIEW.  Counting only what is
    stored for exactly v+1, and stored VIEW-CHANGEs being the newest per sender, the new
    primary's VIEW-CHANGE for v+2 would replace its one for v+1, the count fall to 2f and
    the timer stop: backups 2 and 3 in view 1 with 2 VIEW-CHANGEs, node 1 alone in view 2
    with 1, nobody ever moving."""
    # set up: backups 2 and 3 know of a request and time out (their timer doubles);
    # node 1 learns of it only now, joins view 1 by the f+1 rule (its timer does not
    # double), and its NEW-VIEW for view 1 is lost
    c = _view_change_cluster(retransmit_ticks=10_000)  # no retransmission: the timer alone
    for to in (2, 3):
        c.request("a", 2, "k2", 2, to=to)
    c.stabilize()
    c.tick(21)
    c.request("a", 2, "k2", 2, to=1)
    lost = lambda e: isinstance(e.msg, NewView) and e.msg.view == 1  # noqa: E731
    run_dropping(c, 1, lost)
    assert _state(c)[1:] == [(1, False, 1), (1, True, 1), (1, True, 1)]
    # step: node 1 times out in view 1 first and moves on to view 2 alone
    run_dropping(c, 200, lost)
    # check: 2 and 3 followed it to view 2 (whose primary is 2) and the request executed
    assert _state(c)[1:] == [(2, False, 2), (2, False, 2), (2, False, 2)]


def test_a_lost_new_view_is_sent_again_to_a_replica_that_re_sends_its_view_change():
    """Sec. 4.5.2: a replica in view v+1 must receive the NEW-VIEW or re-send its
    VIEW-CHANGE.  Neither was ever re-sent: a lost NEW-VIEW cost a whole further view
    change (twice the timeout), a lost VIEW-CHANGE could leave the new primary short of
    2f+1 for good.  Now a replica in a view change re-sends its VIEW-CHANGE every
    retransmit_ticks, and one that installed the view answers a re-sent one with the
    NEW-VIEW: the view is installed where it was started."""
    # set up: the backups know of a request; view 1's NEW-VIEW is lost to 2 and 3 once
    c = _view_change_cluster(retransmit_ticks=5)
    for to in (1, 2, 3):
        c.request("a", 2, "k2", 2, to=to)
    c.stabilize()
    c.tick(21)
    sent = {"nv": 0}

    def lost(e) -> bool:
        if isinstance(e.msg, NewView) and e.msg.view == 1 and e.to in (2, 3):
            sent["nv"] += 1
            return sent["nv"] <= 2
        return False

    run_dropping(c, 1, lost)
    assert _state(c)[1:] == [(1, False, 1), (1, True, 1), (1, True, 1)]
    # step: well within the 2 x 20 ticks after which they would move on to view 2
    run_dropping(c, 20, lost)
    # check: view 1 installed everywhere, the request executed in it
    assert _state(c)[1:] == [(1, False, 2), (1, False, 2), (1, False, 2)]
    assert c.nodes[2].blocks[1]["view"] == 1


def _ticks_until(c: Cluster, done, limit: int = 500) -> int:
    for t in range(1, limit + 1):
        c.tick()
        c.stabilize()
        if done():
            return t
    raise AssertionError("never happened")


def test_a_replica_in_a_view_change_re_sends_its_view_change_not_old_view_votes():
    """Found on the n=4 benchmark under load: a replica whose request timer expired kept
    re-sending its view-0 prepares and commits on every silence while it waited for the
    NEW-VIEW; every peer that had moved on dropped them (thousands of ``wrong_view``
    evidences a node), and they queued ahead of the VIEW-CHANGEs and NEW-VIEWs that
    would have ended the view change: a cascade up to view 4 and a bench that timed
    out.  In a view change only the VIEW-CHANGE goes out again (sec. 4.5.2)."""
    # set up: backup 1 voted in view 0, then its request timer expired
    r = Replica(1, config(retransmit_ticks=4, view_change_ticks=2))
    assert messages(r.handle(preprepare(1)), Prepare)
    for _ in range(3):
        r.handle(Tick())
    assert r.vc.in_view_change and r.view == 1
    # step: a long wait for a NEW-VIEW
    later: list = []
    for _ in range(60):
        later += r.handle(Tick())
    # check
    sent = messages(later)
    assert sent and {type(m) for m in sent} == {ViewChange}


def test_after_a_view_change_the_request_timer_stays_doubled_until_a_stable_checkpoint():
    """Also from the loaded benchmark: the request timer came back to its base value at
    the first execution in the new view, so on a machine where executions were a little
    over a timer apart the next view change followed at once.  It is doubled by a view
    change (sec. 4.5.2's growing timeouts) and comes back down only once the new view
    has a stable checkpoint."""
    V = 10
    c = Cluster(7, checkpoint_interval=4, log_window=8, max_batch=1, batch_timeout_ticks=1,
                retransmit_ticks=1000, view_change_ticks=V)
    c.byzantine.add(0)                                  # the primary of view 0 is silent
    for to in range(1, 7):
        c.request("a", 1, "k", 1, to=to)
    c.stabilize()
    first = _ticks_until(c, lambda: c.nodes[2].replica.view == 1)
    _ticks_until(c, lambda: all(c.height(i) == 1 for i in range(1, 7)))
    assert c.nodes[2].replica.view == 1 and not c.nodes[2].replica.vc.in_view_change
    # step: the primary of view 1 falls silent too, before any checkpoint
    c.byzantine.add(1)
    for to in range(2, 7):
        c.request("a", 2, "k", 2, to=to)
    c.stabilize()
    second = _ticks_until(c, lambda: c.nodes[2].replica.view == 2)
    # check
    assert first <= V + 1 and second >= 2 * V
