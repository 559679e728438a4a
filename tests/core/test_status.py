"""The status exchange (pbft_tasks/core/status.py): a replica left behind catches up in
an idle mesh, from f+1 peers' statuses, with no client request; one faulty status is
no target; a peer behind is answered; a replica behind does not start a view change
alone."""
from __future__ import annotations

import copy

import pytest

from pbft_tasks.core.actions import Broadcast, FetchState, Send
from pbft_tasks.core.messages import Checkpoint, Status
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.stimuli import Resume, Tick

from .helpers import config, fake_digest, messages, reasons

K = 4  # checkpoint interval
CFG = dict(checkpoint_interval=K, log_window=2 * K, max_batch=1, batch_timeout_ticks=0,
           retransmit_ticks=8, view_change_ticks=20)
STATUS_TICKS = 10
HEAD = fake_digest("head")


def commit_requests(c: Cluster, first: int, count: int) -> None:
    for ts in range(first, first + count):
        c.request("a", ts, f"k{ts}", ts)
        c.stabilize()


def cut(c: Cluster, i: int) -> None:
    """Node i hears nothing and sends nothing (its ticks stop too: the worker skips
    them while its broker is unreachable)."""
    c.nodes[i].up = False


def heal(c: Cluster, i: int) -> None:
    """Reconnected: what was sent to it while it was cut off is lost."""
    c.network = [e for e in c.network if e.to != i]
    c.nodes[i].up = True


def idle_until_one_head(c: Cluster, rounds: int) -> int | None:
    """Deliver, answer fetches and tick, without any request; the round at which every
    replica has one chain, or None."""
    for r in range(rounds):
        c.stabilize()
        c.serve_fetches()
        if len({(c.height(i), c.head(i)) for i in range(len(c.nodes))}) == 1:
            return r
        c.tick()
    return None


@pytest.mark.parametrize("k", [K - 1, 3 * K + 1], ids=["below-interval", "above-interval"])
def test_a_replica_cut_off_while_k_blocks_commit_reaches_the_head_of_an_idle_mesh(k):
    # set up: node 3 is cut off while k blocks commit (its queue lost), then reconnects
    # to a mesh that has no more requests
    c = Cluster(4, status_ticks=STATUS_TICKS, **CFG)
    commit_requests(c, 1, 2)
    cut(c, 3)
    commit_requests(c, 3, k)
    assert c.height(0) == 2 + k and c.height(3) == 2
    heal(c, 3)
    # step: only time passes
    rounds = idle_until_one_head(c, 10 * STATUS_TICKS)
    # check: it reached the head within a couple of status periods, by state transfer
    assert rounds is not None and rounds <= 3 * STATUS_TICKS, [c.height(i) for i in range(4)]
    assert c.height(3) == 2 + k
    # and it votes again: its checkpoints are stable, the next request commits with it
    r3 = c.nodes[3].replica
    assert r3.window.h == c.nodes[0].replica.window.h
    commit_requests(c, 3 + k, K)
    c.run()
    assert c.height(3) == c.height(0) == 2 + k + K


def test_without_the_status_exchange_the_same_replica_stays_behind():
    # the gap the status exchange closes: retransmission and the stuck check ride on traffic
    c = Cluster(4, status_ticks=0, **CFG)
    commit_requests(c, 1, 2)
    cut(c, 3)
    commit_requests(c, 3, K + 1)
    heal(c, 3)
    assert idle_until_one_head(c, 10 * STATUS_TICKS) is None
    assert c.height(3) == 2


def test_a_replica_killed_and_restarted_reaches_the_head_of_an_idle_mesh():
    c = Cluster(4, status_ticks=STATUS_TICKS, **CFG)
    commit_requests(c, 1, 2)
    c.crash(3, lose_queue=True)
    commit_requests(c, 3, 2 * K + 1)
    c.restart(3)
    assert idle_until_one_head(c, 10 * STATUS_TICKS) is not None
    assert c.height(3) == 2 * K + 3


def restored_one_block_behind(status_ticks: int) -> Cluster:
    """Node 3's ledger and records are restored from a backup one block old while the
    mesh goes on; then a request comes that the others commit without it.  The seqs
    are not checkpoints, so no CHECKPOINT tells node 3 it is behind."""
    c = Cluster(4, status_ticks=status_ticks, **CFG)
    commit_requests(c, 1, K + 1)
    backup = copy.deepcopy((c.nodes[3].records, c.nodes[3].blocks, c.nodes[3].certs))
    commit_requests(c, K + 2, 1)
    c.crash(3, lose_queue=True)
    c.nodes[3].records, c.nodes[3].blocks, c.nodes[3].certs = backup
    c.restart(3)
    c.request("a", K + 3, "after-restore", 1)
    for _ in range(5 * CFG["view_change_ticks"]):  # well past the request timer
        c.stabilize()
        c.serve_fetches()
        c.tick()
    return c


