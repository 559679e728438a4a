"""Hostile or broken messages put straight into a node's queue are dropped, counted and
logged; the worker lives on and the mesh loses nothing.

Set up: a running 4-node mesh; a bare kombu producer on the default exchange with routing
key ``node.1`` (no Celery client in the way), publishing Celery protocol-2 task messages
built by ``app.amqp.create_task_message`` or raw bodies.
Step: one bad message at a time.
Check: the worker process is alive and answers ``status``; node 1's ``rejected`` counter
went up by exactly one, for the expected reason and no other; the worker's log names the
reason.  At the end, an ordinary update commits on every node.

Reasons: ``undecodable`` and ``unknown_task``/``unknown_message`` are counted by the
gate in front of the worker's Celery consumer (pbft_tasks/guard.py; a body without a
``task`` header is never decoded); ``malformed`` and ``oversize`` by
``NodeRuntime.handle``; the signature slugs are ``signing.REASONS``.  Per the rules of
pbft_tasks/core/messages.py a batch over MAX_BATCH or a value over MAX_VALUE_BYTES is a
*malformed* message; ``oversize`` is a message over MAX_WIRE_BYTES (4 MiB) of signed bytes,
or a ``pbft.request`` bundle of more than 4096 requests.
"""
from __future__ import annotations

import uuid
from collections import Counter

import pytest
from kombu import Connection, Producer

from pbft_tasks.topology import load_node_identity
from pbft_tasks.core.messages import (MAX_BATCH, MAX_VALUE_BYTES, MAX_WIRE_BYTES, Commit,
                                      PrePrepare, Prepare, batch_digest, to_wire)
from pbft_tasks.signing import REASONS, Signer

from tests.meshkit import assert_values, wait_until

pytestmark = pytest.mark.broker

TARGET = 1
DIGEST = "ab" * 32
FAKE_SIG = "cd" * 64


def _request_wire(client: str, ts: int, value) -> dict:
    """A well-formed Request wire object (its signature is never checked: the cases that
    use it are refused before signatures are)."""
    return {"type": "Request", "client": client, "timestamp": ts,
            "op": {"op": "put", "key": f"bad{ts}", "value": value, "expires_at": None},
            "sig": FAKE_SIG}


def _flip(hexstr: str, i: int = 10) -> str:
    return hexstr[:i] + ("0" if hexstr[i] != "0" else "1") + hexstr[i + 1:]


@pytest.fixture
def mesh(make_mesh):
    return make_mesh(4)


@pytest.fixture
def producer(mesh):
    with Connection(mesh.cfg.broker_url) as conn:
        conn.ensure_connection(max_retries=3)
        yield Producer(conn.channel(), auto_declare=False)  # the default exchange


def _send_task(mesh, producer, name: str, args: list) -> None:
    msg = mesh.app.amqp.create_task_message(str(uuid.uuid4()), name, args, {})
    producer.publish(msg.body, routing_key=f"node.{TARGET}", serializer="json",
                     headers=msg.headers, **msg.properties)


def _node2_signer(mesh) -> Signer:
    return Signer(2, load_node_identity(mesh.cfg, 2))


