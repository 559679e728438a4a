"""LedgerStore: JSON codec, durability pragmas, one-transaction apply, restart."""
from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys

import pytest
import sqlitedict

from ledger import LedgerError, LedgerFormatError, LedgerStore, audit_chain, build_block
from ledger import format as fmt
from ledger.memory import delete, put
from pbft_tasks.core.chain import GENESIS

CERT = [{"type": "Commit", "view": 0, "seq": 1, "digest": "d" * 64, "sender": 2, "sig": "ab"}]


def append(led, ops, protocol=None, **kw):
    block = build_block(led.height + 1, led.head, ops, **kw)
    return led.apply(protocol or {}, [block])[0]


def raw_rows(path) -> dict:
    with sqlite3.connect(path) as conn:
        return {k: (t, v) for k, t, v in
                conn.execute(f'SELECT key, typeof(value), value FROM "{fmt.TABLE}"')}


# -- codec ----------------------------------------------------------------------------

def test_values_are_json_text_under_namespaced_keys(store, db_path):
    append(store, [put("vm/1", {"host": "c1"}, 99.0)], protocol={"vote": {"seq": 1}},
           certificate=CERT)
    store.close()
    rows = raw_rows(db_path)
    assert set(rows) == {"b/000000000001", "kv/vm/1", "p/vote", "m/head", "m/format"}
    for key, (sqltype, value) in rows.items():
        assert sqltype == "text", key
        json.loads(value)
    assert json.loads(rows["kv/vm/1"][1]) == {"value": {"host": "c1"}, "version": 1,
                                              "block": 1, "expires_at": 99.0,
                                              "writer": "client"}
    block = json.loads(rows["b/000000000001"][1])
    assert block["certificate"] == CERT and block["requests"][0]["type"] == "Request"


def test_store_never_uses_pickle(db_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle used")
    for name in ("dumps", "loads"):
        monkeypatch.setattr(sqlitedict, name, boom)
        monkeypatch.setattr(pickle, name, boom)
    with LedgerStore(db_path) as s:
        append(s, [put("a", 1), delete("a")], protocol={"v": [1, 2]})
        assert s.get_record("a")["deleted"] is True
        assert s.protocol_records() == {"v": [1, 2]}
        assert len(list(s.iter_blocks())) == 1
    with LedgerStore(db_path) as s:
        assert s.height == 1


def test_pickled_file_is_refused_and_never_unpickled(tmp_path):
    path, canary = tmp_path / "evil.sqlite", tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(canary),))

    with sqlite3.connect(path) as conn:
        conn.execute(f'CREATE TABLE "{fmt.TABLE}" (key TEXT PRIMARY KEY, value BLOB)')
        conn.execute(f'INSERT INTO "{fmt.TABLE}" VALUES (?, ?)',
                     ("m/format", sqlite3.Binary(pickle.dumps(Evil()))))
    with pytest.raises(LedgerFormatError, match="not JSON text"):
        LedgerStore(path)
    assert not canary.exists()


def test_non_json_value_is_refused_and_nothing_is_written(store):
    append(store, [put("a", 1)])
    with pytest.raises(ValueError):
        store.apply({"bad": float("nan")}, [build_block(2, store.head, [put("a", 2)])])
    assert store.height == 1 and store.get("a")["value"] == 1 and store.protocol_records() == {}


# -- durability -----------------------------------------------------------------------

def test_sqlitedict_alone_would_run_with_synchronous_off(tmp_path):
    # Why the store must override: sqlitedict's connection thread sets OFF.
    d = sqlitedict.SqliteDict(str(tmp_path / "x.sqlite"), encode=fmt.encode, decode=fmt.decode,
                              journal_mode="WAL")
    try:
        assert d.conn.select_one("PRAGMA synchronous")[0] == 0
    finally:
        d.close()


@pytest.mark.parametrize("durability, level", [("full", 2), ("normal", 1)])
def test_synchronous_and_wal_as_asked(tmp_path, durability, level):
    with LedgerStore(tmp_path / "d.sqlite", durability=durability) as s:
        assert s.pragma("synchronous") == level
        assert s.pragma("journal_mode") == "wal"
        append(s, [put("a", 1)])
        assert s.pragma("synchronous") == level     # still set after a transaction
    with sqlite3.connect(tmp_path / "d.sqlite") as conn:   # WAL is persistent in the file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_durability_is_full(store):
    assert store.durability == "full" and store.pragma("synchronous") == 2


def test_unknown_durability_is_refused(tmp_path):
    with pytest.raises(ValueError):
        LedgerStore(tmp_path / "d.sqlite", durability="off")


# -- atomic apply -----------------------------------------------------------------------

def tamper_prev(b):
    b["prev"] = "f" * 64


def tamper_hash(b):
    b["skip"] = [0]  # hashed; the view is not (see chain.py)


def tamper_request(b):
    b["requests"][0]["op"]["value"] = "forged"


def tamper_seq(b):
    b["seq"] = 5


