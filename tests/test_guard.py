"""The gate of a node's queue (pbft_tasks/guard.py).

Set up: kombu messages shaped as a hostile publisher shapes them, and behind the gate
Celery's own task handler of a real worker consumer (``NodeConsumer.create_task_handler``
with the app's strategies), so a message the gate let through would reach exactly the
code that stopped the worker before.
Step: hand each message to the gated handler.
Check: it is acknowledged, counted once under the documented reason, and neither
Celery's handler nor any task ran; a well-formed protocol message still runs.
"""
from __future__ import annotations

import gzip
import json
import uuid
from collections import Counter

import pytest
from kombu.message import Message

from pbft_tasks import guard, tasks  # noqa: F401  (registers the pbft.* tasks)
from pbft_tasks.celery_app import app
from pbft_tasks.guard import Gate, PoisonJournal, guard_channel


def _headers(task="pbft.prepare", **extra):
    h = dict(app.amqp.create_task_message(str(uuid.uuid4()), task, [{}], {}).headers)
    h.update(extra)
    return h


def _body(args=({"type": "Prepare"},), kwargs=None, embed=None) -> bytes:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None} if embed is None else embed
    return json.dumps([list(args), kwargs or {}, embed]).encode()


class Msg(Message):
    acked = 0

    def ack(self, multiple=False):
        self.acked += 1


def msg(body=None, headers=None, content_type="application/json", content_encoding="utf-8",
        redelivered=False):
    return Msg(body=_body() if body is None else body, headers=_headers() if headers is None else headers,
               content_type=content_type, content_encoding=content_encoding,
               delivery_info={"redelivered": redelivered}, delivery_tag=1)


class Recorder:
    def __init__(self):
        self.counts: Counter = Counter()
        self.passed: list = []

    def gate(self, journal=None) -> Gate:
        tasks = {t for t in app.tasks if t.startswith("pbft.")}
        return Gate(tasks, lambda r: self.counts.update([r]), journal)


def _cases():
    """(case id, reason, message): every shape of message the gate refuses."""
    yield "task_header_list", "bad_headers", msg(headers=_headers(task=["pbft.prepare"]))
    yield "task_header_table", "bad_headers", msg(headers=_headers(task={"a": 1}))
    proto1 = {k: v for k, v in _headers().items() if k != "task"}
    yield "protocol1_task_list", "unknown_message", msg(
        body=json.dumps({"task": ["x"], "id": "1", "args": [], "kwargs": {}}).encode(), headers=proto1)
    yield "status_timelimit_string", "bad_headers", msg(
        body=_body(args=()), headers=_headers("pbft.status", timelimit="x"))
    yield "status_timelimit_bad_entry", "bad_headers", msg(
        body=_body(args=()), headers=_headers("pbft.status", timelimit=["x", None]))
    yield "status_body_42", "undecodable", msg(body=b"42", headers=_headers("pbft.status"))
    yield "status_without_id", "bad_headers", msg(
        body=_body(args=()), headers={k: v for k, v in _headers("pbft.status").items() if k != "id"})
    yield "status_eta", "delayed_task", msg(
        body=_body(args=()), headers=_headers("pbft.status", eta="2099-01-01T00:00:00+00:00"))
    yield "prepare_eta", "delayed_task", msg(headers=_headers(eta="2099-01-01T00:00:00+00:00"))
    yield "prepare_countdown", "delayed_task", msg(headers=_headers(countdown=86400))
    yield "prepare_expires", "delayed_task", msg(headers=_headers(expires="2099-01-01T00:00:00"))
    yield "status_bad_expires", "bad_headers", msg(body=_body(args=()),
                                                   headers=_headers("pbft.status", expires="soon"))
    yield "gzip_bomb", "bad_content", msg(body=gzip.compress(b" " * 1_000_000),
                                          headers=_headers(compression="application/x-gzip"))
    yield "chord_unlock", "unknown_task", msg(headers=_headers("celery.chord_unlock"))
    yield "celery_ping", "unknown_task", msg(headers=_headers("celery.ping"))
    yield "not_pbft", "unknown_task", msg(headers=_headers("os.system"))
    yield "pickle", "bad_content", msg(content_type="application/x-python-serialize")
    yield "latin1", "bad_content", msg(content_encoding="latin-1")
    yield "kwargs", "malformed", msg(body=_body(kwargs={"x": 1}))
    yield "callback", "malformed", msg(body=_body(embed={"callbacks": [{"task": "celery.ping"}]}))
    yield "status_with_args", "malformed", msg(body=_body(args=(1,)), headers=_headers("pbft.status"))
    yield "hops_with_args", "malformed", msg(body=_body(args=(1,)), headers=_headers("pbft.hops"))
    yield "body_not_triple", "undecodable", msg(body=b'{"a": 1}')
    yield "not_json", "undecodable", msg(body=b"\xff{")
    yield "retries_string", "bad_headers", msg(headers=_headers(retries="many"))
    yield "ignore_result_string", "bad_headers", msg(headers=_headers(ignore_result="yes"))
    yield "stamps", "bad_headers", msg(headers=_headers(stamped_headers=["x"], stamps={"x": 1}))
    yield "huge", "oversize", msg(body=b"[" + b" " * (guard.MAX_BODY_BYTES + 1) + b"[],{},{}]")


