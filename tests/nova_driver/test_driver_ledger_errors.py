"""Whatever the local ledger copy holds or does, nova's call is answered: a counted
step-1 miss and a step-2 call, never an exception out of the driver, and never seconds
of waiting on a locked file.

Each test: a caller host whose [hdpbf] ledger is a tampered or locked copy, a call
through oslo's RPC client as nova's ComputeAPI makes it, then the answer (compute's own)
and what the driver counted."""
from __future__ import annotations

import shutil
from collections import Counter
import sqlite3

from ledger import LedgerReader
from ledger import format as fmt
from mesh.openstack import driver_read, nova_wire

from .driverkit import vnc

UUID = "6f5c3f0e-8a3b-4c0e-9d7e-0123456789ab"


def _key():
    return nova_wire.reply_key("compute", "get_vnc_console", UUID, "novnc")


def _recorded_copy(kit, tmp_path):
    """A copy of node 0's ledger holding a live record of UUID on cmp1."""
    ep, _ = kit.compute("cmp1")
    vnc(kit.client(kit.api(0, "api0", own_answers=False), ep.host), UUID, ep.host)
    kit.settle()
    copy = tmp_path / "copy.sqlite"
    src = sqlite3.connect(kit.ledger_path(0))
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.close()
    return ep, str(copy)


def _tamper(path: str, key: str, raw: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f'UPDATE "{fmt.TABLE}" SET value = ? WHERE key = ?', (raw, fmt.kv_key(key)))
    conn.commit()
    conn.close()


def _call(kit, ledger: str, ep) -> tuple[dict, dict]:
    t = kit.api(0, "api0", ledger=ledger, own_answers=False)
    info = vnc(kit.client(t, ep.host), UUID, ep.host)
    return info, Counter(kit.driver(t).stats)


def test_a_record_nested_too_deep_is_a_counted_miss(kit, tmp_path):
    ep, path = _recorded_copy(kit, tmp_path)
    _tamper(path, _key(), '{"value": ' + "[" * 200_000 + "]" * 200_000 + ', "version": 9}')
    info, stats = _call(kit, path, ep)
    assert info["token"] and ep.calls[-1][0] == "get_vnc_console"
    assert stats["miss.ledger_error"] == 1 and stats["step2"] == 1 and not stats["step1"]


def test_a_value_nested_too_deep_inside_a_valid_record_is_a_counted_miss(kit, tmp_path):
    ep, path = _recorded_copy(kit, tmp_path)
    with LedgerReader(path) as r:
        record = r.get_record(_key())
    deep = "[" * 200_000 + "]" * 200_000
    record["value"]["pieces"] = [deep[:100_000], deep[100_000:200_000],
                                 deep[200_000:300_000], deep[300_000:]]
    record["value"]["token"] = "x" * 16   # opened in clear, then parsed
    record["value"]["token_sha256"] = nova_wire._sha256("x" * 16)
    record["value"].pop("sealed", None)
    import json
    _tamper(path, _key(), json.dumps(record))
    info, stats = _call(kit, path, ep)
    assert info["token"]
    assert stats["miss.unreadable"] + stats["miss.bad_value"] == 1 and stats["step2"] == 1


def test_a_garbage_record_is_a_counted_miss(kit, tmp_path):
    ep, path = _recorded_copy(kit, tmp_path)
    for raw in ('{"value": 5, "version": "x", "expires_at": "soon"}', "[1, 2]", "not json"):
        _tamper(path, _key(), raw)
        info, stats = _call(kit, path, ep)
        assert info["token"] and stats["step2"] == 1 and not stats["step1"], (raw, stats)


def test_a_locked_file_is_a_counted_miss_bounded_in_milliseconds(kit, tmp_path, monkeypatch):
    """Another process holds the file locked: step 1 gives up after LOCK_TIMEOUT_S (the
    busy timeout handed to sqlite3), not sqlite3's default 5 s."""
    assert driver_read.LOCK_TIMEOUT_S <= 0.1
    ep, path = _recorded_copy(kit, tmp_path)
    timeouts = []
    real_connect = sqlite3.connect

    def connect(*args, **kw):
        timeouts.append(kw.get("timeout"))
        return real_connect(*args, **kw)

    monkeypatch.setattr("ledger.reader.sqlite3.connect", connect)
    locker = real_connect(path, isolation_level=None)
    locker.execute("PRAGMA journal_mode = DELETE")
    locker.execute("PRAGMA locking_mode = EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    try:
        info, stats = _call(kit, path, ep)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert info["token"] and stats["miss.ledger_error"] == 1 and stats["step2"] == 1
    assert timeouts and set(timeouts) == {driver_read.LOCK_TIMEOUT_S}


def test_a_truncated_file_is_a_counted_miss(kit, tmp_path):
    ep, path = _recorded_copy(kit, tmp_path)
    cut = tmp_path / "cut.sqlite"
    shutil.copy(path, cut)
    with open(cut, "r+b") as fh:
        fh.truncate(4096)
    info, stats = _call(kit, str(cut), ep)
    assert info["token"] and stats["step2"] == 1 and not stats["step1"]
    assert stats["miss.ledger_error"] + stats["miss.missing"] == 1, stats
