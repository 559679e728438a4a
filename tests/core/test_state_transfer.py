"""State transfer (Castro and Liskov 1999, sec. 4.3 and 5.3): a
replica that learns from f+1 replicas of a stable state beyond what it executed fetches
the committed blocks, checks each one before anything changes, and rejoins."""
from __future__ import annotations

from pbft_tasks.core.actions import Evidence, FetchState
from pbft_tasks.core.messages import Checkpoint, to_wire
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.stimuli import Install

CFG = dict(checkpoint_interval=2, log_window=4, max_batch=1, batch_timeout_ticks=0,
           retransmit_ticks=5)


def feed(c: Cluster, first: int, count: int) -> None:
    for ts in range(first, first + count):
        c.request("a", ts, f"k{ts}", ts)
        c.stabilize()


def test_replica_that_lost_its_queue_fetches_blocks_beyond_its_window_and_rejoins():
    # set up: node 3 is down and loses everything sent to it while the others commit
    # 12 seqs (three windows), so no peer can help it with votes any more
    c = Cluster(4, **CFG)
    feed(c, 1, 2)
    c.crash(3, lose_queue=True)
    feed(c, 3, 12)
    assert c.height(0) == 14 and c.height(3) == 2
    c.restart(3)
    # step: more traffic; its peers' next checkpoints tell node 3 it is behind
    feed(c, 15, 4)
    c.run()
    # check: node 3 has the same chain as everyone and keeps up afterwards
    assert len({(c.height(i), c.head(i)) for i in range(4)}) == 1, [c.height(i) for i in range(4)]
    feed(c, 19, 2)
    c.run()
    assert len({(c.height(i), c.head(i)) for i in range(4)}) == 1
    assert c.height(3) == 20


def test_state_transfer_is_asked_of_f_plus_1_matching_checkpoints_only():
    # set up: a fresh replica hears of checkpoint 8 from one peer, then from a second
    r = Replica(3, Replica(0, Cluster(4, **CFG).config).cfg)
    digest = "ab" * 32
    # step / check: f = 1, so one checkpoint is not enough, two are
    first = r.handle(Checkpoint(8, digest, 0))
    assert not [a for a in first if isinstance(a, FetchState)]
    second = r.handle(Checkpoint(8, digest, 1))
    fetch = [a for a in second if isinstance(a, FetchState)]
    assert len(fetch) == 1 and fetch[0].from_seq == 1 and fetch[0].to_seq == 8
    assert set(fetch[0].peers) == {0, 1}


def _peer_block(tamper=None) -> tuple[Cluster, dict]:
    c = Cluster(4, **CFG)
    feed(c, 1, 1)
    src = c.nodes[0]
    block = dict(src.blocks[0], certificate=[to_wire(x) for x in src.certs[1]])
    if tamper:
        tamper(block)
    return c, block


def _install_into_fresh(block: dict) -> tuple[Replica, list]:
    r = Replica(3, Cluster(4, **CFG).config)
    return r, r.handle(Install(block))


def test_a_good_block_installs_and_reaches_the_peers_head():
    c, block = _peer_block()
    r, out = _install_into_fresh(block)
    assert r.last_exec == 1 and r.head == c.head(0)
    assert [a.seq for a in out if type(a).__name__ == "Execute"] == [1]


def test_a_block_with_too_few_commits_is_refused_and_changes_nothing():
    def drop_commits(b):
        b["certificate"] = b["certificate"][:2]
    _, block = _peer_block(drop_commits)
    r, out = _install_into_fresh(block)
    assert r.last_exec == 0 and r.head == "0" * 64
    assert [a.reason for a in out if isinstance(a, Evidence)] == ["bad_state_transfer"]


def test_a_block_whose_requests_were_changed_is_refused():
    def forge(b):
        b["requests"][0]["op"]["value"] = "forged"
    _, block = _peer_block(forge)
    r, out = _install_into_fresh(block)
    assert r.last_exec == 0
    assert [a.reason for a in out if isinstance(a, Evidence)] == ["bad_state_transfer"]


def test_a_block_with_a_forged_skip_list_is_refused():
    # the hash this replica computes (with its own skip decision) must match
    def forge(b):
        b["skip"] = [0]
    _, block = _peer_block(forge)
    r, out = _install_into_fresh(block)
    assert r.last_exec == 0
    assert [a.reason for a in out if isinstance(a, Evidence)] == ["bad_state_transfer"]


def test_a_block_that_does_not_extend_the_chain_is_refused():
    c = Cluster(4, **CFG)
    feed(c, 1, 2)
    src = c.nodes[0]
    second = dict(src.blocks[1], certificate=[to_wire(x) for x in src.certs[2]])
    r, out = _install_into_fresh(second)  # block 2 onto an empty chain
    assert r.last_exec == 0
    assert [a.reason for a in out if isinstance(a, Evidence)] == ["bad_state_transfer"]


def test_after_state_transfer_the_replica_rejoins_the_normal_case():
    """Regression (tests/core/scenarios/state_transfer.txt): a replica that caught up by
    state transfer kept h = 0, so every later normal-case message was outside its window;
    it followed only by fetching again and never voted.  The far CHECKPOINTs that sent it
    fetching now make its own checkpoint there stable, and its window moves on."""
    # set up: node 3 lost three windows (and its queue) and is back
    c = Cluster(4, **CFG)
    feed(c, 1, 1)
    c.crash(3, lose_queue=True)
    feed(c, 2, 12)
    c.crash(3, lose_queue=True)
    c.restart(3)
    # step: one request; its peers' checkpoints send it fetching, once
    feed(c, 14, 1)
    assert c.serve_fetches() == 13
    c.stabilize()
    # check: caught up with a stable checkpoint and a window around it ...
    r = c.nodes[3].replica
    assert c.height(3) == c.height(0) == 14 and r.window.h == 14 and r.window.high == 14 + CFG["log_window"]
    # ... and it then commits by the normal case, voting, with no more state transfer
    for ts in range(15, 21):
        feed(c, ts, 1)
        assert not c.fetches
        assert c.height(3) == c.height(0) == ts
    assert r.window.h == 20 and c.nodes[3].replica is r