def _cases(mesh):
    """(case id, reason, send(producer)) for every bad message."""
    signed = _node2_signer(mesh).sign(Prepare(0, 7, DIGEST, 2))
    good_wire = to_wire(signed)
    prepare = dict(good_wire)

    def task(name, *args):
        return lambda p: _send_task(mesh, p, name, list(args))

    def raw(body: bytes, **props):
        return lambda p: p.publish(body, routing_key=f"node.{TARGET}", **props)

    big_value = "x" * 60_000
    n_big = MAX_WIRE_BYTES // len(big_value) + 2
    assert n_big <= MAX_BATCH
    big_batch = [_request_wire("admin/s", i + 1, big_value) for i in range(n_big)]
    too_many = [_request_wire("admin/s", i + 1, i) for i in range(MAX_BATCH + 1)]
    yield "not_json_no_headers", "unknown_message", raw(b"\xff\x00 this is {not json",
                                                       content_type="application/json",
                                                       content_encoding="utf-8")
    headers = mesh.app.amqp.create_task_message(str(uuid.uuid4()), "pbft.prepare", [{}], {}).headers
    yield "not_json", "undecodable", raw(b"\xff\x00 this is {not json", headers=headers,
                                         content_type="application/json",
                                         content_encoding="utf-8")
    yield "json_but_not_a_task", "unknown_message", raw(b'{"hello": "world"}',
                                                        content_type="application/json",
                                                        content_encoding="utf-8")
    yield "seq_as_string", "malformed", task("pbft.prepare", dict(prepare, seq="7"))
    yield "view_as_bool", "malformed", task("pbft.prepare", dict(prepare, view=True))
    yield "sender_as_float", "malformed", task("pbft.prepare", dict(prepare, sender=2.0))
    yield "extra_field", "malformed", task("pbft.prepare", dict(prepare, extra=1))
    yield "not_an_object", "malformed", task("pbft.prepare", [1, 2, 3])
    yield "unknown_node", "unknown_node", task("pbft.prepare", dict(prepare, sender=99))
    yield "negative_node", "malformed", task("pbft.prepare", dict(prepare, sender=-1))
    yield "bad_signature", "bad_signature", task("pbft.prepare",
                                                 dict(prepare, sig=_flip(prepare["sig"])))
    yield "missing_signature", "missing_signature", task("pbft.prepare", dict(prepare, sig=""))
    yield "upper_case_signature", "malformed_signature", task(
        "pbft.prepare", dict(prepare, sig=prepare["sig"].upper()))
    yield "signed_by_other_node", "bad_signature", task("pbft.prepare", dict(prepare, sender=3))
    yield "over_4MiB", "oversize", task("pbft.preprepare", {
        "type": "PrePrepare", "view": 0, "seq": 1, "digest": DIGEST, "batch": big_batch,
        "sender": 0, "sig": FAKE_SIG})
    yield "request_bundle_over_4096", "oversize", task("pbft.request", too_many)
    yield "batch_over_4096", "malformed", task("pbft.preprepare", {
        "type": "PrePrepare", "view": 0, "seq": 1, "digest": DIGEST, "batch": too_many,
        "sender": 0, "sig": FAKE_SIG})
    yield "value_over_64KiB", "malformed", task(
        "pbft.request", _request_wire("admin/s", 1, "y" * (MAX_VALUE_BYTES + 1)))
    yield "unknown_task", "unknown_task", task("pbft.no_such_task", prepare)
    yield "commit_to_prepare_task", "malformed", task(
        "pbft.prepare", to_wire(_node2_signer(mesh).sign(Commit(0, 7, DIGEST, 2))))
    yield "preprepare_from_non_primary", "bad_signature", task("pbft.preprepare", dict(
        to_wire(_node2_signer(mesh).sign(PrePrepare(0, 7, batch_digest(()), (), 2))),
        sender=0))


def _rejected(mesh) -> Counter:
    return Counter(mesh.local.status(TARGET, timeout=30)["rejected"])


def _assert_alive(mesh) -> None:
    proc = mesh.local.procs[TARGET]
    assert proc.poll() is None, f"node {TARGET}'s worker exited with {proc.returncode}; " \
                                f"log:\n{mesh.log_text(TARGET)[-3000:]}"


def test_bad_messages_are_counted_logged_and_survived(mesh, producer):
    case_ids = []
    for case, reason, send in _cases(mesh):
        assert reason in REASONS or reason in ("undecodable", "unknown_task", "unknown_message",
                                               "malformed", "oversize")
        before = _rejected(mesh)
        log_before = len(mesh.log_text(TARGET))
        send(producer)
        expected = before + Counter({reason: 1})
        wait_until(lambda expected=expected: _rejected(mesh) == expected, 60,
                   f"case {case}: node {TARGET}'s rejected counter to become {dict(expected)} "
                   f"(was {dict(before)}); log tail:\n{mesh.log_text(TARGET)[-2000:]}")
        _assert_alive(mesh)
        wait_until(lambda r=reason, at=log_before: r in mesh.log_text(TARGET)[at:], 30,
                   f"case {case}: node {TARGET}'s log to mention {reason!r}")
        case_ids.append(case)
    assert len(case_ids) >= 7

    # Nothing was stepped, nothing broke: an ordinary update still commits everywhere.
    client = mesh.client()
    client.wait(client.submit([client.put_request("after-bad-input", "ok")]), timeout=60,
                every=True)
    assert_values(mesh, {"after-bad-input": "ok"})
    height, _ = mesh.wait_converged(timeout=30)
    assert height == 1, "a bad message must not have produced a block"
    statuses = mesh.local.statuses(timeout=30)
    assert all(not s["rejected"] for i, s in statuses.items() if i != TARGET), statuses


def test_task_with_wrong_arguments_does_not_kill_the_worker(mesh, producer):
    """A task message whose args do not fit the task (none, or two) is counted as
    malformed, logged with the reason, and does not take the worker down."""
    before = mesh.local.status(TARGET, timeout=30)["rejected"].get("malformed", 0)
    for args in ([], [{"type": "Prepare"}, "extra"]):
        _send_task(mesh, producer, "pbft.prepare", args)
    wait_until(lambda: mesh.local.status(TARGET, timeout=30)["rejected"].get("malformed", 0)
               == before + 2, 60, f"node {TARGET} to count both as malformed")
    assert mesh.log_text(TARGET).count("takes one wire object") >= 2
    _assert_alive(mesh)
    # nothing was handled but the peers' idle statuses (no Prepare got through)
    assert set(mesh.local.status(TARGET, timeout=30)["handled"]) <= {"Status"}
    client = mesh.client()
    client.wait(client.submit([client.put_request("after-bad-args", 1)]), timeout=60, every=True)
    assert_values(mesh, {"after-bad-args": 1})
