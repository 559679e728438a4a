"""``LedgerStore``: a node's ledger in one SQLite file through sqlitedict, the single writer.

Owns: the SQLite side of ``base.LedgerBase``: opening the file with the JSON codec, WAL,
the durability the operator chose (verified, not assumed), and the one-transaction write.
The node's Celery worker is the only process that opens a ``LedgerStore`` on a file;
other processes on the node read it with ``reader.LedgerReader``.

Rules of this file:
- Every ``SqliteDict(...)`` passes ``encode=``/``decode=`` (``format``'s JSON codec) and
  ``encode_key=``/``decode_key=`` explicitly: sqlitedict pickles by default, and
  unpickling a file is remote code execution.
- WAL journal, so readers never block the writer.  sqlitedict forces
  ``PRAGMA synchronous=OFF`` in its connection thread; we override it on that same
  connection (requests to its thread run in order, so ours runs after its own) and read
  the value back, refusing to open if it did not take:
    durability="full"   (default) synchronous=FULL: every commit is fsynced before
                        ``apply`` returns.  A replica must never forget a vote it
                        already sent, even on power loss.
    durability="normal" WAL + NORMAL: survives kill -9 of the process; power loss may
                        lose the last commits (fsync only at checkpoints).
- One ``apply`` = one SQLite transaction: a multi-row DELETE, then a multi-row REPLACE
  (500 rows a statement), so a usual write is two round trips to sqlitedict's thread.
  Statements go through that thread asynchronously and it keeps executing after a
  failed statement, so the last statement is waited for (a barrier that surfaces any
  earlier error) and we ROLLBACK instead of COMMIT.
  COMMIT/ROLLBACK are issued as SQL through ``select_one`` so that an error comes back
  to us (sqlitedict's own ``commit()`` kills its thread on error and the caller hangs).
- Reads here (``get``: 50-110 us, a round trip through sqlitedict's thread) are for the
  worker itself; fast local reads are ``LedgerReader``'s job (8-16 us).
- One writer per file is a deployment rule (one worker per node), not enforced here: the
  cached height/head would go stale under a second writer.

Measured cost of durability (2-core VM, ext4 on a virtio disk, Python 3.11, SQLite 3.40,
sqlitedict 2.1) with ``.venv/bin/python -m ledger bench-durability --dir <ledger dir>``;
medians of 8 runs, (min-max) in brackets; the machine was shared, so fsync-bound figures
vary a lot from run to run:

  | durability | vote record only     | 1-request block     | 300-request blocks    |
  |------------|----------------------|---------------------|-----------------------|
  | full       | 2.9k/s (0.3k-3.3k)   | 2.0k/s (0.4k-2.5k)  | 46k tx/s (24k-55k)    |
  | normal     | 9.8k/s (2.8k-11k)    | 3.9k/s (1.4k-4.5k)  | 54k tx/s (31k-57k)    |

  ("vote record only": ``apply({"vote": ...}, [])``, one row per commit; "1-request
  block": 4 rows per commit (record, block, kv, head); last column: one commit per block
  of 300 puts.)  FULL costs one fsync per commit, i.e. ~0.25 ms more per small commit
  here (vote: ~340 us vs ~100 us); it hardly matters once a commit carries a block of a
  few hundred requests, so the consensus target (>= 2000 committed tx/s) is met by a wide
  margin with the safe default.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Optional

from sqlitedict import SqliteDict

from . import format as fmt
from .base import LedgerBase
from .format import LedgerError

DURABILITY = {"full": 2, "normal": 1}   # PRAGMA synchronous values
_FETCH_CHUNK = 500                      # SQLite's host-parameter limit is far above this

_SELECT_RANGE = f'SELECT key, value FROM "{fmt.TABLE}" WHERE key >= ? AND key < ? ORDER BY key'


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class LedgerStore(LedgerBase):
    """A node's ledger file (see ``base.LedgerBase`` for the interface)."""

    def __init__(self, path: str | os.PathLike, durability: str = "full",
                 writers=None) -> None:
        self.writers = writers
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, got {durability!r}")
        self.path = os.fspath(path)
        self.durability = durability
        self._db = SqliteDict(self.path, tablename=fmt.TABLE, flag="c", autocommit=False,
                              journal_mode="WAL", encode=fmt.encode, decode=fmt.decode,
                              encode_key=fmt.identity, decode_key=fmt.identity,
                              outer_stack=False)
        try:
            self._set_durability()
            self._open_ledger()
        except BaseException:
            self._db.close()
            raise

    # -- connection settings --------------------------------------------------------

    def pragma(self, name: str) -> Any:
        """Read a PRAGMA on sqlitedict's own connection (the one that writes)."""
        if not name.isidentifier():
            raise ValueError(f"bad pragma name {name!r}")
        row = self._db.conn.select_one(f"PRAGMA {name}")
        return None if row is None else row[0]

    def _set_durability(self) -> None:
        want = DURABILITY[self.durability]
        self._db.conn.select_one(f"PRAGMA synchronous={want}")
        got = self.pragma("synchronous")
        if got != want:
            raise LedgerError(f"PRAGMA synchronous is {got}, wanted {want} ({self.durability})")
        mode = self.pragma("journal_mode")
        if str(mode).lower() != "wal":
            raise LedgerError(f"journal_mode is {mode!r}, wanted 'wal'")

    # -- primitives -----------------------------------------------------------------

    def _fetch(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(0, len(keys), _FETCH_CHUNK):
            chunk = keys[i:i + _FETCH_CHUNK]
            sql = (f'SELECT key, value FROM "{fmt.TABLE}" WHERE key IN '
                   f'({",".join("?" * len(chunk))})')
            for key, raw in self._db.conn.select(sql, tuple(chunk)):
                out[key] = fmt.decode(raw)
        return out

    def _fetch_one(self, key: str) -> Any:
        try:
            return self._db[key]
        except KeyError:
            return None

    def _scan(self, lo: str, hi: str, limit: Optional[int] = None) -> Iterator[tuple[str, Any]]:
        sql = _SELECT_RANGE if limit is None else f"{_SELECT_RANGE} LIMIT {int(limit)}"
        for key, raw in self._db.conn.select(sql, (lo, hi)):
            yield key, fmt.decode(raw)

    def _write(self, puts: dict[str, Any], deletes: list[str], sync: bool = True) -> None:
        conn = self._db.conn
        relax = not sync and self.durability == "full"
        if relax:  # only outside a transaction; queued, so it costs no round trip
            conn.execute(f"PRAGMA synchronous={DURABILITY['normal']}")
        try:
            # Every value is encoded before the first statement is queued, so a value
            # that is not JSON raises here with nothing written.
            rows = [(self._db.encode_key(k), self._db.encode(v)) for k, v in puts.items()]
            statements = [(f'DELETE FROM "{fmt.TABLE}" WHERE key IN ({",".join("?" * len(c))})', tuple(c))
                          for c in _chunks(deletes, _FETCH_CHUNK)]
            statements += [(f'REPLACE INTO "{fmt.TABLE}" (key, value) VALUES '
                            f'{",".join(["(?,?)"] * len(c))}', tuple(x for row in c for x in row))
                           for c in _chunks(rows, _FETCH_CHUNK)]
            # Each statement is one request to sqlitedict's thread (its own executemany
            # is one request, and one wake-up of that thread, per row).  The last one is
            # waited for: it surfaces the error of any statement before we COMMIT.
            for sql, args in statements[:-1]:
                conn.execute(sql, args)
            if statements:
                conn.select_one(*statements[-1])
            conn.select_one("COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            if relax:
                conn.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")

    def _rollback(self) -> None:
        try:
            self._db.conn.select_one("ROLLBACK")
        except Exception:
            pass        # no transaction was open (the failure came before any statement)

    def _close(self) -> None:
        self._db.close()