def test_a_replica_restored_one_block_behind_catches_up_instead_of_a_view_change_alone():
    c = restored_one_block_behind(STATUS_TICKS)
    r3 = c.nodes[3].replica
    assert c.height(3) == c.height(0) == K + 3
    assert c.head(3) == c.head(0)
    assert (r3.view, r3.vc.in_view_change) == (0, False)


def test_without_statuses_the_restored_replica_starts_a_view_change_alone_and_stays_behind():
    # what tests/compose saw on a real mesh: the request timer fires before anything
    # tells the replica it is behind
    c = restored_one_block_behind(0)
    r3 = c.nodes[3].replica
    assert c.height(3) == K + 1 and c.height(0) == K + 3
    assert (r3.view, r3.vc.in_view_change) == (1, True)
    assert {c.nodes[i].replica.view for i in range(3)} == {0}


def test_one_faulty_status_is_no_target_and_f_plus_1_are():
    # set up: a replica at seq 0, stalled long enough to act on statuses
    r = Replica(3, config(status_ticks=STATUS_TICKS))
    for _ in range(10):
        r.handle(Tick())
    # step / check: one peer claims 2^62: nothing; a second claims 9: fetch up to 9,
    # from the peers at or past it
    assert not [a for a in r.handle(Status(0, 2**62, HEAD, 0, 0)) if isinstance(a, FetchState)]
    fetch = [a for a in r.handle(Status(0, 9, HEAD, 8, 1)) if isinstance(a, FetchState)]
    assert len(fetch) == 1 and (fetch[0].from_seq, fetch[0].to_seq) == (1, 9)
    assert set(fetch[0].peers) == {0, 1}


def test_statuses_go_out_every_period_to_every_peer():
    r = Replica(1, config(status_ticks=STATUS_TICKS))
    sent = []
    for _ in range(3 * STATUS_TICKS):
        sent += [a for a in r.handle(Tick()) if isinstance(a, Broadcast) and isinstance(a.msg, Status)]
    assert len(sent) == 3  # the idle cost: one broadcast (n-1 messages) a period
    assert sent[0].msg == Status(0, 0, "0" * 64, 0, 1)


def test_statuses_are_off_when_status_ticks_is_0():
    r = Replica(1, config())
    out = [a for _ in range(50) for a in r.handle(Tick())]
    out += r.handle(Resume())
    assert not messages(out, Status)


def test_a_peer_behind_is_answered_with_a_status_and_the_stable_checkpoint_proof_once_a_period():
    # set up: node 0 of a mesh that committed past its first checkpoint
    c = Cluster(4, status_ticks=STATUS_TICKS, **CFG)
    commit_requests(c, 1, K + 1)
    r0 = c.nodes[0].replica
    assert r0.window.h == K
    # step: node 3 says it is at seq 1, stable checkpoint 0
    out = r0.handle(Status(0, 1, HEAD, 0, 3))
    # check: our status, and the 2f+1 checkpoints at h (none of node 3's own)
    sends = [a for a in out if isinstance(a, Send)]
    assert {a.to for a in sends} == {3}
    assert [type(a.msg) for a in sends][0] is Status and sends[0].msg.seq == K + 1
    proof = [a.msg for a in sends if isinstance(a.msg, Checkpoint)]
    assert proof and {ck.seq for ck in proof} == {K} and 3 not in {ck.sender for ck in proof}
    assert not [a for a in r0.handle(Status(0, 1, HEAD, 0, 3)) if isinstance(a, Send)]
    # a peer level with us is not answered
    assert not [a for a in r0.handle(Status(0, K + 1, HEAD, K, 2)) if isinstance(a, Send)]


def test_own_status_coming_back_is_evidence():
    r = Replica(1, config(status_ticks=STATUS_TICKS))
    assert reasons(r.handle(Status(0, 0, HEAD, 0, 1))) == ["replayed_own"]


def test_an_executing_replica_does_not_fetch_on_a_status_a_little_ahead():
    # under load a peer's status is often a few seqs ahead: normal case is faster
    c = Cluster(4, status_ticks=STATUS_TICKS, **CFG)
    commit_requests(c, 1, 1)
    r = c.nodes[3].replica
    r.handle(Tick())  # it executed seq 1 just now
    for s in (0, 1):
        assert not [a for a in r.handle(Status(0, 3, HEAD, 0, s)) if isinstance(a, FetchState)]
