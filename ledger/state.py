"""The replicated key/value state machine: how one block changes the state (pure, no I/O).

Owns: ``apply_block`` (the execute step of Castro-Liskov 1999 sec. 4.2 for our put/delete
operations) and ``touched_keys`` (which keys a block reads, so a store can fetch them all
in one query before executing).

Rules of this file:
- Pure and deterministic: the result depends only on the block and on what ``get``
  returns.  No clock, no randomness, no I/O; every replica that applies the same chain
  reaches the same state, which is what lets a checkpoint name the state by its head hash.
- Expiry never changes state.  ``expires_at`` is stored as the client stamped it and
  only the *readers* compare it to their clock.  So a put over an expired record, or a
  delete of one, continues its version like any other record.
- Versions: a put sets ``version = old version + 1`` (1 for a key never written); a
  delete of a live record writes a tombstone with ``version + 1``; versions continue
  after a tombstone, so a (key, version) pair names one write forever.
- Delete of a key that holds no live record (never written, or already a tombstone) is a
  no-op: nothing is written and the result is ``{"key", "version": <current, 0 if never
  written>, "deleted": True}``.  Idempotent deletes then do not grow the state.
- Requests whose index is in ``block["skip"]`` (duplicates, decided by the core) are not
  executed and their result is ``None``.
- A get (a read through consensus) writes nothing; its result is the key's record at
  that point of the chain: ``{"key", "version", "value", "expires_at"}``, or
  ``{"key", "version", "deleted": True}`` for a deleted or never written key (version 0).
  Expiry stays the reader's business: the client compares ``expires_at`` with its clock.
- Several operations on one key in one block see each other, in request order (a local
  overlay in front of ``get``).
- A config op (``{"op": "config", "key": CONFIG_KEY, "change"}``) executes the change
  against the configuration history stored at ``CONFIG_KEY`` (the genesis history when
  the key was never written), with the ``ConfigRules`` the ledger was bound to
  (pbft_tasks/core/config.py): accepted or refused, the history is written back (a
  refusal only bumps its counter) and the result is ``ConfigHistory.execute``'s.  A
  ledger bound to no genesis refuses every change (``config_no_genesis``) and writes
  nothing, the same on every replica of that mesh.
- An operation that is not a well-formed put/delete/get/config is our bug (the core parses requests
  strictly before they are ordered) and raises ``LedgerError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from pbft_tasks.core.config import ConfigHistory, Configuration, Verify, from_dict
from pbft_tasks.core.messages import CONFIG_KEY, SYSTEM_PREFIX

from .format import LedgerError

Record = dict
Getter = Callable[[str], Optional[Record]]


@dataclass(frozen=True)
class ConfigRules:
    """What config ops execute against: the genesis configuration, the boundary's
    checkpoint interval and log window, the admin signature check, and whether changes of
    the validators are accepted (else refused as ``config_unsupported``)."""
    genesis: Configuration
    checkpoint_interval: int
    log_window: int
    verify: Verify
    validator_changes: bool = False

    def new_history(self) -> ConfigHistory:
        return ConfigHistory(self.genesis, self.checkpoint_interval, self.log_window)


def rules_of(genesis_record: dict, verify: Verify) -> ConfigRules:
    """The rules a ledger's ``m/genesis`` record (ledger/base.py) stands for."""
    return ConfigRules(from_dict(genesis_record["config"]), genesis_record["checkpoint_interval"],
                       genesis_record["log_window"], verify,
                       bool(genesis_record.get("validator_changes", False)))


def config_history(record: Optional[Record], rules: ConfigRules) -> ConfigHistory:
    """The history stored in ``record`` (the kv record of CONFIG_KEY), or genesis."""
    if record is None:
        return rules.new_history()
    return ConfigHistory.from_record(record["value"])


def _skipped(block: dict) -> set[int]:
    skip = block.get("skip", [])
    n = len(block.get("requests", []))
    out = set()
    for i in skip:
        if type(i) is not int or not 0 <= i < n:
            raise LedgerError(f"block {block.get('seq')}: skip index {i!r} out of range")
        out.add(i)
    return out


