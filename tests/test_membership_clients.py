"""Clients follow the ledger's configuration with no restart (pbft_tasks/membership.py):
a client added by a config entry is accepted from the boundary on, a revoked one is
refused by every replica from its boundary on (counted), also inside a PRE-PREPARE."""
from __future__ import annotations

import pytest

from mesh.client import MeshClient
from mesh.embedded import EmbeddedMesh, _LocalClientTransport
from pbft_tasks.core import config as C
from pbft_tasks.metrics import NodeMetrics
from pbft_tasks.core.messages import PrePrepare, Request, batch_digest, to_wire
from pbft_tasks.signing import Signer, generate_key, public_key_hex, read_key_file, sign_hex
from pbft_tasks.topology import MeshConfig, admin_key_path, init_mesh, load_node_identity

K, L = 4, 8


@pytest.fixture
def mesh(tmp_path):
    base = tmp_path / "mesh"
    init_mesh(base, nodes=4, admins=("a", "b", "c"))
    cfg = MeshConfig.load(base / "mesh.json")
    cfg.checkpoint_interval, cfg.log_window = K, L
    cfg.save(base / "mesh.json")
    with EmbeddedMesh(str(base / "mesh.json")) as m:
        m.base = base
        yield m


def change(mesh, ops):
    latest = mesh.nodes[0].ledger.config_history().latest
    ch = C.proposal(latest, ops)
    ch["sigs"] = {a: sign_hex(read_key_file(admin_key_path(mesh.base, a)), C.change_bytes(ch))
                  for a in ("a", "b")}
    return ch


def client_with_key(mesh, name, key):
    c = MeshClient(name, key, mesh.cfg.n, mesh.verifier)
    c.transport = _LocalClientTransport(mesh, c)
    mesh.transport.clients[c.client_id] = c.on_reply
    return c


def pass_boundary(mesh, admin, effective):
    while min(rt.ledger.height for rt in mesh.nodes) < effective - 1:
        admin.put("tick", 0, timeout=10)


def request_wire(key, name, ts):
    return to_wire(Signer(f"{name}/s", key).sign(Request(f"{name}/s", ts, {"op": "get", "key": "x"})))


def test_a_client_added_by_the_ledger_sends_from_its_boundary_without_restarts(mesh):
    admin = mesh.client()
    key = generate_key()
    r = admin.reconfigure(change(mesh, [{"op": "add_client", "name": "compute1",
                                         "key": public_key_hex(key)}]), timeout=10)
    assert r["config"] == "accepted"
    assert all(rt.handle(request_wire(key, "compute1", 1)) == "unknown_client" for rt in mesh.nodes)
    pass_boundary(mesh, admin, r["effective"])
    assert {rt.membership.version for rt in mesh.nodes} == {1}
    compute1 = client_with_key(mesh, "compute1", key)
    assert compute1.put("instance-1", {"host": "compute1"}, timeout=10)["seq"] >= r["effective"]
    assert {rt.ledger.get_value("instance-1")["host"] for rt in mesh.nodes} == {"compute1"}


