"""``hdpbf verify`` passes a ledger written by the mesh and names the first bad block
after a byte is changed anywhere in the SQLite file."""
from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace

import pytest
from click.testing import CliRunner

from ledger import LedgerReader
from ledger import format as fmt
from mesh.cli import main
from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import MeshConfig, init_mesh, load_node_identity
from pbft_tasks.core.chain import block_hash
from pbft_tasks.core.messages import from_wire, sha256_hex, to_wire
from pbft_tasks.signing import Signer

NODE = 1


@pytest.fixture(scope="module")
def good_mesh(tmp_path_factory):
    """A 4-node embedded mesh after 12 committed updates (puts, overwrites, a delete)."""
    base = tmp_path_factory.mktemp("mesh")
    init_mesh(base, nodes=4)
    with EmbeddedMesh(str(base / "mesh.json")) as mesh:
        client = mesh.client()
        for i in range(10):
            client.put(f"k{i % 4}", {"v": i, "note": "abcdef"}, timeout=10)
        client.put("ttl", "x", ttl=3600, timeout=10)
        client.delete("k0", timeout=10)
    return base


@pytest.fixture
def mesh_dir(good_mesh, tmp_path):
    """A private copy of the good mesh for one mutation."""
    dst = tmp_path / "m"
    shutil.copytree(good_mesh, dst)
    return dst


def ledger_path(base):
    return base / "data" / f"node{NODE}" / "ledger.sqlite"


