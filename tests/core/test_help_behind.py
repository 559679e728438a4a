"""Retransmission to a replica that is behind (Castro-Liskov sec. 4.2/5.2 retransmission).

A worker buffers copies of peers' votes that trigger no send (group commit, see
pbft_tasks/node.py); a kill -9 can lose them after the broker acknowledged the messages.
Peers that have executed the slot answer the restarted replica's duplicate votes with
their own, so it still executes.
"""
from pbft_tasks.core.actions import Send
from pbft_tasks.core.messages import Checkpoint, Commit
from pbft_tasks.core.sim import Cluster


def _cluster() -> Cluster:
    return Cluster(n=4, checkpoint_interval=4, log_window=8, max_batch=1,
                   batch_timeout_ticks=0, retransmit_ticks=10_000)


def test_restarted_replica_that_lost_peer_votes_executes_after_help():
    # set up: seq 1 everywhere; seq 2 commits to node 3 are lost, then its buffered
    # copies of peers' votes too (crash)
    c = _cluster()
    c.request("a", 1, "k1", 1)
    c.stabilize()
    c.request("a", 2, "k2", 2)
    while any(c.nodes[e.to].up for e in c.network):
        if c.network[0].to == 3 and isinstance(c.network[0].msg, Commit):
            c.drop(0)
        else:
            c.deliver(0)
    assert [c.height(i) for i in range(4)] == [2, 2, 2, 1]
    c.crash(3)
    votes = c.nodes[3].records["votes/2"]
    for kind in ("prepares", "commits"):
        votes[kind] = [w for w in votes[kind] if w["sender"] == 3]
    # step: restart; it re-sends its own votes, peers see duplicates for an executed seq
    c.restart(3)
    c.stabilize()
    # check: node 3 executed seq 2 and agrees
    assert c.height(3) == 2
    assert len({c.head(i) for i in range(4)}) == 1


def test_replica_that_has_not_executed_does_not_answer_duplicates():
    # set up: node 1 has node 2's prepare for seq 1 but has not executed seq 1
    c = _cluster()
    c.request("a", 1, "k1", 1)
    c.deliver(0)  # request to primary -> pre-prepare broadcast
    while c.network and not (c.network[0].to == 1):
        c.deliver(0)
    r1 = c.nodes[1].replica
    # step: deliver the pre-prepare and node 2's prepare twice to node 1
    c.stabilize()
    assert r1.last_exec == 1  # everything executes in the normal case
    fresh = _cluster()
    fresh.request("a", 1, "k1", 1)
    fresh.deliver(0)
    pp = [e for e in fresh.network if e.to == 1][0].msg
    rep = fresh.nodes[1].replica
    rep.handle(pp)
    from pbft_tasks.core.messages import Prepare
    prep = Prepare(pp.view, pp.seq, pp.digest, 2)
    rep.handle(prep)
    actions = rep.handle(prep)  # duplicate, but seq 1 is not executed here
    # check: no help is sent by a replica that is itself behind
    assert not [a for a in actions if isinstance(a, Send)]


def test_duplicate_checkpoint_for_stable_checkpoint_is_answered():
    # set up: seq 1..2 executed everywhere, checkpoint 4 stable at node 0
    c = _cluster()
    for ts in (1, 2, 3, 4):
        c.request("a", ts, f"k{ts}", ts)
        c.stabilize()
    r0 = c.nodes[0].replica
    assert r0.window.h == 4
    ck = c.nodes[0].replica.window.checkpoints[4][1]
    # step: node 1 re-sends its checkpoint 4 (it missed stability)
    actions = r0.handle(Checkpoint(ck.seq, ck.state_digest, 1))
    # check: node 0 answers node 1 with its own checkpoint 2
    sent = [a for a in actions if isinstance(a, Send)]
    assert len(sent) == 1 and sent[0].to == 1 and isinstance(sent[0].msg, Checkpoint)
    assert sent[0].msg.sender == 0 and sent[0].msg.seq == 4


def test_a_duplicated_commit_between_two_executed_replicas_does_not_storm():
    """Two replicas that both executed seq n must not answer each other's answers
    forever: help is rate-limited per (peer, seq)."""
    # set up: seq 1 executed everywhere
    c = _cluster()
    c.request("a", 1, "k1", 1)
    c.stabilize()
    commit = c.nodes[1].replica.window.log[1].commits[1]
    # step: the network delivers node 1's commit to node 0 a second time
    c.inject(0, commit, origin=1)
    delivered = c.stabilize(max_steps=10_000)
    # check: a handful of messages, not a storm
    assert delivered < 20
    assert len({c.head(i) for i in range(4)}) == 1
