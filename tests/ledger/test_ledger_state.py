"""The pure state transition (ledger/state.py): versions, tombstones, skips, overlays."""
from __future__ import annotations

import copy

import pytest

from ledger import LedgerError, apply_block, build_block
from ledger.memory import delete, put
from ledger.state import may_serve, refused_writes
from pbft_tasks.core.chain import GENESIS


def run(state: dict, ops, seq=1, skip=()):
    block = build_block(seq, GENESIS, ops, skip=skip)
    return apply_block(state.get, block)


def test_put_creates_version_1_and_records_block_and_expiry():
    writes, results = run({}, [put("k", {"v": 1}, 123.5)], seq=7)
    assert writes == {"k": {"value": {"v": 1}, "version": 1, "block": 7, "expires_at": 123.5,
                            "writer": "client"}}
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
    assert writes == {"k": {"deleted": True, "version": 3, "block": 2, "expires_at": None,
                            "writer": "client"}}
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
    assert writes["k"] == {"deleted": True, "version": 5, "block": 1, "expires_at": None,
                          "writer": "client"}


def test_skip_list_is_honoured():
    writes, results = run({}, [put("a", 1), put("b", 2), put("a", 3)], skip=[0, 1])
    assert results == [None, None, {"key": "a", "version": 1}]
    assert writes == {"a": {"value": 3, "version": 1, "block": 1, "expires_at": None,
                            "writer": "client"}}


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


# -- console records are bound to their writer ---------------------------------------------

KEY1 = "rpc/compute/get_vnc_console/u-1/novnc"
WRITERS = {"cmp1": ("cmp1",), "cmp2": ("cmp2",), "admin": ()}


def console(host: str) -> dict:
    return {"format": "rpc-reply/1", "compute_host": host, "pieces": ["{", "}"]}


def run_as(state: dict, client: str, ops, seq=1, writers=WRITERS):
    block = build_block(seq, GENESIS, ops, client=client)
    return apply_block(state.get, block, writers)


def test_a_console_put_records_its_writer():
    writes, results = run_as({}, "cmp1", [put(KEY1, console("cmp1"), 10.0)])
    assert writes[KEY1]["writer"] == "cmp1" and results == [{"key": KEY1, "version": 1}]


def test_a_client_cannot_write_a_console_record_for_another_host():
    """cmp2 forging cmp1's console: refused on execution, nothing written."""
    state = {KEY1: {"value": console("cmp1"), "version": 1, "block": 1, "expires_at": 10.0,
                    "writer": "cmp1"}}
    before = copy.deepcopy(state)
    writes, results = run_as(state, "cmp2", [put(KEY1, console("cmp1"), 10.0),
                                             put("console/u-1/novnc", console("cmp1"), 10.0),
                                             put(KEY1, "not a dict", 10.0)], seq=2)
    assert writes == {} and state == before
    assert results == [{"key": KEY1, "version": 1, "refused": "console_other_host"},
                       {"key": "console/u-1/novnc", "version": 0, "refused": "console_other_host"},
                       {"key": KEY1, "version": 1, "refused": "console_other_host"}]


def test_a_client_that_speaks_for_no_host_writes_no_console_record():
    writes, results = run_as({}, "admin", [put(KEY1, console("admin"), 10.0), delete(KEY1),
                                           put("plain", 1)])
    assert set(writes) == {"plain"}
    assert [r.get("refused") for r in results] == ["console_no_host", "console_no_host", None]


def test_a_client_without_a_hosts_entry_speaks_for_its_own_name():
    assert run_as({}, "cmp9", [put(KEY1, console("cmp9"), 1.0)], writers={})[1][0] == \
        {"key": KEY1, "version": 1}
    assert run_as({}, "cmp9", [put(KEY1, console("cmp1"), 1.0)], writers=None)[1][0][
        "refused"] == "console_other_host"


def test_a_client_may_speak_for_several_hosts():
    writers = {"rack1": ("cmp1", "cmp2")}
    _, results = run_as({}, "rack1", [put(KEY1, console("cmp2"), 1.0)], writers=writers)
    assert "refused" not in results[0]


def test_live_migration_the_destination_replaces_and_deletes_the_sources_record():
    """nova's live migration: the destination (cmp2) deletes the instance's records
    (post_live_migration_at_destination) and writes the new one; both are allowed, the
    writer becomes cmp2, and the source's record no longer serves calls to either host."""
    old = {"value": console("cmp1"), "version": 1, "block": 1, "expires_at": 10.0,
           "writer": "cmp1"}
    writes, results = run_as({KEY1: old}, "cmp2", [delete(KEY1), put(KEY1, console("cmp2"), 20.0)],
                             seq=2)
    assert [r.get("refused") for r in results] == [None, None]
    assert writes[KEY1]["writer"] == "cmp2" and writes[KEY1]["version"] == 3
    assert may_serve(writes[KEY1], "cmp2", WRITERS) and not may_serve(writes[KEY1], "cmp1", WRITERS)
    assert may_serve(old, "cmp1", WRITERS) and not may_serve(old, "cmp2", WRITERS)


def test_an_unbound_record_serves_no_host():
    assert not may_serve({"value": console("cmp1"), "version": 1}, "cmp1", WRITERS)
    assert not may_serve(None, "cmp1", WRITERS)


def test_other_keys_and_gets_are_not_bound():
    _, results = run_as({}, "admin", [put("vm/1", console("cmp1")), {"op": "get", "key": KEY1}])
    assert all("refused" not in r for r in results)


def test_refused_writes_name_client_key_and_reason():
    block = build_block(1, GENESIS, [put(KEY1, console("cmp1"), 1.0), put("x", 1)], client="cmp2")
    _, results = apply_block({}.get, block, WRITERS)
    assert refused_writes(block, results) == [("cmp2", KEY1, "console_other_host")]


def test_memory_ledger_applies_the_rule_it_was_given():
    from ledger import MemoryLedger
    ledger = MemoryLedger(writers=WRITERS)
    block = build_block(1, GENESIS, [put(KEY1, console("cmp1"), 1e12)], client="cmp2")
    assert ledger.apply({}, [block]) == [[{"key": KEY1, "version": 0,
                                           "refused": "console_other_host"}]]
    assert ledger.get_record(KEY1) is None and ledger.height == 1


def test_the_writer_is_the_client_name_without_its_session():
    writes, results = run_as({}, "cmp1/5e55104a", [put(KEY1, console("cmp1"), 1.0)])
    assert writes[KEY1]["writer"] == "cmp1" and "refused" not in results[0]
    _, results = run_as({}, "cmp2/5e55104a", [put(KEY1, console("cmp1"), 1.0)])
    assert results[0]["refused"] == "console_other_host"


def test_json_nested_deeper_than_the_parser_is_a_format_error():
    from ledger import format as fmt
    with pytest.raises(fmt.LedgerFormatError, match="nested too deep"):
        fmt.decode("[" * 200_000 + "]" * 200_000)