@pytest.mark.parametrize("case,reason,message", list(_cases()), ids=[c[0] for c in _cases()])
def test_a_hostile_message_is_acked_counted_and_dropped(case, reason, message):
    rec = Recorder()
    on_message = rec.gate().wrap(rec.passed.append)
    on_message(message)
    assert rec.passed == [], f"{case} got past the gate"
    assert rec.counts == Counter({reason: 1})
    assert message.acked == 1
    assert reason in guard.GUARD_REASONS


def _as_send_task(name, args=(), **options):
    """A message as ``app.send_task`` builds it (LocalMesh's status, MeshClient's
    requests): create_task_message with send_task's defaults (ignore_result None)."""
    m = app.amqp.create_task_message(str(uuid.uuid4()), name, list(args), {}, **options)
    return msg(body=json.dumps(m.body).encode(), headers=dict(m.headers))


def test_our_own_messages_pass_the_gate():
    rec = Recorder()
    for m in (_as_send_task("pbft.status", expires=3.0, ignore_result=None),
              _as_send_task("pbft.status", ignore_result=None),
              _as_send_task("pbft.request", [[{"type": "Request"}]], ignore_result=True)):
        rec.gate().wrap(rec.passed.append)(m)
        assert rec.passed[-1] is m, (m.headers, rec.counts)
    rec = Recorder()
    on_message = rec.gate().wrap(rec.passed.append)
    ok = [msg(), msg(body=_body(args=()), headers=_headers("pbft.status")),
          msg(body=_body(args=()), headers=_headers("pbft.status", expires="2099-01-01T00:00:00+00:00"))]
    for m in ok:
        on_message(m)
    assert rec.passed == ok and not rec.counts and all(m.acked == 0 for m in ok)


def test_celery_handler_behind_the_gate_never_sees_a_bad_message():
    """Celery's own handler raises (TypeError, KeyError, ValueError) on these, which
    stops the worker's consumer for good: the gate must keep every one from it."""
    from celery.worker.consumer.consumer import Consumer
    consumer = Consumer.__new__(Consumer)  # only what create_task_handler reads
    consumer.app = app
    consumer.strategies = {name: (lambda *a, **kw: None) for name in app.tasks}
    consumer.on_task_message = set()
    consumer.call_soon_ack = lambda *a, **kw: None
    consumer._maximum_prefetch_restored, consumer.restart_count = True, 0
    for hook in ("on_unknown_message", "on_unknown_task", "on_invalid_task", "on_decode_error"):
        setattr(consumer, hook, lambda *a, **kw: None)
    raised = []
    handler = Consumer.create_task_handler(consumer)
    for _, _, m in _cases():
        try:
            handler(m)
        except Exception as exc:
            raised.append(type(exc).__name__)
    assert "TypeError" in raised, f"Celery's handler raised only {raised}"
    rec = Recorder()
    gated = rec.gate().wrap(handler)
    for _, _, m in _cases():
        gated(m)  # raises nothing
    assert sum(rec.counts.values()) == len(list(_cases()))


def test_a_compressed_body_is_never_inflated():
    """guard_channel refuses a compressed body before kombu builds the message (kombu
    decompresses in Message.__init__)."""
    inflated = []

    class Raw:
        def __init__(self):
            self.body = gzip.compress(b" " * 10_000_000)
            self.properties = {"application_headers": _headers(compression="application/x-gzip"),
                               "content_type": "application/json", "content_encoding": "utf-8"}
            self.delivery_info = {}
            self.delivery_tag = 1

    class Channel:
        def message_to_python(self, raw):
            m = Msg(body=raw.body, headers=raw.properties["application_headers"],
                    content_type="application/json", content_encoding="utf-8")
            inflated.append(len(m.body))
            return m

    ch = Channel()
    guard_channel(ch)
    guard_channel(ch)  # idempotent
    m = ch.message_to_python(Raw())
    assert inflated == [2] and m.hdpbf_refused[0] == "bad_content"
    rec = Recorder()
    rec.gate().wrap(rec.passed.append)(m)
    assert rec.counts == Counter({"bad_content": 1}) and not rec.passed


def test_poison_message_is_dropped_after_two_failed_redeliveries(tmp_path):
    """A message that killed the worker on its first delivery and on two redeliveries
    is not run again (and the count survives the worker's restart: it is on disk)."""
    path = str(tmp_path / "poison.json")
    m_first = msg()
    tid = m_first.headers["id"]
    rec = Recorder()
    PoisonJournal(path)  # nothing yet
    for _ in range(2):  # two deliveries that never finish: the worker died each time
        journal = PoisonJournal(path)
        gate = rec.gate(journal)
        assert journal.starting(tid, redelivered=True)
    gate = rec.gate(PoisonJournal(path))
    third = msg(headers=dict(m_first.headers), redelivered=True)
    gate.wrap(rec.passed.append)(third)
    assert rec.counts == Counter({"poison": 1}) and not rec.passed and third.acked == 1
    # a redelivered message that finishes is forgotten
    j = PoisonJournal(path)
    assert j.starting("other", redelivered=True)
    j.finished("other")
    assert PoisonJournal(path).starting("other", redelivered=True)
    # quorum queues count deliveries in a header
    assert not PoisonJournal(None).starting("q", redelivered=True, delivery_count=2)
