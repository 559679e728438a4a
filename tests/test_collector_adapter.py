"""Collector vote routing through the real adapter: NodeRuntimes with SQLite
ledgers, Ed25519 and JSON on an embedded mesh (in-process queue).  The real-broker
version runs in tests/faults (mesh backend) and tests/integration.

- ``votes`` in mesh.json selects the routing; it is validated, and written only when
  it is not the default.
- A commit in collector mode: the nodes' ledgers are identical, every block carries
  2f+1 commits whose signatures verify (the collector's own commit, kept unsigned by
  the core, is signed on the way out), and the nodes handled Certificates, no
  Prepare or Commit from a peer other than to the collector.
- Every signature in a certificate is checked: one forged vote rejects the whole
  certificate as ``nested_bad_signature``, and counts nothing.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
from nacl.signing import SigningKey

from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import ConfigError, MeshConfig, client_keys, init_mesh, node_keys
from pbft_tasks.core.messages import Certificate, Commit, from_wire, to_wire
from pbft_tasks.signing import Rejected, Signer, Verifier


def collector_mesh(tmp_path, votes: str = "collector") -> str:
    cfg = init_mesh(tmp_path, nodes=4)
    cfg.votes = votes
    cfg.save(tmp_path / "mesh.json")
    return str(tmp_path / "mesh.json")


def test_votes_setting_is_validated_and_written_only_when_not_the_default(tmp_path):
    path = collector_mesh(tmp_path)
    assert json.loads(open(path).read())["votes"] == "collector"
    assert MeshConfig.load(path).replica_config().votes == "collector"
    cfg = MeshConfig.load(path)
    cfg.votes = "all-to-all"
    cfg.save(path)
    assert "votes" not in json.loads(open(path).read())
    obj = json.loads(open(path).read())
    obj["votes"] = "gossip"
    with pytest.raises(ConfigError, match="votes must be one of 'all-to-all', 'collector'"):
        MeshConfig.from_json(obj)


def test_a_collector_mesh_commits_with_certificates_every_signature_checked(tmp_path):
    # set up
    with EmbeddedMesh(collector_mesh(tmp_path)) as mesh:
        client = mesh.client(timeout=5.0)
        # step
        for i in range(5):
            client.put(f"k{i}", i, timeout=10)
        for _ in range(5):
            mesh.step()
        # check
        heads = {(rt.ledger.height, rt.ledger.head) for rt in mesh.nodes}
        assert len(heads) == 1 and heads.pop()[0] >= 5
        verifier = mesh.verifier
        for rt in mesh.nodes:
            for block in rt.ledger.iter_blocks():
                cert = [from_wire(w) for w in block["certificate"]]
                assert len({c.sender for c in cert}) >= 3
                for c in cert:
                    verifier.check(c)  # raises if any signature is wrong
        primary, backups = mesh.nodes[0], mesh.nodes[1:]
        assert primary.handled.get("Prepare", 0) >= 5 * 3 and primary.handled.get("Certificate", 0) == 0
        for rt in backups:
            assert rt.handled.get("Certificate", 0) >= 2 * 5
            assert rt.handled.get("Prepare", 0) == 0 and rt.handled.get("Commit", 0) == 0
            assert not rt.rejected


def test_one_forged_vote_rejects_the_whole_certificate(tmp_path):
    # set up: a real commit certificate signed by the mesh's keys
    path = collector_mesh(tmp_path)
    cfg = MeshConfig.load(path)
    verifier = Verifier(node_keys(cfg), client_keys(cfg))
    keys = {i: SigningKey(bytes.fromhex((tmp_path / "keys" / f"node{i}.key").read_text().strip()))
            for i in range(4)}
    d = "ab" * 32
    votes = tuple(Signer(i, keys[i]).sign(Commit(0, 1, d, i)) for i in range(3))
    good = Signer(0, keys[0]).sign(Certificate(0, 1, d, "commit", votes, 0))
    verifier.check(good)
    # step: node 2's vote signed with a key that is not node 2's
    forged = Signer(2, SigningKey.generate()).sign(Commit(0, 1, d, 2))
    bad = Signer(0, keys[0]).sign(dataclasses.replace(good, votes=votes[:2] + (forged,)))
    # check
    with pytest.raises(Rejected) as err:
        verifier.check(bad)
    assert err.value.reason == "nested_bad_signature"
    with EmbeddedMesh(path) as mesh:
        assert mesh.nodes[1].handle(to_wire(bad)) == "nested_bad_signature"
        assert mesh.nodes[1].rejected["nested_bad_signature"] == 1
        assert 1 not in mesh.nodes[1].replica.window.log


def test_every_protocol_task_takes_one_wire_object(tmp_path, monkeypatch):
    """Every protocol task, pbft.certificate included, takes one wire object as the
    worker passes it: a task whose call did not match would raise TypeError on every
    message of its type (for the certificate, a collector mesh would never commit).
    Each task, called as the worker calls it, hands its one wire object to the node."""
    from pbft_tasks import celery_app, tasks
    from pbft_tasks.node import TASK_FOR_TYPE
    with EmbeddedMesh(collector_mesh(tmp_path)) as mesh:
        rt = mesh.nodes[1]
        monkeypatch.setattr(celery_app, "_runtime", rt)
        handled = []
        monkeypatch.setattr(rt, "handle", lambda wire, expected=None: handled.append(expected))
        by_name = {t.name: t for t in (getattr(tasks, n) for n in dir(tasks))
                   if hasattr(t, "name") and hasattr(t, "run")}
        for kind, name in TASK_FOR_TYPE.items():
            by_name[name].run({"type": kind})
        assert sorted(handled) == sorted(TASK_FOR_TYPE)
