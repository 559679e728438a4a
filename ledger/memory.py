"""``MemoryLedger``: the in-memory fake of ``LedgerStore`` for unit tests and the
embedded (single-process) mode (etcd's ``MemoryStorage``).

Owns: only the five storage primitives of ``base.LedgerBase``: a dict from key to JSON
text.  All behaviour (chain checks, state transitions, versions, expiry, atomicity) is
inherited from ``LedgerBase``, so the fake and the SQLite store cannot drift apart.

Rules of this file:
- Values are kept *encoded* with the ledger's JSON codec, exactly as the file stores
  them: a value that SQLite could not hold fails here too, tuples come back as lists,
  and callers never receive references into the fake's state.
- ``_write`` encodes everything before it changes anything, so a failure leaves the
  fake untouched, like a rolled-back SQLite transaction.
- ``build_block`` makes valid blocks from plain ops for tests and benchmarks; the real
  blocks come from the replica through ``chain.make_block``, like these.
- Not durable and not shared between processes: nothing survives ``close()`` unless
  the caller keeps ``rows`` (``MemoryLedger(rows=old.rows)`` simulates a restart).
"""
from __future__ import annotations

import bisect
from typing import Any, Iterable, Iterator, Optional

from pbft_tasks.core import chain
from pbft_tasks.core.messages import Request, batch_digest

from . import format as fmt
from .base import LedgerBase


class MemoryLedger(LedgerBase):
    """Same interface as ``LedgerStore`` (apply, protocol_records, height, head, block,
    iter_blocks, get, get_value, get_record, close), kept in a dict."""

    def __init__(self, rows: Optional[dict[str, str]] = None, writers=None) -> None:
        self.writers = writers
        self.rows: dict[str, str] = rows if rows is not None else {}
        self._keys: list[str] = sorted(self.rows)
        self._open_ledger()

    def _fetch(self, keys: list[str]) -> dict[str, Any]:
        return {k: fmt.decode(self.rows[k]) for k in keys if k in self.rows}

    def _fetch_one(self, key: str) -> Any:
        raw = self.rows.get(key)
        return None if raw is None else fmt.decode(raw)

    def _scan(self, lo: str, hi: str, limit: Optional[int] = None) -> Iterator[tuple[str, Any]]:
        i = bisect.bisect_left(self._keys, lo)
        j = bisect.bisect_left(self._keys, hi)
        if limit is not None:
            j = min(j, i + limit)
        selected = self._keys[i:j]
        return iter([(k, fmt.decode(self.rows[k])) for k in selected])

    def _write(self, puts: dict[str, Any], deletes: list[str], sync: bool = True) -> None:
        encoded = {k: fmt.encode(v) for k, v in puts.items()}
        for key in deletes:
            self.rows.pop(key, None)
        self.rows.update(encoded)
        self._keys = sorted(self.rows)

    def _close(self) -> None:
        pass


def build_block(seq: int, prev: str, ops: Iterable[dict], *, view: int = 0,
                client: str = "client", first_timestamp: int = 1,
                skip: Iterable[int] = (), certificate: Optional[list] = None) -> dict:
    """A valid block (``chain.make_block`` over ``Request`` objects) executing ``ops``
    (``{"op": "put", "key", "value", "expires_at"}`` / ``{"op": "delete", "key"}``),
    with ``certificate`` (default: empty list) attached as the adapter would."""
    batch = tuple(Request(client=client, timestamp=first_timestamp + i, op=dict(op), sig="")
                  for i, op in enumerate(ops))
    block = chain.make_block(seq, view, batch_digest(batch), prev, batch, list(skip))
    block["certificate"] = [] if certificate is None else certificate
    return block


def put(key: str, value: Any, expires_at: Optional[float] = None) -> dict:
    return {"op": "put", "key": key, "value": value, "expires_at": expires_at}


def delete(key: str) -> dict:
    return {"op": "delete", "key": key}
