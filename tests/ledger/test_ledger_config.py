"""Configuration changes as ledger entries (ledger/state.py, ledger/base.py): a config op
executes against the stored history, refusals are counted no-ops, the ledger is bound to
its genesis, and a ledger written before genesis binding still loads."""
from __future__ import annotations

import dataclasses

import pytest

from ledger.format import GENESIS_KEY, LedgerError
from ledger.memory import MemoryLedger, build_block, put
from ledger.state import ConfigRules, apply_block
from ledger.store import LedgerStore
from pbft_tasks.core import config as C
from pbft_tasks.core.chain import GENESIS
from pbft_tasks.core.messages import CONFIG_KEY, MalformedMessage, Request, from_wire, to_wire
from pbft_tasks.signing import generate_key, public_key_hex, sign_hex, verify_hex

K, L = 4, 8
ADMINS = {name: generate_key() for name in ("a", "b", "c")}
NODES = [generate_key() for _ in range(4)]


def genesis() -> C.Configuration:
    return C.genesis({i: public_key_hex(k) for i, k in enumerate(NODES)},
                     {"admin": public_key_hex(generate_key())}, {}, [],
                     {n: public_key_hex(k) for n, k in ADMINS.items()}, 2)


RULES = ConfigRules(genesis(), K, L, verify_hex)


def change_of(cfg: C.Configuration, ops: list, *signers: str) -> dict:
    change = C.proposal(cfg, ops)
    data = C.change_bytes(change)
    change["sigs"] = {s: sign_hex(ADMINS[s], data) for s in signers}
    return change


def config_op(change: dict) -> dict:
    return {"op": "config", "key": CONFIG_KEY, "change": change}


def add_client(cfg, name, *signers):
    return config_op(change_of(cfg, [{"op": "add_client", "name": name,
                                      "key": public_key_hex(generate_key())}], *signers))


def test_a_config_entry_executes_and_its_history_is_stored():
    ledger = MemoryLedger()
    ledger.bind_genesis(RULES)
    b1 = build_block(1, GENESIS, [add_client(RULES.genesis, "compute1", "a", "b")])
    [[result]] = ledger.apply(None, [b1])
    assert result["config"] == "accepted" and result["version"] == 1
    assert result["effective"] == C.effective_from(1, K, L)
    history = ledger.config_history()
    assert history.latest.client_key("compute1") is not None
    assert history.at(result["effective"] - 1) == RULES.genesis


def test_a_refused_entry_is_a_counted_no_op_and_the_chain_goes_on():
    ledger = MemoryLedger()
    ledger.bind_genesis(RULES)
    b1 = build_block(1, GENESIS, [add_client(RULES.genesis, "c1", "a"),          # below 2 of 3
                                  put("k", 1),
                                  add_client(RULES.genesis, "c2", "a", "c")])
    b2 = build_block(2, b1["hash"], [add_client(RULES.genesis, "c3", "b", "c")])  # stale now
    [[r1, _, r3], [r4]] = ledger.apply(None, [b1, b2])
    assert r1["reason"] == "config_unauthorized" and r3["config"] == "accepted"
    assert r4["reason"] == "config_stale"
    history = ledger.config_history()
    assert history.refused == {"config_unauthorized": 1, "config_stale": 1}
    assert history.latest.version == 1 and ledger.get_value("k") == 1


def test_an_unbound_ledger_refuses_every_change_the_same_way():
    writes, [result] = apply_block(lambda key: None,
                                   build_block(1, GENESIS, [add_client(RULES.genesis, "c", "a", "b")]))
    assert writes == {} and result["reason"] == "config_no_genesis"


def test_clients_cannot_write_the_mesh_keys():
    for op in ({"op": "put", "key": CONFIG_KEY, "value": 1, "expires_at": None},
               {"op": "delete", "key": "_hdpbf/anything"},
               {"op": "config", "key": "other", "change": {}}):
        with pytest.raises(MalformedMessage):
            from_wire(to_wire(Request("c", 1, op)))
        with pytest.raises(LedgerError):
            apply_block(lambda key: None, build_block(1, GENESIS, [op]), RULES)
    # a get of the configuration is a read like any other
    assert from_wire(to_wire(Request("c", 1, {"op": "get", "key": CONFIG_KEY}))).op["op"] == "get"


def test_the_ledger_keeps_the_genesis_it_was_bound_to():
    ledger = MemoryLedger()
    assert ledger.bind_genesis(RULES) is None
    assert ledger.genesis_record()["hash"] == RULES.genesis.hash
    other = ConfigRules(C.genesis({i: public_key_hex(generate_key()) for i in range(4)},
                                  {}, {}, [], {}, 0), K, L, verify_hex)
    again = MemoryLedger(rows=ledger.rows)
    assert again.bind_genesis(other) == RULES.genesis.hash
    assert again.config_rules.genesis == RULES.genesis


def test_a_ledger_written_before_genesis_binding_still_loads(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with LedgerStore(path) as old:  # as an older version wrote it: no m/genesis
        old.apply({"meta": {"x": 1}}, [build_block(1, GENESIS, [put("k", "v")])])
    with LedgerStore(path) as store:
        assert store.height == 1 and store.get_value("k") == "v"
        assert store.genesis_record() is None and store.config_history() is None
        assert store.bind_genesis(RULES) is None
        b2 = build_block(2, store.head, [add_client(RULES.genesis, "c", "b", "c")])
        [[result]] = store.apply(None, [b2])
        assert result["config"] == "accepted"
    with LedgerStore(path) as store:
        assert store.genesis_record()["hash"] == RULES.genesis.hash
        assert store.config_history().latest.version == 1
        assert store._fetch_one(GENESIS_KEY)["log_window"] == L


def test_a_change_of_the_validators_is_refused_unless_the_mesh_switches_them():
    rotate = config_op(change_of(RULES.genesis, [{"op": "rotate_validator", "id": 1,
                                                  "key": public_key_hex(generate_key())}], "a", "b"))
    ledger = MemoryLedger()
    ledger.bind_genesis(RULES)
    [[result]] = ledger.apply(None, [build_block(1, GENESIS, [rotate])])
    assert result["reason"] == "config_unsupported"
    switching = MemoryLedger()
    switching.bind_genesis(dataclasses.replace(RULES, validator_changes=True))
    [[result]] = switching.apply(None, [build_block(1, GENESIS, [rotate])])
    assert result["config"] == "accepted"
    reopened = MemoryLedger(rows=switching.rows)
    reopened.bind_genesis(RULES)  # what the ledger was bound with is kept (m/genesis)
    assert reopened.config_rules.validator_changes
