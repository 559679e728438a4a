"""What a node's ledger file contains: the key layout, the JSON codec and the errors.

Owns: the one table and its key namespaces, the only codec the ledger ever uses, and the
error types shared by the writer (``store``), the in-memory fake (``memory``), the
read-only reader (``reader``) and the chain audit (``audit``).

Rules of this file:
- One SQLite file per node, ONE table (``TABLE``, sqlitedict's layout: ``key TEXT PRIMARY
  KEY, value BLOB``).  Keys are namespaced by prefix so that a single commit is one atomic
  transaction over blocks, key/value state, protocol records and the head:

  ``b/<seq, 12 digits>``  the block dict (``pbft_tasks.core.chain.make_block`` plus the
                          ``"certificate"`` the adapter attaches)
  ``kv/<key>``            {"value", "version", "block", "expires_at"} or a tombstone
                          {"deleted": true, "version", "block", "expires_at": null}
  ``p/<name>``            the replica's persisted protocol records (opaque JSON)
  ``m/head``              {"height", "head"}
  ``m/format``            {"codec": "json", "version": 1}: written once, checked on open
  ``m/genesis``           {"hash", "config", "checkpoint_interval", "log_window"}: the
                          genesis configuration this ledger is bound to (base.py)

- JSON only, never pickle: a pickled value read from a file (or a broker) is remote code
  execution.  ``decode`` refuses anything that is not JSON *text*: sqlitedict's pickle
  codec stores BLOBs, so a pickled file fails loudly instead of being unpickled.
- Our own bugs (a block that does not extend the head, a bad hash) raise ``LedgerError``
  and are never swallowed.
"""
from __future__ import annotations

import json
from typing import Any

from pbft_tasks.core.messages import CONFIG_KEY as _CONFIG_KEY

TABLE = "ledger"

BLOCK_PREFIX = "b/"
KV_PREFIX = "kv/"
PROTOCOL_PREFIX = "p/"
HEAD_KEY = "m/head"
FORMAT_KEY = "m/format"
GENESIS_KEY = "m/genesis"
CONFIG_KEY = _CONFIG_KEY  # the kv key of the configuration history
FORMAT = {"codec": "json", "version": 1}

SEQ_DIGITS = 12
MAX_SEQ = 10**SEQ_DIGITS - 1


class LedgerError(Exception):
    """The ledger is inconsistent or was used wrongly: our own bug, fail loudly."""


class LedgerNotFound(LedgerError):
    """The ledger file (or its table) does not exist yet: the node has not started."""


class LedgerFormatError(LedgerError):
    """The file holds something that is not this JSON ledger (e.g. pickled values)."""


def encode(obj: Any) -> str:
    """The only encoder: compact JSON text, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode(raw: Any) -> Any:
    """The only decoder: JSON text in, Python value out.  Bytes are refused, because
    the only thing that writes BLOBs into a sqlitedict table is its pickle codec."""
    if not isinstance(raw, str):
        raise LedgerFormatError(
            f"stored value is {type(raw).__name__}, not JSON text (a pickled sqlitedict?)")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise LedgerFormatError(f"stored value is not JSON: {exc}") from None
    except RecursionError:   # nesting deeper than the parser's stack: a tampered file
        raise LedgerFormatError("stored value is nested too deep to decode") from None


def identity(key: str) -> str:
    """Key codec: keys are stored as plain text (sqlitedict would pickle them by default)."""
    return key


def block_key(seq: int) -> str:
    if type(seq) is not int or not 0 < seq <= MAX_SEQ:
        raise LedgerError(f"block seq must be an int in 1..{MAX_SEQ}, got {seq!r}")
    return f"{BLOCK_PREFIX}{seq:0{SEQ_DIGITS}d}"


def kv_key(key: str) -> str:
    return KV_PREFIX + key


def protocol_key(name: str) -> str:
    if type(name) is not str or not name:
        raise LedgerError(f"protocol record name must be a non-empty str, got {name!r}")
    return PROTOCOL_PREFIX + name


def prefix_range(prefix: str) -> tuple[str, str]:
    """[lo, hi) bounds of every key that starts with ``prefix`` (prefixes end in '/')."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def is_live(record: dict | None, now: float) -> bool:
    """A kv record counts for reads when present, not deleted and not expired.

    Expiry is inclusive: a record with ``expires_at == now`` is already expired.  Expiry
    only affects reads; state transitions never look at the clock (see ``state``)."""
    if record is None or record.get("deleted"):
        return False
    expires_at = record.get("expires_at")
    return expires_at is None or now < expires_at
