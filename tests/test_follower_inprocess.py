"""Validators push, a follower installs, a follower fetches: the whole path in one
process (embedded mesh, ``LocalTransport``), no broker.

Set up: a 4-node embedded mesh with real SQLite ledgers and keys, one follower listed
in mesh.json, listening to the pushes of nodes 0 and 1.
Step: commit some puts; ask node 2 for blocks as the follower, and as an unlisted name.
Check: the follower holds the validators' head; a listed follower's fetch is answered,
an unlisted one's is refused as malformed; an altered push is refused.
"""
from __future__ import annotations

from ledger.memory import MemoryLedger
from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import add_followers, init_mesh, node_keys
from pbft_tasks.batch_verify import BatchVerifier
from pbft_tasks.follower import Follower
from pbft_tasks.follower_push import altered_block, sources_for


def make(tmp_path):
    init_mesh(tmp_path, nodes=4)
    cfg = add_followers(tmp_path, ["fz"])
    mesh = EmbeddedMesh(str(tmp_path / "mesh.json"))   # wiring.build_node attaches the pushers
    follower = Follower(4, MemoryLedger(), BatchVerifier(node_keys(cfg), {}))
    got = []

    def deliver(wire):
        got.append(wire)
        follower.offer([wire["block"]] if wire["type"] == "Block" else wire["blocks"],
                       source=wire.get("sender"))
    mesh.transport.followers["fz"] = deliver
    mesh.transport.subscriptions["fz"] = set(sources_for(4, 1, "fz"))
    return mesh, follower, got


def commit(mesh, count):
    c = mesh.client()
    batch = c.submit([c.put_request(f"k{i}", i) for i in range(count)])
    c.wait(batch, timeout=30, every=True)


def test_pushed_blocks_reach_the_validators_head(tmp_path):
    mesh, follower, got = make(tmp_path)
    with mesh:
        commit(mesh, 20)
        mesh.step()
        node = mesh.nodes[0]
        assert (follower.height, follower.head) == (node.ledger.height, node.ledger.head)
        assert follower.height >= 1 and not follower.rejected
        assert {w["sender"] for w in got} == set(sources_for(4, 1, "fz"))
        assert follower.ledger.get_value("k7") == 7


def test_a_listed_follower_may_fetch_an_unlisted_name_may_not(tmp_path):
    mesh, follower, got = make(tmp_path)
    with mesh:
        mesh.transport.subscriptions["fz"] = set()          # no pushes: only fetches
        commit(mesh, 10)
        top = mesh.nodes[2].ledger.height
        mesh.transport.send(2, {"type": "Fetch", "from_seq": 1, "to_seq": 64, "requester": "fz"})
        mesh.transport.send(2, {"type": "Fetch", "from_seq": 1, "to_seq": 64, "requester": "nobody"})
        mesh.transport.pump()
        assert [w["type"] for w in got] == ["Blocks"]
        assert follower.height == top >= 1
        assert mesh.nodes[2].rejected["malformed"] == 1


def test_altered_pushes_are_refused_each_way(tmp_path):
    mesh, follower, _ = make(tmp_path)
    with mesh:
        commit(mesh, 3)
        blocks = list(mesh.nodes[0].ledger.iter_blocks())
    fresh = Follower(4, MemoryLedger(), follower.verifier)
    for b in blocks:
        fresh.offer([altered_block(b)])
        fresh.offer([b])
    assert fresh.height == len(blocks)
    assert sum(fresh.rejected.values()) == len(blocks)
    assert set(fresh.rejected) <= {"commit_mismatch", "too_few_commits", "bad_prev", "bad_block"}
