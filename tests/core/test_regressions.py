"""Plain regression tests: every failure the stateful tests (or review) found, shrunk
to the few steps that show it, with the rule it broke."""
from __future__ import annotations

import json

import pytest

from pbft_tasks.core.messages import MalformedMessage, Prepare, PrePrepare, parse, to_wire
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import Cluster

from .helpers import config, fake_digest, messages, persisted, req


def test_vote_from_a_peer_does_not_make_a_restarted_primary_skip_a_seq():
    """Found by LivenessMachine.  A Byzantine backup sent the primary a prepare for
    seq 1; the primary crashed and restarted; _restore set next_seq past every seq in
    the log, including seqs that only held *other* replicas' votes, so the primary
    proposed seq 2, nobody ever pre-prepared seq 1, and execution (strictly in order)
    stalled for good."""
    # set up: the primary logs a Byzantine vote for seq 1, then restarts
    p = Replica(0, config(max_batch=1))
    records = persisted(p.step(Prepare(0, 1, fake_digest("byz"), 1)))
    restarted = Replica(0, config(max_batch=1), records=records)
    # step
    out = restarted.step(req("a", 1))
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
    """The other half of the same rule: after the fix the primary still skips every seq
    for which it sent a pre-prepare, even one that has not executed."""
    p = Replica(0, config(max_batch=1))
    records = persisted(p.step(req("a", 1)) + p.step(req("a", 2)))
    restarted = Replica(0, config(max_batch=1), records=records)
    out = restarted.step(req("a", 3))
    assert [m.seq for m in messages(out, PrePrepare)] == [3]


@pytest.mark.parametrize("raw", [
    '{"type": ["Prepare"]}',
    json.dumps(to_wire(req())).replace('"expires_at": null', '"expires_at": NaN'),
    json.dumps(to_wire(req())).replace('"value": 1', '"value": Infinity'),
    "[" * 50_000,
], ids=["unhashable-type", "nan-expires", "infinite-value", "deep-nesting"])
def test_parse_raises_only_malformed_message(raw):
    """Found writing test_messages.py.  A peer's bytes made parse()/from_wire() raise
    TypeError, ValueError or RecursionError instead of MalformedMessage (STYLE.md
    sec. 3: a bad message is evidence, never an exception out of the adapter); NaN in a
    request even reached the primary and crashed it in batch_digest()."""
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
    out = r.step(Prepare(0, 1, fake_digest("x"), 99))
    assert [a.reason for a in out if type(a).__name__ == "Evidence"] == ["unknown_sender"]
    assert 1 not in r.log or 99 not in r.log[1].prepares


def test_a_batch_committed_in_two_views_makes_the_same_block():
    """Found by ViewChangeSafetyMachine: seq 1 committed at one replica in view 0 and,
    re-proposed by the new primary, at the others in view 1 -- same seq and digest, but
    the block hash covered the view, so honest ledgers 'disagreed' at height 1."""
    from pbft_tasks.core.chain import GENESIS, make_block
    a = make_block(1, 0, fake_digest("b"), GENESIS, (), [])
    b = make_block(1, 1, fake_digest("b"), GENESIS, (), [])
    assert a["hash"] == b["hash"] and a["view"] != b["view"]
