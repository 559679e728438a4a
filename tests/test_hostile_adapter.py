"""Hostile input at the adapter: NodeRuntime and the Celery task functions on
an embedded mesh (real NodeRuntimes, SQLite ledgers, Ed25519 and JSON; an in-process
queue instead of RabbitMQ).  The real-broker version of every attack is
tests/integration/test_hostile_mesh.py.

Each test: set up a mesh, hand node 1 the bad message, check that it is counted under
its documented reason (docs/PROTOCOL.md sec. 7), that nothing raised, and that the mesh
still commits.
"""
from __future__ import annotations

from collections import Counter

import pytest

from pbft_tasks.topology import load_node_identity
from pbft_tasks import celery_app, tasks
from pbft_tasks.core.messages import (Checkpoint, Prepare, PrePrepare, ViewChange, batch_digest,
                                      to_wire)
from pbft_tasks.signing import Signer

TARGET = 1
DIGEST = "ab" * 32


@pytest.fixture
def mesh(embedded_mesh):
    return embedded_mesh  # tests/conftest.py


@pytest.fixture
def as_worker(mesh, monkeypatch):
    """The Celery task functions of this process run against node TARGET."""
    monkeypatch.setattr(celery_app, "_runtime", mesh.nodes[TARGET])
    return mesh.nodes[TARGET]


def signer(mesh, node: int) -> Signer:
    return Signer(node, load_node_identity(mesh.cfg, node))


def commits_still(mesh) -> None:
    c = mesh.client()
    c.wait(c.submit([c.put_request("after", 1)]), timeout=30, every=True)
    assert {rt.ledger.height for rt in mesh.nodes} == {1}


def counted(rt) -> Counter:
    return Counter(rt.rejected)


# -- every drop is counted ----------------------------------------------------------------

def test_a_bad_signature_nested_in_a_view_change_is_counted_not_an_assertion(mesh):
    s2 = signer(mesh, 2)
    bad = to_wire(s2.sign(Checkpoint(64, DIGEST, 2)))
    bad["sig"] = ("0" if bad["sig"][0] != "0" else "1") + bad["sig"][1:]
    vc = s2.sign(ViewChange(1, 0, (), (), 2))
    wire = dict(to_wire(vc), checkpoints=[bad])
    wire["sig"] = to_wire(s2.sign(ViewChange(1, 0, (Checkpoint(64, DIGEST, 2, bad["sig"]),), (), 2)))["sig"]
    assert mesh.nodes[TARGET].handle(wire, "ViewChange") == "nested_bad_signature"
    assert counted(mesh.nodes[TARGET]) == Counter({"nested_bad_signature": 1})


@pytest.mark.parametrize("kind", [["Prepare"], {"a": 1}, ["Fetch"]])
def test_a_type_that_is_a_list_or_object_is_malformed(mesh, kind):
    wire = dict(to_wire(signer(mesh, 2).sign(Prepare(0, 1, DIGEST, 2))), type=kind)
    assert mesh.nodes[TARGET].handle(wire, "Prepare") == "malformed"
    assert counted(mesh.nodes[TARGET]) == Counter({"malformed": 1})


def test_keyword_arguments_and_null_are_counted(mesh, as_worker):
    wire = to_wire(signer(mesh, 2).sign(Prepare(0, 1, DIGEST, 2)))
    tasks.prepare(wire, extra=1)            # a TypeError out of Celery before
    tasks.prepare(None)                     # dropped uncounted before
    tasks.request(None)
    tasks.fetch(None)
    tasks.blocks(wire, x=2)
    assert counted(as_worker) == Counter({"malformed": 5})
    commits_still(mesh)


@pytest.mark.parametrize("block", [
    {"seq": 1, "certificate": 5, "requests": []},
    {"seq": 1, "certificate": [], "requests": {"a": 1}},
    {"seq": "1", "certificate": [], "requests": []},
    {"certificate": [], "requests": []},
    7,
])
def test_a_blocks_message_with_a_bad_block_is_malformed(mesh, block):
    wire = {"type": "Blocks", "sender": 2, "blocks": [block]}
    assert mesh.nodes[TARGET].handle(wire, "Blocks") == "malformed"
    assert counted(mesh.nodes[TARGET]) == Counter({"malformed": 1})


def test_a_far_checkpoint_is_counted_as_out_of_range(mesh):
    rt = mesh.nodes[TARGET]
    far = 2 * rt.replica.cfg.log_window + rt.replica.cfg.checkpoint_interval
    rt.handle(to_wire(signer(mesh, 2).sign(Checkpoint(far, DIGEST, 2))), "Checkpoint")
    assert counted(rt) == Counter({"checkpoint_out_of_range": 1})
    assert rt.replica.catchup.behind_to == 0, "one sender's far checkpoint is not a target"
    commits_still(mesh)


