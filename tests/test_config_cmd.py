"""``hdpbf keygen`` and ``hdpbf config propose|sign|show`` on a mesh with admins, and a
change ordered through an in-process mesh: accepted with the seq it takes effect at, a
racing proposal refused as stale, ``hdpbf verify`` passing over the config entries."""
from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from mesh.cli import main
from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import MeshConfig, admin_key_path, init_mesh

K, L = 4, 8


@pytest.fixture
def mesh_dir(tmp_path):
    base = tmp_path / "mesh"
    init_mesh(base, nodes=4, admins=("alice", "bob", "carol"))
    cfg = MeshConfig.load(base / "mesh.json")
    assert cfg.admin_threshold == 2
    cfg.checkpoint_interval, cfg.log_window = K, L  # boundaries a few blocks away
    cfg.save(base / "mesh.json")
    return base


def hdpbf(base, *args, code=0):
    res = CliRunner().invoke(main, [*args, "--config", str(base / "mesh.json")]
                             if args[0] == "config" and args[1] in ("propose", "show", "submit")
                             else list(args))
    assert res.exit_code == code, res.output
    return res.output


def keygen(tmp_path, name, kind="ed25519"):
    out = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / name), "--kind", kind])
    assert out.exit_code == 0, out.output
    return out.output.strip()


def test_keygen_writes_a_private_key_and_prints_the_public_one(tmp_path):
    pub = keygen(tmp_path, "c.key")
    assert len(pub) == 64 and stat.S_IMODE(os.stat(tmp_path / "c.key").st_mode) == 0o600
    assert len(keygen(tmp_path, "r.key", "x25519")) == 64
    again = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / "c.key")])
    assert again.exit_code == 2 and "never overwrites" in again.output


def test_propose_refuses_bad_input_with_one_line(mesh_dir, tmp_path):
    p = str(tmp_path / "P.json")
    assert "NAME=PUBLIC_KEY" in hdpbf(mesh_dir, "config", "propose", "--add-client", "x", "--out", p, code=2)
    assert "config_malformed" in hdpbf(mesh_dir, "config", "propose", "--add-client", "x=zz", "--out", p, code=2)
    assert "config_unknown_member" in hdpbf(mesh_dir, "config", "propose", "--remove-client", "nobody",
                                            "--out", p, code=2)
    assert "config_unsupported" in hdpbf(mesh_dir, "config", "propose", "--remove-validator", "3",
                                         "--out", p, code=2)
    assert "nothing to change" in hdpbf(mesh_dir, "config", "propose", "--out", p, code=2)
    assert not os.path.exists(p)


def test_sign_finds_the_admin_by_key_and_refuses_others(mesh_dir, tmp_path):
    p = str(tmp_path / "P.json")
    pub = keygen(tmp_path, "compute1.key")
    hdpbf(mesh_dir, "config", "propose", "--add-client", f"compute1={pub}", "--out", p)
    out = hdpbf(mesh_dir, "config", "sign", p, "--admin-key", str(admin_key_path(mesh_dir, "alice")))
    assert "signed as alice: 1 of 2" in out
    out = hdpbf(mesh_dir, "config", "sign", p, "--admin-key", str(tmp_path / "compute1.key"), code=2)
    assert "is not the key of an admin" in out
    assert "has 1 valid admin signatures, the policy needs 2" in hdpbf(mesh_dir, "config", "submit", p, code=2)
    hdpbf(mesh_dir, "config", "sign", p, "--admin-key", str(admin_key_path(mesh_dir, "bob")))
    doc = json.loads(open(p).read())
    assert sorted(doc["change"]["sigs"]) == ["alice", "bob"] and doc["threshold"] == 2


def signed_proposal(mesh_dir, tmp_path, name, *flags):
    p = str(tmp_path / name)
    hdpbf(mesh_dir, "config", "propose", *flags, "--out", p)
    for admin in ("alice", "carol"):
        hdpbf(mesh_dir, "config", "sign", p, "--admin-key", str(admin_key_path(mesh_dir, admin)))
    return json.loads(open(p).read())["change"]


def test_a_change_through_the_mesh_takes_effect_at_its_boundary(mesh_dir, tmp_path):
    """Set up: two proposals built on genesis.  Step: order both through an in-process
    mesh, then enough updates to pass the boundary.  Check: the first is accepted with
    its boundary, the second refused as stale; config show reports pending, then in
    force; hdpbf verify passes over ledgers holding config entries."""
    first = signed_proposal(mesh_dir, tmp_path, "P1.json", "--add-client", f"c1={keygen(tmp_path, 'c1')}",
                            "--add-follower", "f1")
    second = signed_proposal(mesh_dir, tmp_path, "P2.json", "--add-client", f"c2={keygen(tmp_path, 'c2')}")
    with EmbeddedMesh(str(mesh_dir / "mesh.json")) as mesh:
        client = mesh.client()
        client.put("before", 1, timeout=10)
        r1 = client.reconfigure(first, timeout=10)
        r2 = client.reconfigure(second, timeout=10)
        assert r1["config"] == "accepted" and r1["version"] == 1
        assert r1["effective"] == ((r1["executed"] + L) // K + 1) * K + 1
        assert r2["config"] == "refused" and r2["reason"] == "config_stale"
        shown = json.loads(hdpbf(mesh_dir, "config", "show", "--json"))
        assert shown["version"] == 0 and [p["version"] for p in shown["pending"]] == [1]
        while mesh.nodes[0].ledger.height < r1["effective"]:
            client.put("k", mesh.nodes[0].ledger.height, timeout=10)
    shown = json.loads(hdpbf(mesh_dir, "config", "show", "--json"))
    assert shown["version"] == 1 and shown["effective"] == r1["effective"] and shown["pending"] == []
    assert {"name": "c1", "key": first["ops"][0]["key"]} in shown["config"]["clients"]
    assert shown["config"]["followers"] == ["f1"] and shown["refused"] == {"config_stale": 1}
    assert "configuration version 1" in hdpbf(mesh_dir, "config", "show")
    res = CliRunner().invoke(main, ["verify", "--data-dir", str(mesh_dir / "data"), "--config",
                                    str(mesh_dir / "mesh.json"), "--json"])
    assert res.exit_code == 0, res.output
    assert all(n["ok"] for n in json.loads(res.output)["nodes"])


def test_a_client_mesh_json_does_not_list_loads_its_own_key_file(mesh_dir, tmp_path):
    from pbft_tasks.signing import public_key_hex
    from pbft_tasks.topology import ConfigError, load_client_identity
    pub = keygen(tmp_path, "compute9.key")
    cfg = MeshConfig.load(mesh_dir / "mesh.json")
    assert public_key_hex(load_client_identity(cfg, "compute9", tmp_path / "compute9.key")) == pub
    with pytest.raises(ConfigError, match="compute9"):
        load_client_identity(cfg, "compute9")
