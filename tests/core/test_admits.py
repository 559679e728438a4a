"""Membership in the core (replica.py ``admits``, normalcase.py): a primary never
proposes a request of a client the configuration in force at the batch's seq does not
admit, and every replica forgets such requests at the checkpoint where a boundary may
start, so no request timer waits for one and no view change follows."""
from __future__ import annotations

from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import Cluster

K = 4
BOUNDARY = 2 * K + 1  # "revoked" is not admitted from this seq on


def admits(client: str, seq: int) -> bool:
    return not (client.startswith("revoked/") and seq >= BOUNDARY)


def cluster() -> Cluster:
    c = Cluster(4, checkpoint_interval=K, log_window=2 * K, pipeline=1)
    for i, node in enumerate(c.nodes):
        node.replica = Replica(i, c.config, admits=admits)
    return c


def clients_by_seq(c: Cluster, i: int) -> dict[int, list[str]]:
    return {b["seq"]: [r["client"].split("/")[0] for r in b["requests"]] for b in c.nodes[i].blocks}


def test_the_primary_proposes_no_request_of_a_client_not_admitted_at_the_batch_seq():
    """Set up: a cluster whose membership stops admitting client revoked from seq 9.
    Step: both clients send, before and after the boundary, also to every backup.
    Check: revoked's requests commit below 9 only; the others' commit after; no view
    change; every ledger the same."""
    c = cluster()
    ts = 0
    for _ in range(6):  # past the boundary: one request a batch, one batch a seq
        for who in ("ok", "revoked"):
            ts += 1
            for to in range(4):  # sent to all: backups' request timers know them too
                c.request(f"{who}/s", ts, f"k{ts}", ts, to=to)
        c.run()
    c.tick(2 * c.config.view_change_ticks)
    c.run()
    seqs = clients_by_seq(c, 0)
    assert max(seqs) >= BOUNDARY + 1
    assert all("revoked" not in who for s, who in seqs.items() if s >= BOUNDARY)
    assert any("revoked" in who for s, who in seqs.items() if s < BOUNDARY)
    assert sum(who.count("ok") for who in seqs.values()) == 6
    assert {n.replica.view for n in c.nodes} == {0}
    assert len({c.head(i) for i in range(4)}) == 1


def test_without_the_hook_every_client_is_admitted():
    c = Cluster(4, checkpoint_interval=K, log_window=2 * K)
    assert c.nodes[0].replica.admits is None
    c.request("revoked/s", 1, "k", 1)
    c.run()
    assert c.height(0) == 1


def test_a_request_admitted_on_arrival_is_not_proposed_past_its_clients_boundary():
    """Set up: pipeline 1, client revoked admitted up to seq 1 only.  Step: ok's request
    and then revoked's reach the primary together; revoked's waits while seq 1 is in
    flight.  Check: seq 2 holds no request of revoked, which is forgotten everywhere."""
    c = Cluster(4, checkpoint_interval=K, log_window=2 * K, pipeline=1)
    for i, node in enumerate(c.nodes):
        node.replica = Replica(i, c.config,
                               admits=lambda client, seq: not (client.startswith("revoked/") and seq >= 2))
    c.request("ok/s", 1, "a", 1)
    c.request("revoked/s", 1, "b", 1)
    c.request("ok/s", 2, "c", 2)
    c.run()
    assert clients_by_seq(c, 0) == {1: ["ok"], 2: ["ok"]}
    assert not c.nodes[0].replica.awaiting