def run_verify(base, *args):
    res = CliRunner().invoke(main, ["verify", "--data-dir", str(base / "data"), *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res


def verify_json(base, *args):
    res = run_verify(base, "--json", *args)
    return res.exit_code, json.loads(res.output)


# -- mutations of the raw file ---------------------------------------------------------

def _row(conn, key):
    (text,) = conn.execute(f'SELECT value FROM "{fmt.TABLE}" WHERE key = ?', (key,)).fetchone()
    return text


def _set(conn, key, text):
    conn.execute(f'UPDATE "{fmt.TABLE}" SET value = ? WHERE key = ?', (text, key))


def flip_after(conn, key, marker, skip=0):
    """Change the one character right after the ``skip``-th ``marker`` in row ``key``."""
    text = _row(conn, key)
    at = -1
    for _ in range(skip + 1):
        at = text.index(marker, at + 1)
    i = at + len(marker)
    new = {"0": "1"}.get(text[i], "0") if text[i] in "0123456789abcdef" else "Z"
    _set(conn, key, text[:i] + new + text[i + 1:])


def kv_block(base, key):
    with LedgerReader(ledger_path(base)) as r:
        return r.get_record(key)["block"]


def mut_request_value(conn, base):
    flip_after(conn, fmt.block_key(3), '"v":')
    return 3


def mut_request_signature(conn, base):
    text = _row(conn, fmt.block_key(5))
    flip_after(conn, fmt.block_key(5), '"sig":"', skip=text[:text.index('"requests"')].count('"sig":"')
               if text.index('"requests"') > text.index('"certificate"') else 0)
    return 5


def mut_certificate_signature(conn, base):
    text = _row(conn, fmt.block_key(4))
    cert = text.index('"certificate"')
    flip_after(conn, fmt.block_key(4), '"sig":"', skip=text[:cert].count('"sig":"') + 1)
    return 4


def mut_certificate_sender(conn, base):
    text = _row(conn, fmt.block_key(2))
    cert = text.index('"certificate"')
    at = text.index('"sender":', cert) + len('"sender":')
    others = [s for s in "0123" if f'"sender":{s}' not in text[cert:]]
    _set(conn, fmt.block_key(2), text[:at] + others[0] + text[at + 1:])
    return 2


def mut_block_hash(conn, base):
    flip_after(conn, fmt.block_key(6), '"hash":"')
    return 6


def mut_kv_record(conn, base):
    flip_after(conn, fmt.kv_key("k2"), '"v":')
    return kv_block(base, "k2")


def mut_kv_version(conn, base):
    flip_after(conn, fmt.kv_key("k3"), '"version":')
    return kv_block(base, "k3")


def mut_delete_block(conn, base):
    conn.execute(f'DELETE FROM "{fmt.TABLE}" WHERE key = ?', (fmt.block_key(7),))
    return 7


def mut_delete_last_block(conn, base):
    (height,) = [json.loads(_row(conn, fmt.HEAD_KEY))["height"]]
    conn.execute(f'DELETE FROM "{fmt.TABLE}" WHERE key = ?', (fmt.block_key(height),))
    return height


def mut_head_record(conn, base):
    flip_after(conn, fmt.HEAD_KEY, '"head":"')
    return json.loads(_row(conn, fmt.HEAD_KEY))["height"]


def mut_rehashed_forgery(conn, base):
    """A careful forger: edits a request, then fixes the digest, the block hash, every
    later prev link and the head.  Only the signatures can catch this."""
    blocks = [json.loads(t) for (t,) in conn.execute(
        f'SELECT value FROM "{fmt.TABLE}" WHERE key LIKE ? ORDER BY key', (fmt.BLOCK_PREFIX + "%",))]
    blocks[2]["requests"][0]["op"]["value"] = {"v": 999, "note": "forged"}
    prev = blocks[1]["hash"]
    for b in blocks[2:]:
        b["prev"] = prev
        b["digest"] = sha256_hex(b["requests"])
        b["hash"] = prev = block_hash(b)
        _set(conn, fmt.block_key(b["seq"]), fmt.encode(b))
    _set(conn, fmt.HEAD_KEY, fmt.encode({"height": blocks[-1]["seq"], "head": prev}))
    return 3


def mut_forger_with_node_keys(conn, base):
    """A forger holding every node key (not the client's): edits a request, fixes the
    chain and re-signs the commit certificates.  Only the client signature catches it."""
    cfg = MeshConfig.load(base / "mesh.json")
    signers = {n.id: Signer(n.id, load_node_identity(cfg, n.id)) for n in cfg.nodes}
    blocks = [json.loads(t) for (t,) in conn.execute(
        f'SELECT value FROM "{fmt.TABLE}" WHERE key LIKE ? ORDER BY key', (fmt.BLOCK_PREFIX + "%",))]
    blocks[4]["requests"][0]["op"]["value"] = {"v": 999, "note": "forged"}
    prev = blocks[3]["hash"]
    for b in blocks[4:]:
        b["prev"] = prev
        b["digest"] = sha256_hex(b["requests"])
        b["hash"] = prev = block_hash(b)
        b["certificate"] = [to_wire(signers[c["sender"]].sign(
            replace(from_wire(c), digest=b["digest"]))) for c in b["certificate"]]
        _set(conn, fmt.block_key(b["seq"]), fmt.encode(b))
    _set(conn, fmt.HEAD_KEY, fmt.encode({"height": blocks[-1]["seq"], "head": prev}))
    return 5


MUTATIONS = [mut_request_value, mut_request_signature, mut_certificate_signature,
             mut_certificate_sender, mut_block_hash, mut_kv_record, mut_kv_version,
             mut_delete_block, mut_delete_last_block, mut_head_record, mut_rehashed_forgery,
             mut_forger_with_node_keys]


# -- tests -------------------------------------------------------------------------------

def test_good_ledgers_pass_with_a_summary(good_mesh):
    code, out = verify_json(good_mesh)
    assert code == 0 and out["ok"], out
    assert [n["node"] for n in out["nodes"]] == [0, 1, 2, 3]
    for node in out["nodes"]:
        with LedgerReader(node["path"]) as r:
            blocks = list(r.iter_blocks())
        assert node["blocks"] == len(blocks) == 12
        assert node["signatures"] == sum(len(b["requests"]) + len(b["certificate"]) for b in blocks)
        assert node["kv_records"] == 5 and node["bad_block"] is None
    assert out["signatures"] > 0 and out["signatures_per_s"] > 0


def test_human_summary_and_one_node(good_mesh):
    res = run_verify(good_mesh, "--node", "2")
    assert res.exit_code == 0, res.output
    assert "1 ledger(s) intact: 12 blocks" in res.output and "signatures checked at" in res.output


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__[4:])
def test_a_changed_byte_names_the_first_bad_block(mesh_dir, mutate):
    conn = sqlite3.connect(ledger_path(mesh_dir), isolation_level=None)
    try:
        bad = mutate(conn, mesh_dir)
    finally:
        conn.close()
    code, out = verify_json(mesh_dir)
    assert code == 1, out
    by_node = {n["node"]: n for n in out["nodes"]}
    assert by_node[NODE]["bad_block"] == bad, by_node[NODE]["reason"]
    assert by_node[NODE]["reason"].startswith(f"block {bad}: ")
    if mutate is mut_forger_with_node_keys:
        assert "request 0 (client 'admin/" in by_node[NODE]["reason"]
    assert all(n["ok"] for i, n in by_node.items() if i != NODE)


def test_failure_is_printed_naming_the_block(mesh_dir):
    conn = sqlite3.connect(ledger_path(mesh_dir), isolation_level=None)
    mut_certificate_signature(conn, mesh_dir)
    conn.close()
    res = run_verify(mesh_dir, "--node", str(NODE))
    assert res.exit_code == 1
    assert f"node {NODE}: FIRST BAD block 4: commit from node" in res.output
    assert "bad signature" in res.output


def test_mesh_directory_and_config_are_found(good_mesh):
    res = CliRunner().invoke(main, ["verify", "--data-dir", str(good_mesh), "--node", "0"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["verify", "--config", str(good_mesh / "mesh.json"), "--node", "3"])
    assert res.exit_code == 0, res.output


def test_bad_input_exits_2(good_mesh, tmp_path):
    assert run_verify(good_mesh, "--node", "9").exit_code == 2
    res = CliRunner().invoke(main, ["verify", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "no mesh configuration" in res.output
