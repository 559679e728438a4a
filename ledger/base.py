"""The ledger logic every backend shares: appending blocks atomically and reading back.

Owns: ``LedgerBase``, the behaviour of ``LedgerStore`` (SQLite through sqlitedict) and
``MemoryLedger`` (the in-memory fake for tests).  Backends supply five primitives over the
one key space of ``format``: fetch some keys, fetch one key, scan a key range in order,
write a set of puts and deletes as ONE atomic transaction, close.  Everything else lives
here once, so the fake cannot drift from the real store.

Rules of this file:
- ``apply(protocol, blocks)`` is one transaction: persisted protocol records, the
  blocks, the key/value writes they cause and the new head are written together or not
  at all (raiden's ``storage/wal.py``; etcd's ``Storage``).  Everything is computed and
  checked in memory first; a failed check raises ``LedgerError`` before anything is
  written; the in-memory head moves only after the backend's commit returned.
- A block must extend the head (``audit.check_block``): anything else is our own bug,
  so it raises and is never "repaired".
- Reads count expired and deleted records as missing (``format.is_live``); the clock is
  a parameter (``now``), defaulting to ``time.time()``.
- ``writers`` (client -> compute hosts, from mesh.json's clients) is the console rule's
  input (``state.refusal``); every replica and follower of a mesh must use the same.
- Genesis binding: ``bind_genesis(rules)`` writes the genesis configuration under
  ``m/genesis`` the first time; afterwards the ledger keeps the genesis it was bound to,
  whatever mesh.json says now (mesh.json is bootstrap only).  A ledger
  written before genesis binding has no such record and loads as before; it is bound at
  its next ``bind_genesis``.  Config ops execute only on a bound ledger (state.py).
- Only JSON values cross this layer (``format.encode``/``decode``); callers get fresh
  objects, never references into the ledger's own state.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Optional

from pbft_tasks.core import chain

from . import format as fmt
from .audit import check_block
from .format import LedgerError, LedgerFormatError
from pbft_tasks.core.config import from_dict

from .state import ConfigRules, apply_block, config_history, rules_of, touched_keys

ITER_CHUNK = 256


class LedgerBase:
    """A node's ledger: blocks in a hash chain, kv state, protocol records, head."""

    _height: int = 0
    _head: str = chain.GENESIS
    _closed: bool = False
    writers = None  # Optional[state.Writers]: set by the owner before the first apply
    config_rules: Optional[ConfigRules] = None

    # -- backend primitives -----------------------------------------------------------

    def _fetch(self, keys: list[str]) -> dict[str, Any]:
        """Decoded values of those ``keys`` that exist."""
        raise NotImplementedError

    def _fetch_one(self, key: str) -> Any:
        """Decoded value of ``key`` or None."""
        raise NotImplementedError

    def _scan(self, lo: str, hi: str, limit: Optional[int] = None) -> Iterator[tuple[str, Any]]:
        """(key, decoded value) for lo <= key < hi, in key order, at most ``limit``."""
        raise NotImplementedError

    def _write(self, puts: dict[str, Any], deletes: list[str], sync: bool = True) -> None:
        """Apply all puts and deletes in ONE atomic, committed transaction."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # -- opening ------------------------------------------------------------------------

    def _open_ledger(self) -> None:
        """Check the format marker (writing it on a new ledger) and load the head."""
        marker = self._fetch_one(fmt.FORMAT_KEY)
        if marker is None:
            if next(iter(self._scan("", "\U0010ffff", 1)), None) is not None:
                raise LedgerFormatError("table has data but no format marker: not a ledger")
            self._write({fmt.FORMAT_KEY: fmt.FORMAT}, [])
        elif marker != fmt.FORMAT:
            raise LedgerFormatError(f"unsupported ledger format {marker!r}, want {fmt.FORMAT}")
        head = self._fetch_one(fmt.HEAD_KEY)
        if head is not None:
            self._height, self._head = head["height"], head["head"]

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"{type(self).__name__} is closed")

    # -- writing ------------------------------------------------------------------------

    def apply(self, protocol: Optional[dict[str, Any]],
              blocks: list[dict], sync: bool = True) -> list[list[Optional[dict]]]:
        """Persist ``protocol`` records (value ``None`` deletes one) and append
        ``blocks`` in one atomic transaction; return each block's results
        (``state.apply_block``).  Raises ``LedgerError`` and changes nothing if a block
        does not extend the chain or is malformed.  ``sync=False`` lets this one
        transaction skip the fsync (it still survives a crash of the process, not a
        power loss); the node uses it only for records no message it sends depends on."""
        self._check_open()
        puts: dict[str, Any] = {}
        deletes: list[str] = []
        for name, value in (protocol or {}).items():
            key = fmt.protocol_key(name)
            if value is None:
                deletes.append(key)
            else:
                puts[key] = value
        height, head = self._height, self._head
        for block in blocks:
            check_block(block, height, head)
            height, head = block["seq"], block["hash"]

        keys = sorted(touched_keys(blocks))
        stored = self._fetch([fmt.kv_key(k) for k in keys]) if keys else {}
        overlay: dict[str, dict] = {}

        def get(key: str) -> Optional[dict]:
            if key in overlay:
                return overlay[key]
            return stored.get(fmt.kv_key(key))

        results = []
        for block in blocks:
            writes, block_results = apply_block(get, block, self.writers, self.config_rules)
            overlay.update(writes)
            puts[fmt.block_key(block["seq"])] = block
            results.append(block_results)
        for key, record in overlay.items():
            puts[fmt.kv_key(key)] = record
        if blocks:
            puts[fmt.HEAD_KEY] = {"height": height, "head": head}
        if puts or deletes:
            self._write(puts, deletes, sync)
        self._height, self._head = height, head
        return results

    def bind_genesis(self, rules: ConfigRules) -> Optional[str]:
        """Bind this ledger to ``rules.genesis`` (see the rules above).  A ledger already
        bound keeps its own genesis (mesh.json is only bootstrap: it may have been edited
        since, by ``add-reader`` or ``add-follower``); the hash of the genesis it keeps
        is returned when it differs from ``rules.genesis``, else None."""
        self._check_open()
        have = self._fetch_one(fmt.GENESIS_KEY)
        if have is None:
            record = {"hash": rules.genesis.hash, "config": rules.genesis.to_dict(),
                      "checkpoint_interval": rules.checkpoint_interval,
                      "log_window": rules.log_window}
            if rules.validator_changes:  # absent: refused, as ledgers bound before it
                record["validator_changes"] = True
            self._write({fmt.GENESIS_KEY: record}, [])
            self.config_rules = rules
            return None
        stored = from_dict(have["config"])
        if stored.hash != have["hash"]:
            raise LedgerFormatError(f"the genesis record's hash {have['hash'][:16]} is not "
                                    f"that of its configuration: a damaged ledger")
        self.config_rules = rules_of(have, rules.verify)
        return None if stored.hash == rules.genesis.hash else stored.hash

    def genesis_record(self) -> Optional[dict]:
        """What ``bind_genesis`` stored (hash, config, interval, window), or None."""
        self._check_open()
        return self._fetch_one(fmt.GENESIS_KEY)

    def config_history(self):
        """The configuration history as of the head (``core.config.ConfigHistory``), or
        None on a ledger bound to no genesis and holding no change."""
        self._check_open()
        record = self._fetch_one(fmt.kv_key(fmt.CONFIG_KEY))
        if record is None and self.config_rules is None:
            return None
        return config_history(record, self.config_rules)

    # -- reading ------------------------------------------------------------------------

    @property
    def height(self) -> int:
        """Seq of the last appended block (0 before the first)."""
        return self._height

    @property
    def head(self) -> str:
        """Hash of the last appended block (``chain.GENESIS`` before the first)."""
        return self._head

    def protocol_records(self) -> dict[str, Any]:
        """Every persisted protocol record, name -> value (prefix stripped)."""
        self._check_open()
        n = len(fmt.PROTOCOL_PREFIX)
        return {key[n:]: value for key, value in self._scan(*fmt.prefix_range(fmt.PROTOCOL_PREFIX))}

    def block(self, seq: int) -> Optional[dict]:
        """The stored block at ``seq`` (with its certificate), or None."""
        self._check_open()
        if type(seq) is not int or not 0 < seq <= fmt.MAX_SEQ:
            return None
        return self._fetch_one(fmt.block_key(seq))

    def iter_blocks(self, start: int = 1, end: Optional[int] = None) -> Iterator[dict]:
        """Blocks ``start`` .. ``end`` INCLUSIVE (``end`` defaults to the height at the
        time of the call), in order, fetched in chunks."""
        self._check_open()
        end = self._height if end is None else min(end, fmt.MAX_SEQ)
        seq = max(start, 1)
        while seq <= end:
            last = min(seq + ITER_CHUNK - 1, end)
            hi = fmt.block_key(last + 1) if last < fmt.MAX_SEQ else fmt.prefix_range(fmt.BLOCK_PREFIX)[1]
            for _, block in self._scan(fmt.block_key(seq), hi):
                yield block
            seq = last + 1

    def get_record(self, key: str) -> Optional[dict]:
        """The raw kv record of ``key`` (tombstones and expired records included)."""
        self._check_open()
        return self._fetch_one(fmt.kv_key(key))

    def get(self, key: str, now: Optional[float] = None) -> Optional[dict]:
        """The live record {"value", "version", "block", "expires_at"} of ``key``, or
        None if it is missing, deleted or expired at ``now`` (default: time.time())."""
        record = self.get_record(key)
        return record if fmt.is_live(record, time.time() if now is None else now) else None

    def get_value(self, key: str, now: Optional[float] = None, default: Any = None) -> Any:
        """The live value of ``key``, or ``default``."""
        record = self.get(key, now)
        return default if record is None else record["value"]

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
