"""The pure state transition (ledger/state.py): versions, tombstones, skips, overlays."""
from __future__ import annotations

import copy

import pytest

from ledger import LedgerError, apply_block, build_block
from ledger.memory import delete, put
from pbft_tasks.core.chain import GENESIS


def run(state: dict, ops, seq=1, skip=()):
    block = build_block(seq, GENESIS, ops, skip=skip)
    return apply_block(state.get, block)


def test_put_creates_version_1_and_records_block_and_expiry():
    writes, results = run({}, [put("k", {"v": 1}, 123.5)], seq=7)
    assert writes == {"k": {"value": {"v": 1}, "version": 1, "block": 7, "expires_at": 123.5}}
    assert results == [{"key": "k", "version": 1}]


def test_versions_continue_after_a_tombstone():
    state = {"k": {"deleted": True, "version": 4, "block": 2, "expires_at": None}}
    writes, results = run(state, [put("k", "again")], seq=3)
    assert writes["k"]["version"] == 5
    assert "deleted" not in writes["k"]
    assert results == [{"key": "k", "version": 5}]


def test_delete_of_live_key_writes_tombstone_with_next_version():
    state = {"k": {"value": 1, "version": 2, "block": 1, "expires_at": None}}
    writes, results = run(state, [delete("k")], seq=2)
    assert writes == {"k": {"deleted": True, "version": 3, "block": 2, "expires_at": None}}
    assert results == [{"key": "k", "version": 3, "deleted": True}]


def test_delete_of_missing_or_deleted_key_is_a_noop():
    tomb = {"deleted": True, "version": 3, "block": 2, "expires_at": None}
    writes, results = run({"gone": tomb}, [delete("never"), delete("gone")])
    assert writes == {}
    assert results == [{"key": "never", "version": 0, "deleted": True},
                       {"key": "gone", "version": 3, "deleted": True}]


def test_expired_record_is_still_state_a_put_over_it_continues_the_version():
    # Expiry is a read-side rule; execution must not consult a clock.
    state = {"k": {"value": 1, "version": 1, "block": 1, "expires_at": 0.0}}
    writes, _ = run(state, [put("k", 2)], seq=2)
    assert writes["k"]["version"] == 2


def test_several_ops_on_one_key_in_one_block_see_each_other():
    writes, results = run({}, [put("k", 1), put("k", 2), delete("k"), put("k", 3), delete("k"),
                               delete("k")])
    assert [r["version"] for r in results] == [1, 2, 3, 4, 5, 5]
    assert writes["k"] == {"deleted": True, "version": 5, "block": 1, "expires_at": None}


def test_skip_list_is_honoured():
    writes, results = run({}, [put("a", 1), put("b", 2), put("a", 3)], skip=[0, 1])
    assert results == [None, None, {"key": "a", "version": 1}]
    assert writes == {"a": {"value": 3, "version": 1, "block": 1, "expires_at": None}}


def test_skip_index_out_of_range_is_our_bug():
    with pytest.raises(LedgerError, match="skip index"):
        run({}, [put("a", 1)], skip=[1])


def test_get_is_called_once_per_key_and_input_state_is_not_mutated():
    state = {"k": {"value": 1, "version": 1, "block": 1, "expires_at": None}}
    before = copy.deepcopy(state)
    calls = []

    def get(key):
        calls.append(key)
        return state.get(key)

    block = build_block(2, GENESIS, [put("k", 2), put("k", 3), put("j", 1)])
    apply_block(get, block)
    assert sorted(calls) == ["j", "k"]
    assert state == before


def test_deterministic():
    ops = [put(f"k{i % 3}", i, None if i % 2 else 10.0 * i) for i in range(20)] + [delete("k1")]
    state = {"k2": {"value": 0, "version": 9, "block": 1, "expires_at": None}}
    assert run(dict(state), ops, seq=5) == run(dict(state), ops, seq=5)


def test_unknown_op_raises():
    block = build_block(1, GENESIS, [put("a", 1)])
    block["requests"][0]["op"] = {"op": "incr", "key": "a"}
    with pytest.raises(LedgerError, match="request 0"):
        apply_block({}.get, block)


def test_get_reads_the_record_at_its_point_of_the_block_and_writes_nothing():
    # a read through consensus: ordered like any request, it sees exactly the writes
    # before it (in earlier blocks and earlier in its own block)
    state = {"k": {"value": "old", "version": 2, "block": 1, "expires_at": 99.0},
             "gone": {"deleted": True, "version": 3, "block": 1, "expires_at": None}}
    get = {"op": "get", "key": "k"}
    writes, results = run(state, [get, put("k", "new"), get, {"op": "get", "key": "gone"},
                                  {"op": "get", "key": "never"}], seq=2)
    assert results == [
        {"key": "k", "version": 2, "value": "old", "expires_at": 99.0},
        {"key": "k", "version": 3},
        {"key": "k", "version": 3, "value": "new", "expires_at": None},
        {"key": "gone", "version": 3, "deleted": True},
        {"key": "never", "version": 0, "deleted": True},
    ]
    assert set(writes) == {"k"}
