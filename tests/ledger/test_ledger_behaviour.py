"""Behaviour every backend shares (run against LedgerStore and MemoryLedger), and the
fake's equivalence with the store on the same sequence of blocks."""
from __future__ import annotations

import random

import pytest

from ledger import LedgerError, LedgerStore, MemoryLedger, build_block
from ledger.memory import delete, put
from pbft_tasks.core.chain import GENESIS


def append(led, ops, protocol=None, **kw):
    block = build_block(led.height + 1, led.head, ops, **kw)
    return led.apply(protocol or {}, [block])[0]


def test_genesis(ledger):
    assert (ledger.height, ledger.head) == (0, GENESIS)
    assert ledger.block(1) is None and list(ledger.iter_blocks()) == []
    assert ledger.protocol_records() == {}


def test_versions_tombstones_and_results(ledger):
    assert append(ledger, [put("k", "a")]) == [{"key": "k", "version": 1}]
    assert append(ledger, [put("k", "b")]) == [{"key": "k", "version": 2}]
    assert append(ledger, [delete("k")]) == [{"key": "k", "version": 3, "deleted": True}]
    assert ledger.get("k") is None
    assert ledger.get_record("k") == {"deleted": True, "version": 3, "block": 3, "expires_at": None,
                                     "writer": "client"}
    assert append(ledger, [delete("k"), delete("never")]) == [
        {"key": "k", "version": 3, "deleted": True}, {"key": "never", "version": 0, "deleted": True}]
    assert ledger.get_record("never") is None
    assert append(ledger, [put("k", "c")]) == [{"key": "k", "version": 4}]
    assert ledger.get("k") == {"value": "c", "version": 4, "block": 5, "expires_at": None,
                              "writer": "client"}


def test_expiry_is_inclusive_and_uses_now(ledger):
    append(ledger, [put("lease", "x", expires_at=100.0), put("forever", "y")])
    assert ledger.get("lease", now=99.999)["value"] == "x"
    assert ledger.get("lease", now=100.0) is None
    assert ledger.get("lease") is None                       # real clock is far past 100
    assert ledger.get_value("forever", now=1e12) == "y"
    assert ledger.get_value("lease", now=200.0, default="miss") == "miss"
    assert ledger.get_record("lease")["expires_at"] == 100.0


def test_ops_on_one_key_in_one_block_and_skips(ledger):
    results = append(ledger, [put("k", 1), put("k", 2), put("dup", 0), delete("k"), put("k", 3)],
                     skip=[2])
    assert results == [{"key": "k", "version": 1}, {"key": "k", "version": 2}, None,
                       {"key": "k", "version": 3, "deleted": True}, {"key": "k", "version": 4}]
    assert ledger.get("k")["value"] == 3 and ledger.get_record("dup") is None


def test_ops_on_one_key_across_blocks_of_one_apply(ledger):
    b1 = build_block(1, GENESIS, [put("k", 1)])
    b2 = build_block(2, b1["hash"], [put("k", 2)])
    assert ledger.apply({}, [b1, b2]) == [[{"key": "k", "version": 1}], [{"key": "k", "version": 2}]]
    assert ledger.get("k") == {"value": 2, "version": 2, "block": 2, "expires_at": None,
                              "writer": "client"}


def test_protocol_records_put_replace_delete(ledger):
    ledger.apply({"view": 0, "prepared/1": {"d": "x"}, "a/b/c": [1]}, [])
    ledger.apply({"view": 1, "prepared/1": None, "absent": None}, [])
    assert ledger.protocol_records() == {"view": 1, "a/b/c": [1]}
    assert ledger.height == 0


def test_wrong_link_raises(ledger):
    append(ledger, [put("a", 1)])
    with pytest.raises(LedgerError, match="block 2: prev"):
        ledger.apply({}, [build_block(2, GENESIS, [put("a", 2)])])
    with pytest.raises(LedgerError, match="block 3: expected seq 2"):
        ledger.apply({}, [build_block(3, ledger.head, [put("a", 2)])])
    assert ledger.height == 1


def test_returned_values_are_copies(ledger):
    append(ledger, [put("k", {"list": [1]})])
    ledger.get("k")["value"]["list"].append(2)
    assert ledger.get("k")["value"] == {"list": [1]}


def random_blocks(rng: random.Random, n_blocks: int):
    """Block contents (ops, skip) for a random but reproducible history."""
    keys = [f"k{i}" for i in range(8)]
    out = []
    for _ in range(n_blocks):
        ops = []
        for _ in range(rng.randint(0, 6)):
            key = rng.choice(keys)
            if rng.random() < 0.3:
                ops.append(delete(key))
            else:
                exp = rng.choice([None, None, float(rng.randint(0, 20))])
                ops.append(put(key, {"n": rng.randint(0, 99)}, exp))
        skip = sorted(rng.sample(range(len(ops)), k=min(len(ops), rng.randint(0, 1))))
        out.append((ops, skip))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_memory_ledger_matches_store(tmp_path, seed):
    rng = random.Random(seed)
    store, mem = LedgerStore(tmp_path / "s.sqlite"), MemoryLedger()
    try:
        history = random_blocks(rng, 40)
        i = 0
        while i < len(history):
            n = rng.randint(1, 4)             # several blocks per apply, sometimes
            blocks = []
            prev, seq = store.head, store.height
            for ops, skip in history[i:i + n]:
                seq += 1
                blocks.append(build_block(seq, prev, ops, skip=skip, first_timestamp=seq * 10))
                prev = blocks[-1]["hash"]
            proto = {f"r{rng.randint(0, 3)}": rng.choice([None, seq, {"s": seq}])}
            assert store.apply(proto, blocks) == mem.apply(proto, blocks)
            assert (store.height, store.head) == (mem.height, mem.head)
            i += n
        for key in [f"k{j}" for j in range(8)] + ["missing"]:
            assert store.get_record(key) == mem.get_record(key)
            for now in (0.0, 5.0, 10.0, 21.0):
                assert store.get(key, now=now) == mem.get(key, now=now)
        assert store.protocol_records() == mem.protocol_records()
        assert list(store.iter_blocks()) == list(mem.iter_blocks())
        assert list(store.iter_blocks(3, 7)) == list(mem.iter_blocks(3, 7))
    finally:
        store.close()


def test_memory_ledger_restart_from_rows():
    mem = MemoryLedger()
    append(mem, [put("a", 1)], protocol={"view": 3})
    again = MemoryLedger(rows=mem.rows)
    assert (again.height, again.head) == (mem.height, mem.head)
    assert again.protocol_records() == {"view": 3} and again.get("a")["value"] == 1
