"""Unit tests of the follower's checks (pbft_tasks/follower.py): in memory, no broker.

A chain of real blocks is built with ``chain.make_block`` and certificates of commits
signed by real Ed25519 keys, as validators build them; each test offers some of them,
perhaps altered, to a follower on a ``MemoryLedger`` and checks what it installed and
what it refused, by reason.
"""
from __future__ import annotations

import dataclasses

import pytest

from ledger.memory import MemoryLedger
from pbft_tasks.batch_verify import BatchVerifier
from pbft_tasks.core import chain
from pbft_tasks.core.messages import Commit, Request, batch_digest, sha256_hex, to_wire
from pbft_tasks.follower import MAX_AHEAD, Follower
from pbft_tasks.signing import Signer, generate_key

N = 4          # f = 1, a certificate needs 3 commits
KEYS = [generate_key() for _ in range(N)]
OUTSIDER = generate_key()


def commit(block: dict, sender: int, key=None, digest: str | None = None) -> dict:
    c = Commit(block["view"], block["seq"], digest or block["digest"], sender)
    if key is None:
        return to_wire(Signer(sender, KEYS[sender]).sign(c))
    return to_wire(Signer(sender, key).sign(c))


def make_chain(count: int, per_block: int = 2, signers=(0, 1, 2)) -> list[dict]:
    blocks, prev, ts = [], chain.GENESIS, 1
    for seq in range(1, count + 1):
        batch = tuple(Request("admin", ts + i, {"op": "put", "key": f"k{seq}.{i}", "value": seq,
                                                 "expires_at": None}, sig="")
                      for i in range(per_block))
        ts += per_block
        block = chain.make_block(seq, 0, batch_digest(batch), prev, batch, [])
        block["certificate"] = [commit(block, s) for s in signers]
        blocks.append(block)
        prev = block["hash"]
    return blocks


CHAIN = make_chain(12)


def follower(rows: dict | None = None) -> Follower:
    bv = BatchVerifier({i: k.verify_key for i, k in enumerate(KEYS)}, {})
    return Follower(N, MemoryLedger(rows), bv)


def rehash(block: dict, **fields) -> dict:
    """``block`` with ``fields`` changed and its header hash recomputed (self-consistent)."""
    b = dict(block, **fields)
    b["hash"] = chain.block_hash(b)
    return b


def test_installs_a_certified_chain_in_order():
    f = follower()
    out = f.offer(CHAIN[:5], source=0)
    assert out.installed == 5 and not f.rejected
    assert (f.height, f.head) == (5, CHAIN[4]["hash"])
    assert f.ledger.get_value("k5.1") == 5


def test_refuses_a_block_with_only_2f_commits():
    f = follower()
    short = dict(CHAIN[0], certificate=CHAIN[0]["certificate"][:2])
    assert f.offer([short]).rejected == {"too_few_commits": 1}
    assert f.height == 0


def test_refuses_a_commit_for_another_digest():
    f = follower()
    cert = CHAIN[0]["certificate"][:2] + [commit(CHAIN[0], 2, digest=sha256_hex("other"))]
    assert f.offer([dict(CHAIN[0], certificate=cert)]).rejected == {"commit_mismatch": 1}
    assert f.height == 0


def test_refuses_an_altered_batch_with_a_recomputed_digest():
    """A validator alters a request and makes the block self-consistent again: the
    commits are for the real digest, so the certificate does not match it."""
    f = follower()
    reqs = [dict(CHAIN[0]["requests"][0], op={"op": "put", "key": "k1.0", "value": "evil",
                                              "expires_at": None})] + CHAIN[0]["requests"][1:]
    forged = rehash(CHAIN[0], requests=reqs, digest=sha256_hex(reqs))
    assert f.offer([forged]).rejected == {"commit_mismatch": 1}
    assert f.offer([CHAIN[0]]).installed == 1
    assert f.ledger.get_value("k1.0") == 1


def test_refuses_one_signer_counted_twice():
    f = follower()
    cert = [commit(CHAIN[0], 0), commit(CHAIN[0], 1), commit(CHAIN[0], 1)]
    assert f.offer([dict(CHAIN[0], certificate=cert)]).rejected == {"duplicate_signer": 1}


