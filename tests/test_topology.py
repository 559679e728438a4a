"""The mesh configuration: ``hdpbf init`` lays out a usable mesh, each node can load only
its own key, and a broken mesh.json is refused with a message saying what is wrong."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pbft_tasks import topology
from mesh.cli import main
from pbft_tasks.topology import (ConfigError, MeshConfig, client_keys, from_env, init_mesh,
                           load_client_identity, load_node_identity, node_keys)
from pbft_tasks.core.messages import Commit, Request
from pbft_tasks.signing import Signer, Verifier, public_key_hex


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def mesh(tmp_path) -> MeshConfig:
    return init_mesh(tmp_path / "mesh", nodes=4, clients=("admin", "ops"))


# -- hdpbf init --------------------------------------------------------------------------

@pytest.mark.parametrize("n, f", [(4, 1), (7, 2), (10, 3)])
def test_init_writes_a_loadable_mesh_with_private_keys(tmp_path, n, f):
    d = tmp_path / "m"
    result = run("init", "--nodes", str(n), "--dir", str(d), "--client", "admin",
                 "--client", "ops")
    assert result.exit_code == 0, result.output
    config = MeshConfig.load(d / "mesh.json")
    assert (config.n, config.f) == (n, f)
    assert [x.id for x in config.nodes] == list(range(n))
    assert [x.queue for x in config.nodes] == [f"node.{i}" for i in range(n)]
    assert [c.name for c in config.clients] == ["admin", "ops"]
    assert mode(d / "keys") == 0o700
    key_files = sorted(p.name for p in (d / "keys").iterdir())
    assert key_files == sorted([f"node{i}.key" for i in range(n)]
                               + ["client-admin.key", "client-ops.key"])
    assert all(mode(d / "keys" / name) == 0o600 for name in key_files)
    for i in range(n):  # every node's key file is that node's key
        assert public_key_hex(load_node_identity(config, i)) == config.nodes[i].public_key
        assert f"node{i}.key" in result.output.replace("\n", "")
    assert load_client_identity(config, "ops")
    assert "celery -A pbft_tasks worker -Q node.0" in result.output


def test_init_defaults_to_an_admin_client(tmp_path):
    assert run("init", "--dir", str(tmp_path)).exit_code == 0
    assert [c.name for c in MeshConfig.load(tmp_path / "mesh.json").clients] == ["admin"]


def test_init_refuses_to_overwrite_without_force(tmp_path):
    assert run("init", "--dir", str(tmp_path)).exit_code == 0
    before = (tmp_path / "mesh.json").read_bytes()
    key_before = (tmp_path / "keys" / "node0.key").read_bytes()

    result = run("init", "--dir", str(tmp_path), "--nodes", "7")
    assert result.exit_code == 2
    assert "already exists" in result.output and "--force" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "mesh.json").read_bytes() == before
    assert (tmp_path / "keys" / "node0.key").read_bytes() == key_before

    result = run("init", "--dir", str(tmp_path), "--nodes", "7", "--force")
    assert result.exit_code == 0, result.output
    assert MeshConfig.load(tmp_path / "mesh.json").n == 7
    assert (tmp_path / "keys" / "node0.key").read_bytes() != key_before


def test_force_with_fewer_nodes_removes_the_old_meshs_extra_keys(tmp_path):
    init_mesh(tmp_path, nodes=7, clients=("admin", "old"))
    init_mesh(tmp_path, nodes=4, clients=("admin",), force=True)
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "client-admin.key", "node0.key", "node1.key", "node2.key", "node3.key"]


@pytest.mark.parametrize("args, message", [
    (["--nodes", "3"], "at least 4 nodes"),
    (["--nodes", "0"], "at least 4 nodes"),
    (["--client", "a/b"], "client name"),
    (["--client", "x", "--client", "x"], "duplicate client"),
])
def test_init_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run("init", "--dir", str(tmp_path / "m"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m" / "mesh.json").exists()


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and "hdpbf" in result.output


def test_mesh_json_with_a_password_in_a_url_is_private(tmp_path):
    c1 = init_mesh(tmp_path / "a")  # default broker URL has guest:guest
    c2 = init_mesh(tmp_path / "b", broker_url="amqp://127.0.0.1//",
                   result_backend="redis://127.0.0.1:6379/0")
    assert mode(c1.path) == 0o600 and mode(c2.path) == 0o644


# -- identities --------------------------------------------------------------------------

def test_node_keys_from_the_mesh_verify_what_its_identities_sign(mesh):
    v = Verifier(node_keys(mesh), client_keys(mesh))
    v.check(Signer(2, load_node_identity(mesh, 2)).sign(
        Commit(view=0, seq=1, digest="ab" * 32, sender=2)))
    v.check(Signer("ops", load_client_identity(mesh, "ops")).sign(
        Request(client="ops", timestamp=1, op={"op": "delete", "key": "k"})))


def test_load_node_identity_refuses_a_missing_key(mesh):
    (mesh.base_dir / "keys" / "node3.key").unlink()
    with pytest.raises(ConfigError, match="node3.key does not exist"):
        load_node_identity(mesh, 3)


def test_load_node_identity_refuses_swapped_key_files(mesh):
    keys = mesh.base_dir / "keys"
    shutil.move(keys / "node1.key", keys / "tmp")
    shutil.move(keys / "node2.key", keys / "node1.key")
    shutil.move(keys / "tmp", keys / "node2.key")
    with pytest.raises(ConfigError) as exc:
        load_node_identity(mesh, 1)
    assert "node1.key belongs to a different node than node 1 in" in str(exc.value)
    assert "node 2's key" in str(exc.value)
    with pytest.raises(ConfigError, match="different node than node 2"):
        load_node_identity(mesh, 2)


def test_load_client_identity_refuses_a_node_key(mesh):
    with pytest.raises(ConfigError, match="different identity than client 'ops'.*node 0's key"):
        load_client_identity(mesh, "ops", key_path=mesh.base_dir / "keys" / "node0.key")


def test_load_node_identity_refuses_a_group_readable_key(mesh):
    path = mesh.base_dir / "keys" / "node0.key"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        load_node_identity(mesh, 0)


def test_unknown_node_or_client(mesh):
    with pytest.raises(ConfigError, match="node 4 is not in the mesh"):
        load_node_identity(mesh, 4)
    with pytest.raises(ConfigError, match="client 'eve' is not in the mesh"):
        load_client_identity(mesh, "eve")


def test_explicit_key_path_is_used(mesh, tmp_path):
    other = tmp_path / "elsewhere.key"
    shutil.copy(mesh.base_dir / "keys" / "node1.key", other)
    other.chmod(0o600)
    assert public_key_hex(load_node_identity(mesh, 1, key_path=other)) == mesh.nodes[1].public_key


# -- mesh.json ---------------------------------------------------------------------------

def test_save_load_round_trip(mesh, tmp_path):
    mesh.log_window, mesh.checkpoint_interval = 512, 128
    original_dir = mesh.base_dir
    mesh.save(tmp_path / "copy.json")
    assert mesh.base_dir == tmp_path  # the config now belongs to the new file
    again = MeshConfig.load(tmp_path / "copy.json")
    assert again == mesh
    assert again.data_path == original_dir / "data"  # the data did not move


def test_data_dir_is_relative_in_the_file_and_absolute_in_memory(mesh, tmp_path):
    assert json.loads(mesh.path.read_text())["data_dir"] == "data"
    assert mesh.data_dir == str(mesh.base_dir / "data")
    moved = tmp_path / "moved"
    shutil.copytree(mesh.base_dir, moved)
    again = MeshConfig.load(moved / "mesh.json")
    assert again.data_dir == str(moved / "data")
    assert again.node_data_dir(3) == moved / "data" / "node3"
    with pytest.raises(ConfigError, match="node 4 is not in the mesh"):
        again.node_data_dir(4)


def test_replica_config_carries_the_protocol_settings(mesh):
    mesh.checkpoint_interval, mesh.log_window, mesh.max_batch = 16, 48, 32
    mesh.batch_timeout_ticks = 0
    rc = mesh.replica_config()
    assert (rc.n, rc.checkpoint_interval, rc.log_window, rc.max_batch,
            rc.batch_timeout_ticks) == (4, 16, 48, 32, 0)


def good_json(mesh: MeshConfig) -> dict:
    return json.loads(mesh.path.read_text())


def _set(path, value):
    def edit(obj):
        *head, last = path
        for k in head:
            obj = obj[k]
        obj[last] = value
    return edit


def _dup_id(obj):
    obj["nodes"][1]["id"] = 0


def _dup_key(obj):
    obj["nodes"][1]["public_key"] = obj["nodes"][0]["public_key"]


def _three_nodes(obj):
    obj["nodes"] = obj["nodes"][:3]


def _extra_node_field(obj):
    obj["nodes"][0]["weight"] = 2


def _unknown_top(obj):
    obj["brokr_url"] = "amqp://x"


BAD_EDITS = [
    ("unknown_top_key", _unknown_top, "unknown keys ['brokr_url']"),
    ("duplicate_ids", _dup_id, "duplicate node ids: [0]"),
    ("duplicate_public_key", _dup_key, "nodes 0 and 1 have the same public key"),
    ("n_below_4", _three_nodes, "at least 4 nodes"),
    ("ids_not_0_to_n-1", _set(("nodes", 3, "id"), 9), "node ids must be 0..3"),
    ("id_is_string", _set(("nodes", 0, "id"), "0"), "nodes[0].id must be an integer"),
    ("id_is_bool", _set(("nodes", 1, "id"), True), "nodes[1].id must be an integer"),
    ("short_key_hex", _set(("nodes", 2, "public_key"), "abcd"), "node 2: public_key must be 64"),
    ("non_hex_key", _set(("clients", 0, "public_key"), "zz" * 32), "client 'admin': public_key"),
    ("extra_node_field", _extra_node_field, "unknown keys ['weight']"),
    ("nodes_not_list", _set(("nodes",), {"0": "x"}), "'nodes' must be a list"),
    ("log_window_not_multiple", _set(("log_window",), 100), "multiple of checkpoint_interval"),
    ("log_window_too_small", _set(("log_window",), 64), "at least twice it"),
    ("tick_ms_string", _set(("tick_ms",), "2"), "tick_ms must be an integer >= 1"),
    ("max_batch_bool", _set(("max_batch",), True), "max_batch must be an integer >= 1"),
    ("max_batch_too_big", _set(("max_batch",), 10_000), "max_batch (10000) must be at most"),
    ("checkpoint_zero", _set(("checkpoint_interval",), 0), "checkpoint_interval must be"),
    ("negative_timeout", _set(("batch_timeout_ticks",), -1), "batch_timeout_ticks must be"),
    ("broker_not_string", _set(("broker_url",), 5672), "broker_url must be a non-empty string"),
    ("bad_client_name", _set(("clients", 0, "name"), "../x"), "clients[0].name must be"),
    ("future_version", _set(("version",), 2), "version 2 is not supported"),
]


@pytest.mark.parametrize("edit, message", [b[1:] for b in BAD_EDITS],
                         ids=[b[0] for b in BAD_EDITS])
def test_load_rejects_a_malformed_mesh_json(mesh, tmp_path, edit, message):
    obj = good_json(mesh)
    edit(obj)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ConfigError) as exc:
        MeshConfig.load(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)  # says which file


@pytest.mark.parametrize("text, message", [
    (None, "does not exist"),
    ("{nodes: []", "is not valid JSON"),
    ("[1, 2]", "top level must be a JSON object"),
    ('{"clients": []}', "missing 'nodes'"),
    (b"\xff\xfe", "cannot read"),
])
def test_load_rejects_unreadable_files(tmp_path, text, message):
    path = tmp_path / "mesh.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        MeshConfig.load(path)


def test_building_a_config_in_code_runs_the_same_checks(mesh):
    with pytest.raises(ConfigError, match="log_window"):
        MeshConfig(nodes=mesh.nodes, log_window=96, checkpoint_interval=64)


# -- environment -------------------------------------------------------------------------

def test_from_env(mesh):
    assert from_env({"HDPBF_CONFIG": str(mesh.path), "HDPBF_NODE_ID": "2"})[1] == 2
    config, node_id = from_env({"HDPBF_CONFIG": str(mesh.path), "HDPBF_NODE_ID": ""})
    assert node_id is None and config == mesh
    assert topology.env_key_file({"HDPBF_KEY_FILE": "/k"}) == Path("/k")
    assert topology.env_key_file({}) is None


@pytest.mark.parametrize("env, message", [
    ({}, "HDPBF_CONFIG is not set"),
    ({"HDPBF_CONFIG": "/nonexistent/mesh.json"}, "HDPBF_CONFIG=/nonexistent/mesh.json: mesh config"),
    ({"HDPBF_NODE_ID": "two"}, "HDPBF_NODE_ID='two' is not an integer"),
    ({"HDPBF_NODE_ID": "4"}, "HDPBF_NODE_ID=4: node 4 is not in the mesh"),
])
def test_from_env_errors(mesh, env, message):
    if "HDPBF_NODE_ID" in env:
        env = {**env, "HDPBF_CONFIG": str(mesh.path)}
    with pytest.raises(ConfigError, match=message):
        from_env(env)


# -- broker cluster settings ------------------------------------------------------------

def test_broker_url_list_and_quorum_queue_type_round_trip(tmp_path):
    cfg = init_mesh(tmp_path, broker_url="amqp://a:1//")
    urls = ["amqp://guest:guest@127.0.0.1:5681//", "amqp://guest:guest@127.0.0.1:5682//"]
    obj = json.loads((tmp_path / "mesh.json").read_text())
    assert "queue_type" not in obj and obj["broker_url"] == "amqp://a:1//"
    obj["broker_url"], obj["queue_type"] = urls, "quorum"
    (tmp_path / "mesh.json").write_text(json.dumps(obj))
    loaded = MeshConfig.load(tmp_path)
    assert loaded.broker_url == ";".join(urls)  # kombu's failover form
    assert loaded.broker_urls == urls and loaded.queue_type == "quorum"
    loaded.save(tmp_path / "mesh.json")
    again = json.loads((tmp_path / "mesh.json").read_text())
    assert again["broker_url"] == urls and again["queue_type"] == "quorum"
    assert cfg.queue_type == "classic"


@pytest.mark.parametrize("value, needle", [
    ([], "non-empty list"), (["amqp://a//", ""], "non-empty list"),
    (["amqp://a//;amqp://b//"], "without ';'"), ([5], "non-empty list")])
def test_bad_broker_url_lists_are_refused(tmp_path, value, needle):
    init_mesh(tmp_path)
    obj = json.loads((tmp_path / "mesh.json").read_text())
    obj["broker_url"] = value
    (tmp_path / "mesh.json").write_text(json.dumps(obj))
    with pytest.raises(ConfigError, match=needle):
        MeshConfig.load(tmp_path)


def test_unknown_queue_type_is_refused(tmp_path):
    init_mesh(tmp_path)
    obj = json.loads((tmp_path / "mesh.json").read_text())
    obj["queue_type"] = "stream"
    (tmp_path / "mesh.json").write_text(json.dumps(obj))
    with pytest.raises(ConfigError, match="queue_type must be one of"):
        MeshConfig.load(tmp_path)


@pytest.mark.parametrize("nodes, votes", [(4, "all-to-all"), (6, "all-to-all"), (7, "collector"),
                                          (10, "collector")])
def test_init_picks_the_vote_routing_by_size(tmp_path, nodes, votes):
    assert run("init", "--dir", str(tmp_path), "--nodes", str(nodes)).exit_code == 0
    assert MeshConfig.load(tmp_path / "mesh.json").votes == votes


def test_init_takes_an_explicit_vote_routing(tmp_path):
    r = run("init", "--dir", str(tmp_path / "a"), "--nodes", "10", "--votes", "all-to-all")
    assert r.exit_code == 0, r.output
    assert MeshConfig.load(tmp_path / "a" / "mesh.json").votes == "all-to-all"
    r = run("init", "--dir", str(tmp_path / "b"), "--votes", "collector")
    assert MeshConfig.load(tmp_path / "b" / "mesh.json").votes == "collector"
    r = run("init", "--dir", str(tmp_path / "c"), "--votes", "gossip")
    assert r.exit_code == 2 and "gossip" in r.output
    assert not (tmp_path / "c" / "mesh.json").exists()


def test_clients_speak_for_their_own_host_unless_hosts_says_otherwise(tmp_path):
    from pbft_tasks.topology import console_writers
    cfg = init_mesh(tmp_path, clients=("admin", "cmp1", "rack"),
                    hosts={"admin": (), "rack": ("cmp7", "cmp8")})
    assert console_writers(cfg) == {"admin": (), "cmp1": ("cmp1",), "rack": ("cmp7", "cmp8")}
    text = json.loads((tmp_path / "mesh.json").read_text())
    assert [c.get("hosts") for c in text["clients"]] == [[], None, ["cmp7", "cmp8"]]
    # a mesh.json written before hosts existed loads, each client for its own name
    for c in text["clients"]:
        c.pop("hosts", None)
    assert console_writers(MeshConfig.from_json(text)) == {
        "admin": ("admin",), "cmp1": ("cmp1",), "rack": ("rack",)}
    text["clients"][0]["hosts"] = "cmp1"
    with pytest.raises(ConfigError, match="hosts must be a list"):
        MeshConfig.from_json(text)
    with pytest.raises(ConfigError, match="not clients"):
        init_mesh(tmp_path / "x", clients=("admin",), hosts={"ghost": ("h",)})