def test_a_preprepare_from_the_wrong_node_still_counts_as_before(mesh):
    """The reasons that existed keep their meaning (a regression guard for the list)."""
    pp = signer(mesh, 2).sign(PrePrepare(0, 1, batch_digest(()), (), 2))
    assert mesh.nodes[TARGET].handle(to_wire(pp), "PrePrepare") is None
    assert counted(mesh.nodes[TARGET]) == Counter({"not_primary": 1})


# -- fetch amplification ----------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def sent_blocks(mesh) -> list:
    import json
    return [json.loads(raw) for kind, dest, raw in mesh.transport.queue
            if kind == "node" and b'"Blocks"' in raw]


def test_fetches_are_rate_limited_per_requester(mesh):
    from pbft_tasks.node import FETCH_BURST, FETCH_RATE
    commits_still(mesh)  # one block to ask for
    rt = mesh.nodes[TARGET]
    rt.clock = Clock()
    fetch = {"type": "Fetch", "from_seq": 1, "to_seq": 64, "requester": 2}
    for _ in range(200):
        rt.handle(dict(fetch), "Fetch")
    answers = sent_blocks(mesh)
    assert len(answers) == FETCH_BURST
    assert counted(rt) == Counter({"fetch_rate_limited": 200 - FETCH_BURST})
    rt.clock.now += 1.0  # a second later: FETCH_RATE more
    for _ in range(50):
        rt.handle(dict(fetch), "Fetch")
    assert len(sent_blocks(mesh)) == FETCH_BURST + FETCH_RATE
    rt.handle(dict(fetch, requester=3), "Fetch")  # another requester has its own bucket
    assert len(sent_blocks(mesh)) == FETCH_BURST + FETCH_RATE + 1


def test_fetches_for_blocks_that_do_not_exist_or_for_outsiders_get_nothing(mesh):
    rt = mesh.nodes[TARGET]
    rt.handle({"type": "Fetch", "from_seq": 5, "to_seq": 9, "requester": 2}, "Fetch")
    assert sent_blocks(mesh) == [] and counted(rt) == Counter()
    assert rt.handle({"type": "Fetch", "from_seq": 1, "to_seq": 1, "requester": 99}, "Fetch") == "malformed"
    assert rt.handle({"type": "Fetch", "from_seq": 1, "to_seq": 1, "requester": TARGET}, "Fetch") == "malformed"
    assert sent_blocks(mesh) == []


# -- the client refuses what every node would refuse ----------------------

def test_the_client_refuses_a_value_nodes_would_refuse(mesh):
    from pbft_tasks.core.messages import MAX_VALUE_BYTES, MAX_VALUE_DEPTH
    c = mesh.client()
    deep = 1
    for _ in range(MAX_VALUE_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper than"):
        c.put_request("k", deep)
    with pytest.raises(ValueError, match=f"larger than {MAX_VALUE_BYTES}"):
        c.put_request("k", "x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(ValueError, match="refused before sending"):
        c.put_request("k", float("nan"))
    assert c.put_request("k", deep[0]).timestamp == c._ts  # the refused ones used no timestamp


# -- replies name their request ------------------------------------------------------------

def test_a_client_accepts_only_replies_to_the_request_it_sent(mesh):
    """A request reusing a timestamp with another operation got the first one's result."""
    from mesh.client import SubmitTimeout
    from pbft_tasks.core.messages import Request, request_digest
    c = mesh.client(timeout=0.2)
    first = c.put_request("k", "first")
    (p,) = c.wait(c.submit([first]), timeout=30, every=True)
    assert p.result["request"] == request_digest(first)
    c.forget([p])
    again = c.signer.sign(Request(c.client_id, first.timestamp, {"op": "put", "key": "k", "value": "other",
                                                                 "expires_at": None}))
    rejected = c.rejected
    with pytest.raises(SubmitTimeout):
        c.wait(c.submit([again]), timeout=3)
    assert c.rejected > rejected, "the nodes' replies (to the first request) were not refused"
    assert all(rt.ledger.get_value("k") == "first" for rt in mesh.nodes)


# -- relays: once per request, one bundle per incoming bundle ---------------------------

def test_a_backup_relays_a_clients_bundle_as_one_message_and_only_once(mesh, as_worker):
    """A client's bundle of requests to a backup (its retransmission goes to every
    replica) is relayed to the primary as one ``pbft.request`` message, not one per
    request; the same bundle again is not relayed at all (core: relay once)."""
    c = mesh.client()
    wires = [to_wire(c.put_request(f"r{i}", i)) for i in range(5)]
    sent: list = []
    real = mesh.transport.send_requests
    mesh.transport.send_requests = lambda to, ws: (sent.append((to, list(ws))), real(to, ws))
    tasks.request(wires)      # what the worker of node TARGET runs for the client's message
    tasks.request(wires)      # the client's next retransmission round
    assert sent == [(0, wires)]
    while mesh.step():        # the primary orders what it was relayed
        pass
    heights = {rt.ledger.height for rt in mesh.nodes}
    assert len(heights) == 1 and heights.pop() >= 1
    assert sum(len(b["requests"]) for b in mesh.nodes[0].ledger.iter_blocks(1, 10)) == 5