def test_refuses_an_unknown_signer():
    f = follower()
    cert = CHAIN[0]["certificate"][:2] + [commit(CHAIN[0], 7, key=OUTSIDER)]
    assert f.offer([dict(CHAIN[0], certificate=cert)]).rejected == {"unknown_signer": 1}


def test_refuses_a_forged_signature():
    f = follower()
    cert = CHAIN[0]["certificate"][:2] + [commit(CHAIN[0], 2, key=OUTSIDER)]
    assert f.offer([dict(CHAIN[0], certificate=cert)]).rejected == {"bad_signature": 1}


def test_refuses_a_wrong_prev():
    f = follower()
    f.offer(CHAIN[:1])
    bad = rehash(CHAIN[1], prev=sha256_hex("elsewhere"))
    assert f.offer([bad]).rejected == {"bad_prev": 1}
    assert f.height == 1
    assert f.offer([CHAIN[1]]).installed == 1


def test_refuses_a_made_up_skip_list():
    """Commits sign the digest, not the header: a header skipping a request that was
    never executed hashes consistently but is refused by the follower's own table."""
    f = follower()
    bad = rehash(CHAIN[0], skip=[0])
    assert f.offer([bad]).rejected == {"bad_skip": 1}
    assert f.offer([CHAIN[0]]).installed == 1


def test_a_real_duplicate_is_skipped_like_the_replica_does():
    f = follower()
    f.offer(CHAIN[:1])
    again = (Request("admin", 1, {"op": "put", "key": "k1.0", "value": 1, "expires_at": None},
                     sig=""),)
    block = chain.make_block(2, 0, batch_digest(again), CHAIN[0]["hash"], again, [0])
    block["certificate"] = [commit(block, s) for s in (0, 1, 2)]
    assert f.offer([block]).installed == 1


def test_refuses_a_tampered_hash_and_garbage():
    f = follower()
    out = f.offer([dict(CHAIN[0], hash="0" * 64), "not a block", {"seq": 1}])
    assert out.rejected == {"bad_block": 2, "malformed": 1}


def test_nothing_past_a_gap_until_it_is_filled_then_all_in_order():
    f = follower()
    f.offer(CHAIN[:2])
    out = f.offer(CHAIN[4:9])           # 3 and 4 missing
    assert out.installed == 0 and out.buffered == 5
    assert f.height == 2 and f.gap == (3, 9)
    f.offer([CHAIN[3]])                 # 4 arrives, 3 still missing
    assert f.height == 2
    out = f.offer([CHAIN[2]])
    assert out.installed == 7 and (f.height, f.head) == (9, CHAIN[8]["hash"])
    assert f.gap is None


def test_a_bad_block_in_the_buffer_does_not_poison_what_follows():
    f = follower()
    f.offer([rehash(CHAIN[1], prev=sha256_hex("x"))] + CHAIN[2:4])
    out = f.offer([CHAIN[0]])
    assert out.installed == 1 and out.rejected == {"bad_prev": 1}
    out = f.offer(CHAIN[1:4])
    assert out.installed == 3 and f.height == 4


def test_duplicates_are_not_rejections():
    f = follower()
    f.offer(CHAIN[:3])
    out = f.offer(CHAIN[:3])
    assert out.duplicates == 3 and not out.rejected and not f.rejected


def test_a_pushed_block_for_an_installed_seq_is_compared_with_the_installed_one():
    """Same block, other certificate: a duplicate.  Another block for the seq (certified
    by the validators that equivocated, or forged): counted evidence, nothing changes."""
    f = follower()
    f.offer(CHAIN[:3])
    other_cert = dict(CHAIN[1], certificate=[commit(CHAIN[1], s) for s in (1, 2, 3)])
    out = f.offer([other_cert])
    assert out.duplicates == 1 and not out.rejected
    batch = (Request("admin", 99, {"op": "put", "key": "forged", "value": 1,
                                   "expires_at": None}, sig=""),)
    forged = chain.make_block(2, 0, batch_digest(batch), CHAIN[0]["hash"], batch, [])
    forged["certificate"] = [commit(forged, s) for s in (0, 1, 2)]   # 2f+1 signed it
    out = f.offer([forged, rehash(CHAIN[2], prev="0" * 64)])
    assert out.rejected == {"conflicting_block": 2} and out.duplicates == 0
    assert f.rejected["conflicting_block"] == 2
    assert f.height == 3 and f.ledger.block(2)["hash"] == CHAIN[1]["hash"]


