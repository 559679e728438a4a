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
- Every record (a put's record and a delete's tombstone alike) carries its ``writer``:
  the committed client name of the request that wrote it (the ``name`` of a
  ``name/session`` client id, whose key signed it).  Records written before writers were
  kept have none; readers treat such a console record as unbound.
- The result depends on ``writers`` too (mesh.json's clients): every replica and
  follower of a mesh must execute with the same.
- Console records are bound to their writer.  A key under ``rpc/`` or ``console/``
  (``CONSOLE_PREFIXES``: nova's console replies, ``rpc/<topic>/<method>/<uuid>/<type>``,
  and the stand-in compute's ``console/<uuid>/<type>``) may be written only by a client
  that speaks for a compute host (``writers``: client -> hosts; a client missing from
  it speaks for the host of its own name), and a put only with a value whose
  ``compute_host`` is one of that client's hosts.  Anything else is refused: nothing is
  written and the result is ``{"key", "version": <current>, "refused": <reason>}``
  (``REFUSALS``), which the runtime counts as evidence against the client.
  A put replaces whatever the key held, whoever wrote it: after a live migration the
  destination's client writes the instance's new record and the source's is gone.
  A delete by any client that speaks for a host is allowed: a delete can only turn a
  step-1 answer into a step-2 call, never serve anything, and nova's live migration
  deletes the source host's records from the destination host
  (``post_live_migration_at_destination``).  Gets are never refused.
- An operation that is not a well-formed put/delete is our bug (the core parses requests
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
from typing import Any, Callable, Collection, Iterable, Mapping, Optional

from pbft_tasks.core.config import ConfigHistory, Configuration, Verify, from_dict
from pbft_tasks.core.messages import CONFIG_KEY, SYSTEM_PREFIX

from .format import LedgerError

Record = dict
Getter = Callable[[str], Optional[Record]]
Writers = Mapping[str, Collection[str]]

CONSOLE_PREFIXES = ("rpc/", "console/")
# Why a console write is refused (docs/PROTOCOL.md's reasons table).
REFUSALS = ("console_no_host", "console_other_host")


def is_console_key(key: str) -> bool:
    return key.startswith(CONSOLE_PREFIXES)


def hosts_of(writers: Optional[Writers], client: Any) -> Collection[str]:
    """The compute hosts ``client`` speaks for (its own name when ``writers`` does not
    list it)."""
    if type(client) is not str:
        return ()
    if writers is not None and client in writers:
        return writers[client]
    return (client,)


def writer_name(client: Any) -> Any:
    """The mesh.json client name of a request's ``client`` (``name`` or ``name/session``:
    the signature is checked against ``name``'s key, pbft_tasks/signing.py)."""
    return client.partition("/")[0] if type(client) is str else client


def refusal(op: dict, client: Any, writers: Optional[Writers]) -> Optional[str]:
    """Why ``client`` may not carry out ``op`` (a reason of ``REFUSALS``), or None."""
    if op["op"] == "get" or not is_console_key(op["key"]):
        return None
    hosts = hosts_of(writers, client)
    if not hosts:
        return "console_no_host"
    if op["op"] == "delete":
        return None
    value = op["value"]
    host = value.get("compute_host") if type(value) is dict else None
    if type(host) is not str or host not in hosts:
        return "console_other_host"
    return None


def may_serve(record: Any, host: str, writers: Optional[Writers]) -> bool:
    """Whether a console ``record`` may answer a call addressed to compute ``host``: it
    was written by a client that speaks for ``host`` (readers' side of the rule)."""
    if type(record) is not dict:
        return False
    writer = record.get("writer")
    return type(writer) is str and host in hosts_of(writers, writer)


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


def apply_block(get: Getter, block: dict, writers: Optional[Writers] = None,
                rules: Optional[ConfigRules] = None
                ) -> tuple[dict[str, Record], list[Optional[dict]]]:
    """Execute ``block`` against the state seen through ``get`` (key -> record or None);
    ``writers``: client -> compute hosts, for the console rule (see the file's rules);
    ``rules``: the genesis configuration rules config ops execute with.

    Returns ``(writes, results)``: ``writes`` maps each changed key to its new record
    (the last one if a key changed several times); ``results`` has one entry per
    request: ``{"key", "version"}`` for a put, ``{"key", "version", "deleted": True}``
    for a delete, ``read_result`` for a get, ``{"key", "version", "refused"}`` for a
    refused console write, ``None`` for a skipped request.  ``get`` is
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
                   "expires_at": None, "writer": writer_name(request.get("client"))}
            overlay[key] = new
            writes[key] = new
            continue
        client = writer_name(request.get("client"))
        refused = refusal(op, client, writers)
        if refused is not None:
            results.append({"key": key, "version": old_version, "refused": refused})
            continue
        if op["op"] == "put":
            new = {"value": op["value"], "version": old_version + 1, "block": seq,
                   "expires_at": op["expires_at"], "writer": client}
            results.append({"key": key, "version": new["version"]})
        elif old is None or old.get("deleted"):
            results.append({"key": key, "version": old_version, "deleted": True})
            continue
        else:
            new = {"deleted": True, "version": old_version + 1, "block": seq,
                   "expires_at": None, "writer": client}
            results.append({"key": key, "version": new["version"], "deleted": True})
        overlay[key] = new
        writes[key] = new
    return writes, results


def refused_writes(block: dict, results: list[Optional[dict]]) -> list[tuple[Any, str, str]]:
    """(client, key, reason) of every request of ``block`` that ``apply_block`` refused
    (its ``results``): what the runtime counts as evidence against the client."""
    requests = block.get("requests", [])
    return [(writer_name(requests[i].get("client")) if isinstance(requests[i], dict) else None,
             r["key"], r["refused"])
            for i, r in enumerate(results) if isinstance(r, dict) and "refused" in r]


def read_result(key: str, record: Optional[Record]) -> dict:
    """What a get of ``key`` returns when the key's stored record is ``record``."""
    if record is None or record.get("deleted"):
        return {"key": key, "version": record["version"] if record else 0, "deleted": True}
    return {"key": key, "version": record["version"], "value": record["value"],
            "expires_at": record["expires_at"]}
