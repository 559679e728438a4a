"""LedgerReader: the read-only local read path (nova-api's first step)."""
from __future__ import annotations

import sqlite3

import pytest

from ledger import LedgerNotFound, LedgerReader, LedgerStore, build_block
from ledger import format as fmt
from ledger.memory import delete, put


def append(led, ops, protocol=None):
    return led.apply(protocol or {}, [build_block(led.height + 1, led.head, ops)])[0]


@pytest.fixture
def reader(store, db_path):
    with LedgerReader(db_path) as r:
        yield r


def test_sees_committed_data_and_later_commits(store, reader):
    assert (reader.height(), reader.head()) == (0, store.head)
    append(store, [put("vm/1", {"host": "c1"}), put("tmp", 1, 50.0), put("gone", 1)])
    assert reader.get("vm/1") == {"value": {"host": "c1"}, "version": 1, "block": 1,
                                  "expires_at": None, "writer": "client"}
    assert reader.get_value("vm/1") == {"host": "c1"}
    append(store, [put("vm/1", {"host": "c2"}), delete("gone")])
    assert reader.get_value("vm/1") == {"host": "c2"}
    assert (reader.height(), reader.head()) == (2, store.head)
    assert reader.block(2) == store.block(2) and reader.block(3) is None
    assert list(reader.iter_blocks()) == list(store.iter_blocks())
    assert reader.get("tmp", now=49.0)["value"] == 1
    assert reader.get("tmp", now=50.0) is None and reader.get("tmp") is None
    assert reader.get("gone") is None and reader.get_record("gone")["deleted"] is True
    assert reader.get("never") is None and reader.get_value("never", default="miss") == "miss"


def test_cannot_write(store, reader):
    append(store, [put("a", 1)])
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
        reader._conn.execute(f'INSERT INTO "{fmt.TABLE}" (key, value) VALUES (?, ?)', ("kv/x", "1"))
    with pytest.raises(sqlite3.OperationalError):
        reader._conn.execute(f'UPDATE "{fmt.TABLE}" SET value = ? WHERE key = ?', ("2", "kv/a"))
    assert store.get("x") is None and store.get("a")["value"] == 1


def test_reads_while_writer_holds_an_open_transaction(store, reader):
    append(store, [put("a", "committed")])
    # Open the strongest write transaction on the store's connection and keep it open
    # (without WAL, an EXCLUSIVE lock would shut every reader out).
    store._db.conn.select_one("BEGIN EXCLUSIVE")
    store._db["kv/a"] = {"value": "uncommitted", "version": 2, "block": 2, "expires_at": None}
    store._db.conn.select_one("SELECT 1")       # the REPLACE has run: the write lock is held
    # no waiting for a lock: a read that needed one would fail at once ("database is
    # locked") instead of waiting out the 5 s busy timeout
    reader._conn.execute("PRAGMA busy_timeout = 0")
    assert reader.get_value("a") == "committed"  # never sees the open transaction
    store._db.conn.select_one("ROLLBACK")
    assert reader.get_value("a") == "committed"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(LedgerNotFound, match="no ledger"):
        LedgerReader(tmp_path / "nope.sqlite")
    assert not (tmp_path / "nope.sqlite").exists()        # and it was not created


def test_file_without_ledger_table_is_not_found(tmp_path):
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()
    with pytest.raises(LedgerNotFound, match="no ledger table"):
        LedgerReader(path)


def test_reader_after_writer_closed(db_path):
    with LedgerStore(db_path) as s:
        append(s, [put("a", 1)])
    with LedgerReader(db_path) as r:
        assert r.get_value("a") == 1 and r.height() == 1


def test_closed_reader_refuses_use(store, db_path):
    r = LedgerReader(db_path)
    r.close()
    with pytest.raises(fmt.LedgerError, match="closed"):
        r.get("a")
