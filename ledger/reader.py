"""``LedgerReader``: the fast, read-only local read path of a node's ledger.

Owns: step 2a of the two-step read (docs/nova.md, "Two-step reads"): another process on the node
(nova-api) asks its own node's ledger first and falls back to an RPC through RabbitMQ only
on a miss.  A hit must cost far less than the fallback and less than a Redis GET, so this
module does not go through sqlitedict (whose every read is a round trip through its
background thread, ~110 us); it opens the file with the plain ``sqlite3`` module.

Rules of this file:
- The connection is opened read-only (``file:...?mode=ro``): this process can never
  write the ledger, whatever it executes; ``PRAGMA query_only`` is set as a second lock.
- WAL: a read never blocks the node's writer, and the writer never blocks a read; each
  ``get`` sees the last committed transaction (no transaction is held between calls:
  ``isolation_level=None``, one statement = one snapshot).
- Queries are by primary key on sqlitedict's table (``key TEXT PRIMARY KEY, value
  BLOB``, named ``format.TABLE``), decoded with the ledger's JSON codec only.
- Expired (``expires_at <= now``) and deleted records read as missing, exactly like
  ``LedgerStore.get`` (both use ``format.is_live``).
- A ledger that does not exist yet raises ``LedgerNotFound``; the caller decides whether
  that means "miss, ask over RPC" or "node not started".
- A ``LedgerReader`` belongs to the thread that opened it (sqlite3's
  ``check_same_thread``); open one per thread.
- ``timeout``: how long a read waits for a file another process holds locked before it
  fails with ``sqlite3.OperationalError`` (sqlite3's busy timeout; default 5 s).  A
  caller on a latency path (the nova driver's step 1) passes milliseconds.

Measured with ``.venv/bin/python -m mesh.bench.read`` (20000 interleaved reads of 1000
keys, 2-core VM): ``get`` p50 ~16 us (p99 45-75 us) against a local Redis GET p50 ~75 us
(p99 210-300 us), i.e. ~4.7x faster; back-to-back (no other I/O in between) ``get`` is
~7.5 us, of which ~4.5 us is the SQLite lookup and ~2 us the JSON decode.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from pbft_tasks.core import chain

from . import format as fmt
from .format import LedgerError, LedgerNotFound

_GET = f'SELECT value FROM "{fmt.TABLE}" WHERE key = ?'
_RANGE = f'SELECT value FROM "{fmt.TABLE}" WHERE key >= ? AND key < ? ORDER BY key'


class LedgerReader:
    """Read-only view of a node's ledger file for other processes on the node."""

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        file = Path(self.path)
        if not file.is_file():
            raise LedgerNotFound(f"no ledger at {self.path}: has the node's worker started?")
        uri = file.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout)
        except sqlite3.Error as exc:
            raise LedgerNotFound(f"cannot open ledger {self.path} read-only: {exc}") from None
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (fmt.TABLE,)).fetchone()
            if found is None:
                raise LedgerNotFound(f"{self.path} has no ledger table yet")
            conn.execute("PRAGMA query_only = 1")
            marker = self._fetch(conn, fmt.FORMAT_KEY)
            if marker is not None and marker != fmt.FORMAT:
                raise fmt.LedgerFormatError(f"unsupported ledger format {marker!r}")
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"cannot read ledger {self.path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._conn: Optional[sqlite3.Connection] = conn

    @staticmethod
    def _fetch(conn: sqlite3.Connection, key: str) -> Any:
        row = conn.execute(_GET, (key,)).fetchone()
        return None if row is None else fmt.decode(row[0])

    def _value(self, key: str) -> Any:
        if self._conn is None:
            raise LedgerError("LedgerReader is closed")
        return self._fetch(self._conn, key)

    # -- key/value --------------------------------------------------------------------

    def get_record(self, key: str) -> Optional[dict]:
        """The raw kv record (tombstones and expired records included), or None."""
        return self._value(fmt.KV_PREFIX + key)

    def get(self, key: str, now: Optional[float] = None) -> Optional[dict]:
        """The live record {"value", "version", "block", "expires_at"} of ``key``, or
        None if it is missing, deleted or expired at ``now`` (default: time.time())."""
        record = self._value(fmt.KV_PREFIX + key)
        if record is None:
            return None
        return record if fmt.is_live(record, time.time() if now is None else now) else None

    def get_value(self, key: str, now: Optional[float] = None, default: Any = None) -> Any:
        """The live value of ``key``, or ``default`` (a stored JSON null is None too:
        use ``get`` to tell them apart)."""
        record = self.get(key, now)
        return default if record is None else record["value"]

    def genesis_record(self) -> Optional[dict]:
        """The genesis configuration this ledger is bound to (``m/genesis``), or None."""
        return self._value(fmt.GENESIS_KEY)

    # -- chain ------------------------------------------------------------------------

    def _head_record(self) -> dict:
        head = self._value(fmt.HEAD_KEY)
        return {"height": 0, "head": chain.GENESIS} if head is None else head

    def height(self) -> int:
        """Seq of the last committed block (0 before the first)."""
        return self._head_record()["height"]

    def head(self) -> str:
        """Hash of the last committed block (``chain.GENESIS`` before the first)."""
        return self._head_record()["head"]

    def block(self, seq: int) -> Optional[dict]:
        """The committed block at ``seq`` (with its certificate), or None."""
        if type(seq) is not int or not 0 < seq <= fmt.MAX_SEQ:
            return None
        return self._value(fmt.block_key(seq))

    def iter_blocks(self, start: int = 1, end: Optional[int] = None) -> Iterator[dict]:
        """Blocks ``start`` .. ``end`` INCLUSIVE, in order, from one snapshot."""
        if self._conn is None:
            raise LedgerError("LedgerReader is closed")
        lo = fmt.block_key(max(start, 1))
        hi = fmt.block_key(end + 1) if end is not None and end < fmt.MAX_SEQ \
            else fmt.prefix_range(fmt.BLOCK_PREFIX)[1]
        for (raw,) in self._conn.execute(_RANGE, (lo, hi)):
            yield fmt.decode(raw)

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
