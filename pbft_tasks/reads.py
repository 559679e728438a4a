"""Reads through consensus: the adapter puts a get's value into the replies.

Owns: turning the core's placeholder result of a get, ``{"seq", "index", "read": key}``,
into what the ledger's execution returned: ``{"seq", "index", "key", "version",
"value", "expires_at"}`` (or ``"deleted": true`` for a missing or deleted key,
ledger/state.py ``read_result``).  The core cannot do this itself: the key/value state
lives in the ledger, which the pure core never touches.

Rules:
- A get executed in this step is answered with the ledger's result for exactly that
  (seq, index): the same on every correct replica, so a client can take f+1 matching
  replies (Castro-Liskov sec. 4.1).
- A get answered again later (the client retransmitted it) is answered from the key's
  current record only if that record was written before the get's block, so it is the
  value the get saw.  Otherwise that result is left out (and a Reply left empty is not
  sent): the client issues a fresh get.  Never a value from another point of the log.
- Everything else passes through untouched.
"""
from __future__ import annotations

from typing import Any

from ledger.state import read_result

from .core.actions import SendClient
from .core.messages import Reply


def _is_read(result: Any) -> bool:
    return type(result) is dict and "read" in result


def answer_reads(actions: list, blocks: list[dict], results: list, ledger: Any) -> list:
    """``actions`` with every get's placeholder result replaced by its value."""
    replies = [a for a in actions if isinstance(a, SendClient) and isinstance(a.msg, Reply)
               and any(_is_read(r["result"]) for r in a.msg.results)]
    if not replies:
        return actions
    executed = {(b["seq"], i): res for b, rs in zip(blocks, results)
                for i, res in enumerate(rs) if res is not None}
    out = []
    for a in actions:
        if not any(a is r for r in replies):
            out.append(a)
            continue
        answered = []
        for r in a.msg.results:
            res = r["result"]
            if _is_read(res):
                res = _answer(res, executed, ledger)
                if res is None:
                    continue
            answered.append({"timestamp": r["timestamp"], "result": res})
        if answered:
            msg = a.msg
            out.append(SendClient(a.client, Reply(msg.view, msg.seq, msg.client, msg.sender,
                                                  tuple(answered)), a.cause))
    return out


def _answer(placeholder: dict, executed: dict, ledger: Any) -> dict | None:
    seq, index, key = placeholder["seq"], placeholder["index"], placeholder["read"]
    value = executed.get((seq, index))
    if value is None:  # answered again: only if the key has not changed since
        record = ledger.get_record(key)
        if record is not None and record.get("block", 0) >= seq:
            return None
        value = read_result(key, record)
    named = {"request": placeholder["request"]} if "request" in placeholder else {}
    return {"seq": seq, "index": index, **named, **value}
