"""The gate of a node's queue: every message taken off ``node.<id>`` is checked here
before Celery's own machinery touches it.

Owns: what a message on a node queue must look like to reach a task, and the reasons
it is refused.  Anyone with broker credentials can publish to ``node.<id>`` (in
OpenStack every service host has them), so the queue is hostile input.  Celery trusts
its own messages: a ``task`` header that is a list, a ``timelimit`` of ``"x"``, a body
of ``42``, a missing ``id``, a ``compression`` header or an ``eta`` a day ahead each
stopped the worker for good or parked the message until RabbitMQ's consumer timeout
closed the channel.  The gate makes those shapes impossible downstream.

Rules (docs/PROTOCOL.md sec. 7 lists the reasons; tests/test_protocol_doc.py keeps them
equal to ``GUARD_REASONS``):
- Before the body is even wrapped (``guard_channel``): a raw body over
  ``max_body_bytes`` is ``oversize`` and a ``compression`` header is
  ``bad_content`` -- kombu would inflate the body while building the message (130 KB
  became 128 MiB), so neither is decompressed nor decoded.
- ``content_type`` must be ``application/json`` and ``content_encoding`` ``utf-8``
  (``bad_content``).  The headers must be a protocol-2 table: ``task`` a string naming
  one of this app's ``pbft.*`` tasks (anything else, Celery's built-ins
  ``celery.chord_unlock`` and friends included, is ``unknown_task``; no ``task`` header
  at all, protocol 1, is ``unknown_message``), ``id`` a short string, and every other
  header Celery reads of the type Celery expects (``bad_headers``).
- No delay is honoured: a message with an ``eta`` (or a ``countdown``, which Celery
  sends as an ``eta``) is ``delayed_task``; so is ``expires`` on a protocol task.
  The monitoring tasks ``pbft.status``, ``pbft.trace`` and ``pbft.hops`` may carry ``expires``
  (``LocalMesh.statuses`` sets it), as an ISO
  date.  A parked message is never held: it is acknowledged and dropped at once.
- The body decodes to ``[args, kwargs, embed]`` with args a list, kwargs ``{}`` and no
  callbacks, errbacks, chain or chord in embed (``undecodable`` / ``malformed``);
  the monitoring tasks take no arguments at all.
- A message that makes the worker die (our bug, or one we did not foresee) is
  redelivered by RabbitMQ with ``redelivered`` set.  ``PoisonJournal`` counts, per
  message id and on disk, how often a redelivered message was started; one that was
  started on its first delivery and on two redeliveries without ever finishing is
  dropped as ``poison`` on the next.  The journal is written only for redelivered
  messages, so normal traffic pays nothing.  Quorum queues count deliveries themselves
  (``x-delivery-count``); the same limit applies to that header.  Why a journal and not
  the broker's own limit: ``x-delivery-limit`` exists only on quorum queues, node
  queues are classic queues today (and re-declaring a queue with other arguments is
  refused by RabbitMQ), and a dead-letter queue would still need a delivery count to
  decide when to dead-letter; the journal works on either kind of queue.
Every refused message is acknowledged, counted under its reason and logged once.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from typing import Any, Callable

from .core.messages import MAX_VIEW_CHANGE_BYTES, MAX_WIRE_BYTES
from .evidence_log import EvidenceLog

log = logging.getLogger("hdpbf.guard")

# The tasks with a result, for monitoring (pbft_tasks/tasks.py): no arguments, may expire.
MONITORING_TASKS = ("pbft.status", "pbft.trace", "pbft.hops")
GUARD_REASONS = ("oversize", "bad_content", "bad_headers", "unknown_task", "unknown_message",
                 "delayed_task", "undecodable", "malformed", "poison")

# The raw AMQP body of one task message.  The body is [[wire], {}, embed] in kombu's JSON,
# which escapes every non-ASCII character (up to 6 bytes for one byte of canonical JSON),
# so the body bound is a multiple of the signed-bytes bound that NodeRuntime enforces.
MAX_BODY_BYTES = 8 * MAX_WIRE_BYTES
# A VIEW-CHANGE, NEW-VIEW or Blocks message carries whole batches.
LARGE_TASKS = {"pbft.viewchange", "pbft.newview", "pbft.blocks"}
MAX_LARGE_BODY_BYTES = 2 * MAX_VIEW_CHANGE_BYTES
MAX_ID_LEN = 128
POISON_LIMIT = 2  # deliveries that may start without finishing before a third is dropped

_OPTIONAL_STR = ("shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr", "origin")
_EMBED_KEYS = {"callbacks", "errbacks", "chain", "chord"}


class Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in GUARD_REASONS, reason
        super().__init__(detail)
        self.reason = reason


def _number(v: Any) -> bool:
    return type(v) in (int, float) and v == v and v >= 0


def body_limit(task: Any) -> int:
    return MAX_LARGE_BODY_BYTES if task in LARGE_TASKS else MAX_BODY_BYTES


def raw_reason(body: Any, headers: Any) -> tuple[str, str] | None:
    """What may be refused before kombu wraps (and would decompress) the body."""
    if not isinstance(headers, dict):
        return "bad_headers", "the headers are not a table"
    if headers.get("compression") is not None:
        return "bad_content", f"compressed body ({headers.get('compression')!r}): never inflated"
    size = len(body) if isinstance(body, (bytes, bytearray, str)) else 0
    task = headers.get("task")
    limit = body_limit(task if isinstance(task, str) else None)
    if size > limit:
        return "oversize", f"body of {size} bytes, over {limit}"
    return None


def check_headers(headers: Any, tasks: set[str]) -> str:
    """The task name of a protocol-2 message whose headers Celery can use safely;
    raises Refused otherwise."""
    if not isinstance(headers, dict):
        raise Refused("bad_headers", "the headers are not a table")
    if headers.get("compression") is not None:
        raise Refused("bad_content", "compressed body: never inflated")
    if "task" not in headers:
        raise Refused("unknown_message", "no task header (protocol 1 or not a task)")
    task = headers["task"]
    if type(task) is not str:
        raise Refused("bad_headers", f"task header is a {type(task).__name__}")
    if task not in tasks:
        raise Refused("unknown_task", f"task {task[:80]!r} is not a pbft.* task of this node")
    tid = headers.get("id")
    if type(tid) is not str or not 0 < len(tid) <= MAX_ID_LEN:
        raise Refused("bad_headers", "id header missing or not a short string")
    if headers.get("eta") is not None or headers.get("countdown") is not None:
        raise Refused("delayed_task", f"{task} with an eta: delays are not honoured on node queues")
    expires = headers.get("expires")
    if expires is not None:
        if task not in MONITORING_TASKS:
            raise Refused("delayed_task", f"{task} with expires: not honoured on node queues")
        try:
            if type(expires) is not str:
                raise ValueError
            datetime.datetime.fromisoformat(expires)
        except ValueError:
            raise Refused("bad_headers", "expires is not an ISO date") from None
    lang = headers.get("lang", "py")
    if lang != "py":
        raise Refused("bad_headers", "lang header is not 'py'")
    for name in _OPTIONAL_STR:
        v = headers.get(name)
        if v is not None and (type(v) is not str or len(v) > 4096):
            raise Refused("bad_headers", f"{name} header is not a string")
    tl = headers.get("timelimit")
    if tl is not None and (type(tl) not in (list, tuple) or len(tl) != 2
                           or not all(v is None or _number(v) for v in tl)):
        raise Refused("bad_headers", "timelimit is not [soft, hard] seconds")
    for name in ("retries", "group_index", "replaced_task_nesting"):
        v = headers.get(name)
        if v is not None and (type(v) is not int or not 0 <= v < 2**31):
            raise Refused("bad_headers", f"{name} header is not a small integer")
    if headers.get("ignore_result") not in (None, True, False):
        raise Refused("bad_headers", "ignore_result is not a boolean")
    sh, st = headers.get("stamped_headers"), headers.get("stamps")
    if sh is not None or st not in (None, {}):
        raise Refused("bad_headers", "stamps are not used on node queues")
    return task


def check_body(decoded: Any, task: str) -> None:
    """The decoded body is [args, kwargs, embed] fit for ``task``; raises Refused."""
    if type(decoded) not in (list, tuple) or len(decoded) != 3:
        raise Refused("undecodable", "the body is not [args, kwargs, embed]")
    args, kwargs, embed = decoded
    if type(args) not in (list, tuple) or type(kwargs) is not dict:
        raise Refused("undecodable", "the body is not [args, kwargs, embed]")
    if embed is not None and (type(embed) is not dict or set(embed) - _EMBED_KEYS
                              or any(v for v in embed.values())):
        raise Refused("malformed", "callbacks, errbacks, chains and chords are not run here")
    if kwargs:
        raise Refused("malformed", f"{task} takes no keyword arguments")
    if task in MONITORING_TASKS and args:
        raise Refused("malformed", f"{task} takes no arguments")


def ack_refused(message: Any, evidence_log: EvidenceLog, what: str, reason: str,
                detail: str) -> None:
    """Log a refusal (rate-limited per reason) and acknowledge the message, so it is
    dropped, never redelivered."""
    evidence_log.warning((reason,), what + ": %s: %s", reason, detail)
    try:
        message.ack()
    except Exception:  # already acknowledged, or the channel went away
        log.warning("could not acknowledge a refused message", exc_info=True)


class PoisonJournal:
    """How often each *redelivered* message was started, on disk (``path``), so that a
    message that kills the worker is not redelivered forever.  Thread-safe."""

    def __init__(self, path: str | None, limit: int = POISON_LIMIT):
        self.path = path
        self.limit = limit
        self._lock = threading.Lock()
        self._starts: dict[str, int] = {}
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh)
                self._starts = {str(k): int(v) for k, v in data.items()}
            except (OSError, ValueError, TypeError, AttributeError):
                log.warning("poison journal %s unreadable; starting empty", path)

    def _save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self._starts, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def starting(self, task_id: str, redelivered: bool, delivery_count: Any = None) -> bool:
        """Record that a message starts; False if it was started ``limit`` times
        before without finishing (poison: drop it)."""
        if type(delivery_count) is int and delivery_count >= self.limit:
            return False
        if not redelivered:
            return True
        with self._lock:
            n = self._starts.get(task_id, 0)
            if n >= self.limit:
                self._starts.pop(task_id, None)
                self._save()
                return False
            self._starts[task_id] = n + 1
            if len(self._starts) > 4096:  # bounded: forget the oldest
                for k in list(self._starts)[:-4096]:
                    del self._starts[k]
            self._save()
        return True

    def finished(self, task_id: str) -> None:
        if task_id in self._starts:
            with self._lock:
                if self._starts.pop(task_id, None) is not None:
                    self._save()


class Gate:
    """The checks above bound to a consumer: ``wrap(handler)`` returns the message
    handler Celery's consumer calls, which refuses or passes on each message."""

    def __init__(self, tasks: set[str], count: Callable[[str], None],
                 journal: PoisonJournal | None = None):
        self.tasks = set(tasks)
        self.count = count
        self.journal = journal or PoisonJournal(None)
        self.evidence_log = EvidenceLog(log)  # counted always, a log line now and then

    def refuse(self, message: Any, reason: str, detail: str) -> None:
        self.count(reason)
        ack_refused(message, self.evidence_log, "refused a message off the node queue", reason,
                    detail)

    def check(self, message: Any) -> str:
        early = getattr(message, "hdpbf_refused", None)
        if early is not None:
            raise Refused(*early)
        task = check_headers(message.headers, self.tasks)
        if message.content_type != "application/json" or (
                message.content_encoding or "").lower() not in ("utf-8", "utf8"):
            raise Refused("bad_content", f"content type {message.content_type!r} / "
                                         f"encoding {message.content_encoding!r}: JSON only")
        if len(message.body or b"") > body_limit(task):
            raise Refused("oversize", f"body of {len(message.body)} bytes")
        try:
            decoded = message.decode()
        except Exception as exc:  # kombu's JSON: bad bytes, unknown __type__, recursion
            raise Refused("undecodable", f"{type(exc).__name__}: {exc}") from None
        check_body(decoded, task)
        return task

    def wrap(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def on_message(message: Any) -> Any:
            try:
                task = self.check(message)
            except Refused as exc:
                return self.refuse(message, exc.reason, str(exc))
            headers = message.headers
            info = message.delivery_info or {}
            if not self.journal.starting(headers["id"], bool(info.get("redelivered")),
                                         headers.get("x-delivery-count")):
                return self.refuse(message, "poison", f"{task} {headers['id']} was started "
                                   f"{self.journal.limit} times without finishing")
            result = handler(message)
            self.journal.finished(headers["id"])
            return result
        return on_message


def guard_channel(channel: Any, refused: Callable[[Any, str, str], None] | None = None,
                  check: Callable[[Any, Any], tuple[str, str] | None] | None = None) -> None:
    """Make ``channel`` check each raw message before kombu wraps it (and would inflate a
    compressed body): a refused one is wrapped with an empty body and no headers, marked
    ``hdpbf_refused`` for the Gate.  ``check(body, headers)``: the raw check (default
    ``raw_reason``, a node queue's).  Idempotent."""
    check = check or raw_reason
    m2p = getattr(channel, "message_to_python", None)
    if m2p is None or getattr(m2p, "hdpbf_guarded", False):
        return

    def message_to_python(raw: Any) -> Any:
        props = getattr(raw, "properties", None)
        if not isinstance(props, dict):
            return m2p(raw)
        why = check(getattr(raw, "body", b""), props.get("application_headers") or {})
        if why is None:
            return m2p(raw)
        raw.body = b"[]"
        props["application_headers"] = {}
        msg = m2p(raw)
        msg.hdpbf_refused = why
        return msg

    message_to_python.hdpbf_guarded = True
    channel.message_to_python = message_to_python