@pytest.mark.parametrize("tamper", [tamper_prev, tamper_hash, tamper_request, tamper_seq])
def test_bad_block_raises_and_changes_nothing(store, db_path, tamper):
    append(store, [put("a", 1)], protocol={"keep": 1, "gone": 2})
    height, head = store.height, store.head
    good = build_block(2, head, [put("a", 2), put("b", 1)])
    bad = build_block(3, good["hash"], [put("a", 3)])
    tamper(bad)
    with pytest.raises(LedgerError, match=r"block \d+: "):
        store.apply({"keep": 99, "gone": None, "new": 1}, [good, bad])

    def check(led):
        assert (led.height, led.head) == (height, head)
        assert led.get("a")["value"] == 1 and led.get("b") is None
        assert led.block(2) is None
        assert led.protocol_records() == {"keep": 1, "gone": 2}
    check(store)
    store.close()
    with LedgerStore(db_path) as again:
        check(again)


def test_failure_inside_the_transaction_rolls_back(store, db_path, monkeypatch):
    append(store, [put("a", 1)], protocol={"gone": 1})
    conn = store._db.conn
    real_execute = conn.execute

    def failing(sql, arg=None, res=None):
        # The error happens in sqlitedict's thread, in the first of two statements;
        # the REPLACE after it still runs there, and must not be committed.
        if sql.startswith("DELETE"):
            sql = sql.replace(fmt.TABLE, "no_such_table")
        return real_execute(sql, arg, res)
    monkeypatch.setattr(conn, "execute", failing)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        store.apply({"gone": None, "new": 1}, [build_block(2, store.head, [put("a", 2)])])
    monkeypatch.undo()
    assert store.height == 1 and store.get("a")["value"] == 1
    assert store.protocol_records() == {"gone": 1}
    append(store, [put("a", 5)])            # the connection is still usable
    store.close()
    with LedgerStore(db_path) as again:
        assert again.height == 2 and again.get("a") == {"value": 5, "version": 2, "block": 2,
                                                        "expires_at": None, "writer": "client"}
        assert again.protocol_records() == {"gone": 1}


def test_failure_of_a_one_statement_write_commits_nothing(store, db_path, monkeypatch):
    """The usual write is one multi-row REPLACE: its error must come back with its own
    message, and nothing of it may be committed."""
    append(store, [put("a", 1)], protocol={"keep": 1})
    conn = store._db.conn
    real_execute = conn.execute

    def failing(sql, arg=None, res=None):
        if sql.startswith("REPLACE"):
            sql = sql.replace(fmt.TABLE, "no_such_table")
        return real_execute(sql, arg, res)
    monkeypatch.setattr(conn, "execute", failing)
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        store.apply({"keep": 2, "new": 1}, [build_block(2, store.head, [put("a", 2)])])
    monkeypatch.undo()
    assert store.height == 1 and store.get("a")["value"] == 1
    assert store.protocol_records() == {"keep": 1}
    append(store, [put("a", 5)])
    store.close()
    with LedgerStore(db_path) as again:
        assert again.height == 2 and again.get("a")["value"] == 5
        assert again.protocol_records() == {"keep": 1}


# -- restart ------------------------------------------------------------------------------

def test_reopen_keeps_height_head_kv_and_protocol_records(db_path):
    with LedgerStore(db_path) as s:
        assert (s.height, s.head) == (0, GENESIS)
        append(s, [put("a", 1), put("b", [1, 2], 50.0)], protocol={"view": 0, "log": {"1": "x"}})
        append(s, [delete("a")], protocol={"log": None, "stable": 2})
        height, head = s.height, s.head
        blocks = list(s.iter_blocks())
    with LedgerStore(db_path, durability="normal") as s:
        assert (s.height, s.head) == (height, head) == (2, blocks[-1]["hash"])
        assert s.get("a") is None and s.get_record("a")["version"] == 2
        assert s.get("b", now=10.0)["value"] == [1, 2]
        assert s.protocol_records() == {"view": 0, "stable": 2}
        assert list(s.iter_blocks()) == blocks
        audit_chain(s.iter_blocks())
        append(s, [put("a", "back")])
        assert s.get("a")["version"] == 3


def test_many_blocks_in_one_apply_and_iter_blocks_range(store):
    blocks, head = [], store.head
    for seq in range(1, 601):
        blocks.append(build_block(seq, head, [put(f"k{seq % 7}", seq)]))
        head = blocks[-1]["hash"]
    results = store.apply({}, blocks)
    assert len(results) == 600 and store.height == 600 and store.head == head
    assert [b["seq"] for b in store.iter_blocks(255, 260)] == list(range(255, 261))
    assert [b["seq"] for b in store.iter_blocks()] == list(range(1, 601))
    assert store.get("k0")["version"] == len(range(7, 601, 7))


def test_closed_store_refuses_use(db_path):
    s = LedgerStore(db_path)
    s.close()
    with pytest.raises(LedgerError, match="closed"):
        s.get("a")


def test_ledger_does_not_import_celery_or_kombu():
    code = "import sys, ledger; print(sorted(m for m in ('celery', 'kombu', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