def test_a_revoked_client_is_refused_by_every_replica_from_its_boundary(mesh):
    admin = mesh.client()
    key = generate_key()
    r = admin.reconfigure(change(mesh, [{"op": "add_client", "name": "compute1",
                                         "key": public_key_hex(key)}]), timeout=10)
    pass_boundary(mesh, admin, r["effective"])
    compute1 = client_with_key(mesh, "compute1", key)
    compute1.put("a", 1, timeout=10)
    r = admin.reconfigure(change(mesh, [{"op": "remove_client", "name": "compute1"}]), timeout=10)
    assert r["config"] == "accepted"
    compute1.put("b", 2, timeout=10)  # still a member until the boundary
    pass_boundary(mesh, admin, r["effective"])
    before = [rt.rejected["unknown_client"] for rt in mesh.nodes]
    assert all(rt.handle(request_wire(key, "compute1", 99)) == "unknown_client" for rt in mesh.nodes)
    assert [rt.rejected["unknown_client"] for rt in mesh.nodes] == [b + 1 for b in before]
    # a primary that batches the revoked client's request anyway: backups refuse it whole
    seq = mesh.nodes[1].replica.last_exec + 1
    assert seq >= r["effective"]
    batch = (Signer("compute1/s", key).sign(Request("compute1/s", 100, {"op": "get", "key": "x"})),)
    pp = Signer(0, load_node_identity(mesh.cfg, 0)).sign(
        PrePrepare(mesh.nodes[1].replica.view, seq, batch_digest(batch), batch, 0))
    assert [rt.handle(to_wire(pp)) for rt in mesh.nodes[1:]] == ["batch_unknown_client"] * 3
    # a stale change is a counted no-op; every node exports the same membership metrics
    stale = admin.reconfigure(dict(change(mesh, [{"op": "add_follower", "name": "f"}]), version=0),
                              timeout=10)
    assert stale["reason"] == "config_stale"
    for rt in mesh.nodes:
        reg = NodeMetrics(rt).registry
        assert reg.get_sample_value("hdpbf_config_version", {"node": str(rt.id)}) == 2
        assert [reg.get_sample_value("hdpbf_config_changes_total", {"node": str(rt.id), "outcome": o})
                for o in ("accepted", "config_stale", "config_unauthorized")] == [2, 1, 0]
        assert rt.status()["config_version"] == 2


def test_status_flags_a_node_on_another_configuration_version():
    from mesh.ops.mesh_status import flag_config_versions, node_row
    answers = {0: 2, 1: 2, 2: 1, 3: None}
    rows = [node_row(i, {"height": 5, "view": 0, "head": "ab", "config_version": v}, 5)
            for i, v in answers.items()]
    flag_config_versions(rows)
    assert [r["config_differs"] for r in rows] == [False, False, True, False]


def test_a_follower_added_by_the_ledger_is_answered_and_pushed_to_without_restarts(mesh):
    from pbft_tasks.follower_push import LatePusher
    admin = mesh.client()
    fetch = {"type": "Fetch", "from_seq": 1, "to_seq": 2, "requester": "api9"}
    assert all(rt.handle(dict(fetch)) == "malformed" for rt in mesh.nodes)  # not a member yet
    r = admin.reconfigure(change(mesh, [{"op": "add_follower", "name": "api9"}]), timeout=10)
    assert r["config"] == "accepted"
    pushers = [h for rt in mesh.nodes for h in rt.on_execute if isinstance(h, LatePusher)]
    # an accepted (still pending) follower is enough to start pushing: it fetches the rest
    assert len(pushers) == 4 and all(p.pusher is not None for p in pushers)
    pass_boundary(mesh, admin, r["effective"])
    assert all(rt.handle(dict(fetch)) is None for rt in mesh.nodes)
    assert all(p.pusher is not None and p.pusher.pushed > 0 for p in pushers)


def test_compute_seals_for_the_readers_of_the_newest_configuration(mesh):
    from nacl.public import PrivateKey

    from mesh.openstack.reader_keys import ReaderKeys
    from mesh.openstack.sealing import Opener, Sealer
    old = PrivateKey.generate()
    sealer = Sealer({"api0": old.public_key})
    keys = ReaderKeys(sealer, mesh.client())
    assert keys.refresh() is False and list(sealer.recipients) == ["api0"]  # no change yet
    new = PrivateKey.generate()
    admin = mesh.client()
    r = admin.reconfigure(change(mesh, [{"op": "add_reader", "name": "api9",
                                         "key": bytes(new.public_key).hex()}]), timeout=10)
    assert r["config"] == "accepted"
    assert keys.refresh() is True and list(sealer.recipients) == ["api9"]  # genesis had none
    assert Opener("api9", new).open(sealer.seal("tok")) == "tok"
    admin.reconfigure(change(mesh, [{"op": "remove_reader", "name": "api9"}]), timeout=10)
    assert keys.refresh() is True and sealer.recipients == {}  # revoked: sealed for nobody
    assert sealer.seal("tok") == {}
