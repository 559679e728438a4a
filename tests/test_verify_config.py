"""``hdpbf verify`` checks each block against the configuration in force at its seq: a
validator's key rotated and a client removed by a config entry, a chain that follows
the change passes, and the old key or the removed client after the boundary fail."""
from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from ledger.store import LedgerStore
from mesh.cli import main
from pbft_tasks.core import config as C
from pbft_tasks.core.chain import GENESIS, make_block
from pbft_tasks.core.messages import CONFIG_KEY, Commit, Request, batch_digest, to_wire
from pbft_tasks.signing import Signer, generate_key, public_key_hex, read_key_file, sign_hex
from pbft_tasks.topology import (MeshConfig, admin_key_path, init_mesh, load_client_identity,
                                 load_node_identity)

K, L = 4, 8


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    base = tmp_path_factory.mktemp("mesh")
    init_mesh(base, nodes=4, clients=("admin", "other"), admins=("a", "b"))
    cfg = MeshConfig.load(base / "mesh.json")
    cfg.checkpoint_interval, cfg.log_window = K, L
    cfg.save(base / "mesh.json")
    return base, MeshConfig.load(base / "mesh.json")


def write_chain(base, cfg, length, old_key_at=None, other_at=None):
    """Node 0's ledger: block 1 rotates validator 1's key and removes client "other";
    then puts.  ``old_key_at``: node 1 signs that block with its old key; ``other_at``:
    that block carries a request of the removed client."""
    nodes = {i: load_node_identity(cfg, i) for i in range(4)}
    new1 = generate_key()
    clients = {c: load_client_identity(cfg, c) for c in ("admin", "other")}
    g = cfg.genesis()
    change = C.proposal(g, [{"op": "rotate_validator", "id": 1, "key": public_key_hex(new1)},
                            {"op": "remove_client", "name": "other"}])
    change["sigs"] = {a: sign_hex(read_key_file(admin_key_path(base, a)), C.change_bytes(change))
                      for a in ("a", "b")}
    effective = C.effective_from(1, K, L)
    path = base / "data" / "node0" / "ledger.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    with LedgerStore(path) as store:
        # a mesh whose replicas switch validator sets (the default ledger refuses it)
        store.bind_genesis(dataclasses.replace(cfg.config_rules(), validator_changes=True))
        prev = GENESIS
        for seq in range(1, length + 1):
            who = "other" if seq == other_at else "admin"
            op = ({"op": "config", "key": CONFIG_KEY, "change": change} if seq == 1
                  else {"op": "put", "key": "k", "value": seq, "expires_at": None})
            req = Signer(f"{who}/s", clients[who]).sign(Request(f"{who}/s", seq, op))
            batch = (req,)
            block = make_block(seq, 0, batch_digest(batch), prev, batch, [])
            keys = dict(nodes)
            if seq >= effective and seq != old_key_at:
                keys[1] = new1
            block["certificate"] = [to_wire(Signer(i, keys[i]).sign(Commit(0, seq, block["digest"], i)))
                                    for i in (0, 1, 2)]
            [results] = store.apply(None, [block])
            if seq == 1:
                assert results[0]["config"] == "accepted" and results[0]["effective"] == effective
            prev = block["hash"]
    return effective


def verify(base):
    res = CliRunner().invoke(main, ["verify", "--data-dir", str(base / "data"), "--node", "0",
                                    "--config", str(base / "mesh.json"), "--json"])
    return res.exit_code, json.loads(res.output)["nodes"][0]


def test_a_chain_across_a_key_rotation_verifies(mesh):
    base, cfg = mesh
    effective = write_chain(base, cfg, 20, other_at=5)  # "other" still a member at 5
    assert effective < 20
    code, node = verify(base)
    assert code == 0 and node["ok"] and node["blocks"] == 20, node


def test_the_old_key_signs_nothing_after_the_boundary(mesh):
    base, cfg = mesh
    effective = write_chain(base, cfg, 20, old_key_at=C.effective_from(1, K, L))
    code, node = verify(base)
    assert code == 1 and node["bad_block"] == effective
    assert "commit from node 1: bad signature" in node["reason"]


def test_a_removed_client_is_refused_from_the_boundary_on(mesh):
    base, cfg = mesh
    effective = write_chain(base, cfg, 20, other_at=C.effective_from(1, K, L))
    code, node = verify(base)
    assert code == 1 and node["bad_block"] == effective
    assert "unknown client" in node["reason"]
