"""The adapter's half of the Byzantine behaviours and of reads through consensus, on an
embedded mesh (real NodeRuntimes, SQLite ledgers, Ed25519 and JSON; an in-process
queue instead of RabbitMQ).  The real-broker versions are in
tests/integration/test_byzantine_mesh.py.

- HDPBF_BYZANTINE is the only switch: unset or empty is honest, a bad name is a
  ConfigError that names it and lists the valid ones.
- ``forge`` / ``nosig``: every honest node's verifier rejects the faulty node's
  messages (``rejected["bad_signature"]`` / ``["missing_signature"]``), the client its
  replies; the faulty node's own ledger still audits (its certificates are honest).
- ``lie``: a read through consensus returns the true value; the liar's reply differed.
- A get retransmitted after its key changed is not answered from the newer value.
"""
from __future__ import annotations

import time

import pytest

from ledger.memory import MemoryLedger, build_block, put
from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import ConfigError
from pbft_tasks.byzantine import ENV, forged_key, from_environment
from pbft_tasks.core.actions import SendClient
from pbft_tasks.core.byzantine import Byzantine
from pbft_tasks.core.chain import GENESIS
from pbft_tasks.core.messages import Reply
from pbft_tasks.reads import answer_reads


@pytest.fixture
def mesh(embedded_mesh):
    return embedded_mesh  # tests/conftest.py


def make_faulty(mesh: EmbeddedMesh, node: int, spec: str) -> Byzantine:
    byz = Byzantine(node, mesh.cfg.n, spec, seed=node)
    mesh.nodes[node].byzantine = byz
    return byz


# -- the switch ---------------------------------------------------------------------------

def test_no_environment_means_honest():
    assert from_environment(1, 4, {}) is None
    assert from_environment(1, 4, {ENV: " "}) is None
    byz = from_environment(1, 4, {ENV: "equivocate,replay"})
    assert byz.behaviours == {"equivocate", "replay"} and byz.id == 1


def test_a_bad_behaviour_name_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as err:
        from_environment(2, 4, {ENV: "equivocate,sneaky"})
    text = str(err.value)
    assert "HDPBF_BYZANTINE='equivocate,sneaky'" in text and "'sneaky'" in text
    assert "valid behaviours: alter_push, equivocate, flood, forge, lie, nosig, replay, silent, wrong_digest" in text


def test_the_forged_key_is_no_node_key(mesh):
    from pbft_tasks.topology import node_keys
    keys = {bytes(k) for k in node_keys(mesh.cfg).values()}
    assert all(bytes(forged_key(i).verify_key) not in keys for i in range(mesh.cfg.n))


# -- reads through consensus ------------------------------------------------------------------

def test_reads_through_consensus_return_the_committed_value(mesh):
    client = mesh.client(timeout=5.0)
    client.put("a", {"host": "10.0.0.5", "port": 5900}, timeout=10)
    client.put("t", 1, ttl=60, timeout=10)
    assert client.read("a", timeout=10) == {"host": "10.0.0.5", "port": 5900}
    assert client.read("never", timeout=10) is None
    assert client.read("t", timeout=10) == 1
    now = time.time()
    client.clock = lambda: now + 61  # the client's clock decides expiry
    assert client.read("t", timeout=10) is None
    client.delete("a", timeout=10)
    assert client.read("a", timeout=10) is None
    # the reads were ordered: they are in every ledger's chain and change no state
    with_gets = [b for b in mesh.nodes[0].ledger.iter_blocks()
                 if any(r["op"]["op"] == "get" for r in b["requests"])]
    assert len(with_gets) == 5


def test_a_get_answered_again_only_while_its_key_is_unchanged():
    ledger = MemoryLedger()
    block1 = build_block(1, GENESIS, [put("k", "v1")])
    block2 = build_block(2, block1["hash"], [put("x", 0), {"op": "get", "key": "k"}], first_timestamp=5)
    ledger.apply({}, [block1, block2])
    reply = Reply(0, 2, "c/1", 2, ({"timestamp": 6, "result": {"seq": 2, "index": 1, "read": "k",
                                                                "request": "ab" * 32}},))
    again = answer_reads([SendClient("c/1", reply, "retransmitted")], [], [], ledger)
    assert again[0].msg.results[0]["result"] == {"seq": 2, "index": 1, "request": "ab" * 32,
                                                 "key": "k", "version": 1, "value": "v1",
                                                 "expires_at": None}
    ledger.apply({}, [build_block(3, block2["hash"], [put("k", "v2")], first_timestamp=9)])
    assert answer_reads([SendClient("c/1", reply, "retransmitted")], [], [], ledger) == []


# -- behaviours on real runtimes -------------------------------------------------------------------

def test_a_lying_node_cannot_change_what_the_client_reads(mesh):
    byz = make_faulty(mesh, 3, "lie")
    client = mesh.client(timeout=5.0)
    # a console record: the client "admin" speaks for the host of its own name
    console = {"host": "10.0.0.5", "port": 5900, "token": "t0k", "compute_host": "admin"}
    client.put("console/i-1/novnc", console, timeout=10)
    [p] = client.wait(client.submit([client.get_request("console/i-1/novnc")]), timeout=10, every=True)
    assert p.result["value"] == console
    assert p.votes[3]["value"] != console and p.votes[3]["value"]["token"] != "t0k"
    assert all(p.votes[i] == p.result for i in (0, 1, 2))
    assert byz.counts["lies"] > 0
    assert mesh.nodes[3].ledger.get_value("console/i-1/novnc") == console  # its ledger is honest
    assert mesh.nodes[3].status()["byzantine"] == ["lie"]
    assert mesh.nodes[0].status()["byzantine"] == []


@pytest.mark.parametrize("spec,reason", [("forge", "bad_signature"), ("nosig", "missing_signature")])
def test_forged_and_unsigned_messages_are_rejected_and_counted(mesh, spec, reason):
    make_faulty(mesh, 2, spec)
    client = mesh.client(timeout=5.0)
    for i in range(6):
        client.put(f"k{i}", i, timeout=10)
    for _ in range(5):
        mesh.step()
    for i in (0, 1, 3):
        assert mesh.nodes[i].rejected[reason] > 0, mesh.nodes[i].rejected
        assert set(mesh.nodes[i].rejected) == {reason}
    assert client.rejected > 0, "the client must reject node 2's replies too"
    # node 2's own chain is the honest one with honestly signed certificates
    assert mesh.nodes[2].ledger.head == mesh.nodes[0].ledger.head
    from ledger.audit import audit_chain
    audit_chain(list(mesh.nodes[2].ledger.iter_blocks()))


def test_a_silent_node_sends_nothing(mesh):
    byz = make_faulty(mesh, 1, "silent")
    sent_before = mesh.nodes[1].sent
    client = mesh.client(timeout=5.0)
    for i in range(4):
        client.put(f"k{i}", i, timeout=10)
    assert mesh.nodes[1].sent == sent_before and byz.counts["withheld"] > 0
    assert mesh.nodes[1].handle({"type": "Fetch", "from_seq": 1, "to_seq": 2, "requester": 0}) is None
    assert mesh.nodes[1].sent == sent_before, "a silent node answers no state transfer either"