def test_too_far_ahead():
    f = follower()
    far = rehash(CHAIN[0], seq=MAX_AHEAD + 1)
    far["certificate"] = [commit(far, s) for s in (0, 1, 2)]
    assert f.offer([far]).rejected == {"too_far_ahead": 1}


def test_a_restarted_follower_resumes_from_its_file():
    first = follower()
    first.offer(CHAIN[:6])
    rows = first.ledger.rows
    again = follower(rows)
    assert (again.height, again.head) == (6, CHAIN[5]["hash"])
    # the client table came back too: a replayed request of block 1 is skipped
    replay = (Request("admin", 1, {"op": "put", "key": "k1.0", "value": 1, "expires_at": None},
                      sig=""),)
    block = chain.make_block(7, 0, batch_digest(replay), CHAIN[5]["hash"], replay, [])
    block["certificate"] = [commit(block, s) for s in (0, 1, 2)]
    assert again.offer([block]).rejected == {"bad_skip": 1}
    assert again.offer(CHAIN[6:]).installed == 6


def test_the_file_is_the_sqlite_ledger_format(tmp_path):
    from ledger.audit import audit_chain
    from ledger.reader import LedgerReader
    from ledger.store import LedgerStore
    bv = BatchVerifier({i: k.verify_key for i, k in enumerate(KEYS)}, {})
    path = tmp_path / "ledger.sqlite"
    with LedgerStore(path) as store:
        Follower(N, store, bv).offer(CHAIN)
    with LedgerStore(path) as store:
        f = Follower(N, store, bv)
        assert f.height == len(CHAIN)
        audit_chain(store.iter_blocks())
    with LedgerReader(path) as r:
        assert r.height() == len(CHAIN)


def test_one_batch_of_signatures_for_a_catch_up():
    class Counting(BatchVerifier):
        calls = 0

        def verify(self, items):
            Counting.calls += 1
            return super().verify(items)

    bv = Counting({i: k.verify_key for i, k in enumerate(KEYS)}, {})
    f = Follower(N, MemoryLedger(), bv)
    assert f.offer(CHAIN).installed == len(CHAIN)
    assert Counting.calls == 1


def test_mesh_json_lists_followers_by_name(tmp_path):
    from pbft_tasks.topology import ConfigError, MeshConfig, add_followers, init_mesh
    init_mesh(tmp_path, nodes=4)
    assert "followers" not in (tmp_path / "mesh.json").read_text()   # unchanged without them
    cfg = add_followers(tmp_path, ["api1", "cmp7", "api1"])
    again = MeshConfig.load(tmp_path)
    assert [f.name for f in again.followers] == ["api1", "cmp7"] == [f.name for f in cfg.followers]
    assert again.follower("cmp7").queue == "follower.cmp7"
    assert again.follower_data_dir("api1") == again.data_path / "follower-api1"
    with pytest.raises(ConfigError, match="follower 'x' is not in the mesh"):
        again.follower("x")
    with pytest.raises(ConfigError, match="followers\\[2\\].name"):
        add_followers(tmp_path, ["bad name"])


def test_metrics_show_height_lag_installed_and_rejections_by_reason():
    from types import SimpleNamespace

    from prometheus_client import generate_latest
    from pbft_tasks.follower_node import FollowerMetrics
    f = follower()
    f.offer(CHAIN[:3] + [dict(CHAIN[4], certificate=CHAIN[4]["certificate"][:2])])
    f.offer(CHAIN[5:7])                      # seen up to 7, installed 3
    m = FollowerMetrics(SimpleNamespace(name="fz", follower=f))
    m.observe(0.004)
    text = generate_latest(m.registry).decode()
    assert 'hdpbf_follower_height{follower="fz"} 3.0' in text
    assert 'hdpbf_follower_lag_blocks{follower="fz"} 4.0' in text
    assert 'hdpbf_follower_blocks_installed_total{follower="fz"} 3.0' in text
    assert 'hdpbf_follower_rejected_blocks_total{follower="fz",reason="too_few_commits"} 1.0' in text
    assert 'hdpbf_follower_lag_seconds_bucket{follower="fz",le="0.005"} 1.0' in text