def _op_of(block: dict, i: int, request: Any) -> dict:
    op = request.get("op") if isinstance(request, dict) else None
    if not isinstance(op, dict) or op.get("op") not in ("put", "delete", "get", "config") \
            or type(op.get("key")) is not str:
        raise LedgerError(f"block {block.get('seq')}: request {i} has no valid put/delete/get/config op")
    if op["op"] == "config" and op["key"] != CONFIG_KEY:
        raise LedgerError(f"block {block.get('seq')}: config op at request {i} on key {op['key']!r}")
    if op["op"] in ("put", "delete") and op["key"].startswith(SYSTEM_PREFIX):
        raise LedgerError(f"block {block.get('seq')}: {op['op']} at request {i} on a mesh key")
    if op["op"] == "put" and ("value" not in op or "expires_at" not in op):
        raise LedgerError(f"block {block.get('seq')}: put at request {i} lacks value/expires_at")
    return op


def touched_keys(blocks: Iterable[dict]) -> set[str]:
    """Every key the executed (non-skipped) requests of ``blocks`` read or write."""
    keys: set[str] = set()
    for block in blocks:
        skip = _skipped(block)
        for i, request in enumerate(block.get("requests", [])):
            if i not in skip:
                keys.add(_op_of(block, i, request)["key"])
    return keys


def apply_block(get: Getter, block: dict, rules: Optional[ConfigRules] = None
                ) -> tuple[dict[str, Record], list[Optional[dict]]]:
    """Execute ``block`` against the state seen through ``get`` (key -> record or None).

    Returns ``(writes, results)``: ``writes`` maps each changed key to its new record
    (the last one if a key changed several times); ``results`` has one entry per
    request: ``{"key", "version"}`` for a put, ``{"key", "version", "deleted": True}``
    for a delete, ``read_result`` for a get, ``None`` for a skipped request.  ``get`` is
    never called twice for the same key and the records it returns are never mutated.
    """
    seq = block.get("seq")
    if type(seq) is not int:
        raise LedgerError(f"block has no integer seq: {seq!r}")
    skip = _skipped(block)
    overlay: dict[str, Optional[Record]] = {}
    writes: dict[str, Record] = {}
    results: list[Optional[dict]] = []

    def current(key: str) -> Optional[Record]:
        if key not in overlay:
            overlay[key] = get(key)
        return overlay[key]

    for i, request in enumerate(block.get("requests", [])):
        if i in skip:
            results.append(None)
            continue
        op = _op_of(block, i, request)
        key = op["key"]
        old = current(key)
        old_version = old["version"] if old is not None else 0
        if op["op"] == "get":
            results.append(read_result(key, old))
            continue
        if op["op"] == "config":
            if rules is None:
                results.append({"config": "refused", "reason": "config_no_genesis",
                                "detail": "this ledger is bound to no genesis configuration",
                                "version": 0})
                continue
            history = config_history(old, rules)
            results.append(history.execute(seq, op["change"], rules.verify,
                                           rules.validator_changes))
            new = {"value": history.to_record(), "version": old_version + 1, "block": seq,
                   "expires_at": None}
            overlay[key] = new
            writes[key] = new
            continue
        if op["op"] == "put":
            new = {"value": op["value"], "version": old_version + 1, "block": seq,
                   "expires_at": op["expires_at"]}
            results.append({"key": key, "version": new["version"]})
        elif old is None or old.get("deleted"):
            results.append({"key": key, "version": old_version, "deleted": True})
            continue
        else:
            new = {"deleted": True, "version": old_version + 1, "block": seq,
                   "expires_at": None}
            results.append({"key": key, "version": new["version"], "deleted": True})
        overlay[key] = new
        writes[key] = new
    return writes, results


def read_result(key: str, record: Optional[Record]) -> dict:
    """What a get of ``key`` returns when the key's stored record is ``record``."""
    if record is None or record.get("deleted"):
        return {"key": key, "version": record["version"] if record else 0, "deleted": True}
    return {"key": key, "version": record["version"], "value": record["value"],
            "expires_at": record["expires_at"]}
