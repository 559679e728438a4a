"""The gate of a follower's queue: every message on ``follower.<name>`` is checked here
before anything decodes or inflates it (the validators' gate, pbft_tasks/guard.py, for
the follower's three message types).

Owns: what a message on a follower queue must look like to reach ``FollowerNode``, and
the reasons it is refused.  Anyone with broker credentials can publish to a follower's
queue; before this gate one undecodable body (invalid UTF-8, an unknown kombu
``__type__``, text/plain, JSON nested 200,000 deep) made the follower reconnect and get
it again forever, and a compressed body was inflated on every redelivery.

Rules (the reasons are guard.py's, listed in docs/PROTOCOL.md sec. 7):
- Before kombu wraps the raw message (and would inflate it): a ``compression`` header is
  ``bad_content``; a raw body over the bound is ``oversize``.  Bounds: a ``Blocks``
  answer (a body that starts as validators write one, ``{"type": "Blocks"``) at most
  ``MAX_BLOCKS_BODY_BYTES`` (a validator's answer is at most ``node.FETCH_MAX_BYTES``
  of blocks plus the one block that crossed it); anything else at most
  ``MAX_PUSH_BODY_BYTES`` (one block: the bound a validator's gate puts on a task
  carrying one wire object).
- ``content_type`` ``application/json`` and ``content_encoding`` ``utf-8`` only
  (``bad_content``); a body kombu cannot decode is ``undecodable``.
- Shape (``malformed``): a JSON object whose ``type`` is ``Block`` (``sender``,
  ``executed_at``, ``block``), ``Blocks`` (``sender``, at most ``node.FETCH_MAX``
  ``blocks``) or ``Status`` (nothing else); no other keys.
- Poison: a message the follower started on its first delivery and on
  ``guard.POISON_LIMIT`` redeliveries without finishing is dropped on the next
  (``guard.PoisonJournal`` on disk, keyed by the body's SHA-256: follower messages carry
  no task id).  Quorum queues' ``x-delivery-count`` counts too.
Every refused message is acknowledged, counted under its reason (the follower's
``rejected``) and logged, rate-limited per reason.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable

from .evidence_log import EvidenceLog
from .guard import MAX_BODY_BYTES, PoisonJournal, Refused, ack_refused
from .node import FETCH_MAX, FETCH_MAX_BYTES

log = logging.getLogger("hdpbf.follower")

MAX_PUSH_BODY_BYTES = MAX_BODY_BYTES
MAX_BLOCKS_BODY_BYTES = FETCH_MAX_BYTES + MAX_PUSH_BODY_BYTES
BLOCKS_PREFIX = b'{"type": "Blocks"'
SHAPES = {"Block": {"type", "sender", "executed_at", "block"},
          "Blocks": {"type", "sender", "blocks"},
          "Status": {"type"}}


def raw_reason(body: Any, headers: Any) -> tuple[str, str] | None:
    """What is refused before kombu wraps (and would inflate) a raw follower message."""
    if not isinstance(headers, dict):
        return "bad_content", "the headers are not a table"
    if headers.get("compression") is not None:
        return "bad_content", f"compressed body ({str(headers.get('compression'))[:40]!r}): " \
                              f"never inflated"
    if isinstance(body, str):
        body = body.encode("utf-8", "replace")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        return None
    size = len(body)
    blocks = bytes(body[:len(BLOCKS_PREFIX)]) == BLOCKS_PREFIX
    limit = MAX_BLOCKS_BODY_BYTES if blocks else MAX_PUSH_BODY_BYTES
    if size > limit:
        return "oversize", f"body of {size} bytes, over {limit}"
    return None


def check_shape(body: Any) -> dict:
    """``body`` if it is a follower message of a known shape; raises Refused."""
    if type(body) is not dict:
        raise Refused("malformed", "not a JSON object")
    kind = body.get("type")
    keys = SHAPES.get(kind) if type(kind) is str else None
    if keys is None:
        raise Refused("malformed", f"type {str(kind)[:40]!r} is not Block, Blocks or Status")
    extra = set(body) - keys
    if extra:
        raise Refused("malformed", f"{kind} with unknown keys {sorted(map(str, extra))[:5]}")
    if kind == "Blocks":
        blocks = body.get("blocks")
        if type(blocks) is not list or len(blocks) > FETCH_MAX:
            raise Refused("malformed", f"Blocks needs a list of at most {FETCH_MAX} blocks")
    elif kind == "Block" and type(body.get("block")) is not dict:
        raise Refused("malformed", "Block without a block object")
    return body


def _body_hash(body: Any) -> str:
    """The poison journal's key: a hash of the raw body, which kombu hands over as bytes
    or, for a text content type it accepted, already as str."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else (body or b"")
    return hashlib.sha256(raw).hexdigest()


class FollowerGate:
    """``wrap(handler)`` returns kombu's ``on_message`` for the follower's queue: checks
    each raw message, refuses (ack, count, log) or calls ``handler(body, message)``."""

    def __init__(self, count: Callable[[str], None], journal: PoisonJournal | None = None):
        self.count = count
        self.journal = journal or PoisonJournal(None)
        self.evidence_log = EvidenceLog(log)
        self.refused = 0

    def refuse(self, message: Any, reason: str, detail: str) -> None:
        self.refused += 1
        self.count(reason)
        ack_refused(message, self.evidence_log, "follower refused a message off its queue",
                    reason, detail)

    def check(self, message: Any) -> dict:
        early = getattr(message, "hdpbf_refused", None)
        if early is not None:
            raise Refused(*early)
        why = raw_reason(message.body or b"", message.headers or {})
        if why is not None:
            raise Refused(*why)
        if message.content_type != "application/json" or (
                message.content_encoding or "").lower() not in ("utf-8", "utf8"):
            raise Refused("bad_content", f"content type {str(message.content_type)[:60]!r} / "
                                         f"encoding {str(message.content_encoding)[:60]!r}: "
                                         f"JSON only")
        try:
            body = message.decode()
        except Exception as exc:  # kombu's JSON: bad bytes, unknown __type__, recursion
            raise Refused("undecodable", f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return check_shape(body)

    def wrap(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
        def on_message(message: Any) -> Any:
            try:
                body = self.check(message)
            except Refused as exc:
                return self.refuse(message, exc.reason, str(exc))
            info = message.delivery_info or {}
            redelivered = bool(info.get("redelivered"))
            headers = message.headers or {}
            key = _body_hash(message.body) if redelivered else ""
            if not self.journal.starting(key, redelivered, headers.get("x-delivery-count")):
                return self.refuse(message, "poison", f"{body['type']} started "
                                   f"{self.journal.limit + 1} times without finishing")
            result = handler(body, message)
            if redelivered:
                self.journal.finished(key)
            return result
        return on_message


__all__ = ["FollowerGate", "raw_reason", "check_shape", "MAX_PUSH_BODY_BYTES",
           "MAX_BLOCKS_BODY_BYTES"]
