"""Every hostile message at once, on a running 4-node mesh on real RabbitMQ.

Set up: a 4-node mesh of real Celery workers; a bare kombu producer on the default
exchange (anyone with broker credentials can do this), the keys of node 3 (a faulty
node: what it signs verifies) and of the admin client (a faulty client).
Step: publish every kind of bad message to node 1's queue, and let an honest client
submit puts whose values together are far over the wire limit.
Check: every worker alive and answering ``pbft.status``; node 1 counted every message
under the reason docs/PROTOCOL.md sec. 7 documents for it and nothing else; no fetch
loop (idle, node 1 sends only its statuses); no view change; identical heads on
all nodes; an ordinary put commits in its normal time.
"""
from __future__ import annotations

import gzip
import json
import uuid
from collections import Counter

import pytest
from kombu import Connection, Producer

from pbft_tasks.topology import STATUS_MS, load_client_identity, load_node_identity
from pbft_tasks.core.messages import (Checkpoint, Prepare, Request, ViewChange, to_wire)
from pbft_tasks.node import FETCH_BURST
from pbft_tasks.signing import Signer

from tests.meshkit import wait_until

pytestmark = pytest.mark.broker

TARGET = 1
FAULTY = 3
DIGEST = "ab" * 32
VIEW_FLOOD = 300  # VIEW-CHANGEs for views 1..300 from the faulty node
FETCHES = 200


@pytest.fixture
def mesh(make_mesh):
    return make_mesh(4)


def _headers(mesh, name: str, **extra) -> dict:
    h = dict(mesh.app.amqp.create_task_message(str(uuid.uuid4()), name, [{}], {}).headers)
    h.update(extra)
    return h


def _body(*args, kwargs=None) -> bytes:
    return json.dumps([list(args), kwargs or {}, {"callbacks": None, "errbacks": None,
                                                  "chain": None, "chord": None}]).encode()


def _unacked(mesh, queue: str) -> int:
    """Messages delivered to a consumer and not acknowledged, from rabbitmqctl."""
    import shutil
    import subprocess
    from urllib.parse import unquote, urlparse
    exe = shutil.which("rabbitmqctl")
    assert exe, "rabbitmqctl is needed to see unacknowledged messages"
    vhost = unquote(urlparse(mesh.cfg.broker_url).path[1:]) or "/"
    out = subprocess.run([exe, "list_queues", "-q", "-p", vhost, "name", "messages_unacknowledged"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = dict(line.split() for line in out.splitlines() if line.strip())
    return int(rows[queue])


def attacks(mesh):
    """(reason, publish(producer)) for every kind of bad message."""
    node3 = Signer(FAULTY, load_node_identity(mesh.cfg, FAULTY))
    admin = Signer("admin/hostile", load_client_identity(mesh.cfg, "admin"))

    def raw(body: bytes, headers: dict | None, **props):
        props.setdefault("content_type", "application/json")
        props.setdefault("content_encoding", "utf-8")
        return lambda p: p.publish(body, routing_key=f"node.{TARGET}", headers=headers or {}, **props)

    def task(name: str, *args, kwargs=None, **header):
        return raw(_body(*args, kwargs=kwargs), _headers(mesh, name, **header))

    prepare = to_wire(node3.sign(Prepare(0, 7, DIGEST, FAULTY)))
    day = "2099-01-01T00:00:00+00:00"
    # 1. one message killed a worker for good
    yield "bad_headers", task("pbft.prepare", prepare, task=["pbft.prepare"])
    yield "bad_headers", task("pbft.prepare", prepare, task={"x": 1})
    proto1 = {k: v for k, v in _headers(mesh, "pbft.prepare").items() if k != "task"}
    yield "unknown_message", raw(json.dumps({"task": ["x"], "id": "1", "args": []}).encode(), proto1)
    yield "bad_headers", raw(_body(), _headers(mesh, "pbft.status", timelimit="x"))
    yield "undecodable", raw(b"42", _headers(mesh, "pbft.status"))
    yield "bad_headers", raw(_body(), {k: v for k, v in _headers(mesh, "pbft.status").items() if k != "id"})
    # 2. a delayed task parked in the worker
    yield "delayed_task", raw(_body(), _headers(mesh, "pbft.status", eta=day))
    yield "delayed_task", task("pbft.prepare", prepare, eta=day)
    yield "delayed_task", task("pbft.prepare", prepare, expires=day)
    # 3. a deeply nested, validly signed value
    deep = 1
    for _ in range(944):
        deep = [deep]
    bomb = Request("admin/hostile", 1, {"op": "put", "key": "deep", "value": deep, "expires_at": None})
    yield "malformed", task("pbft.request", dict(to_wire(bomb), sig=admin.sign(bomb).sig))
    # 5. one Prepare with seq 2^62 from a faulty node
    yield "outside_watermarks", task("pbft.prepare", to_wire(node3.sign(Prepare(0, 2**62, DIGEST, FAULTY))))
    # 6. a VIEW-CHANGE flood from one faulty node: the newest per sender is kept (not
    # counted), beyond 64 views ahead they are view_out_of_range
    for v in range(1, VIEW_FLOOD + 1):
        reason = "view_out_of_range" if v > 64 else None
        yield reason, task("pbft.viewchange", to_wire(node3.sign(ViewChange(v, 0, (), (), FAULTY))))
    # 7. a decompression bomb
    yield "bad_content", raw(gzip.compress(b" " * (128 << 20)), _headers(mesh, "pbft.prepare",
                                                                      compression="application/x-gzip"))
    # 8. fetch amplification (node 1 has no block yet: answered with nothing at all, and
    # rate-limited per requester)
    fetch = {"type": "Fetch", "from_seq": 1, "to_seq": 64, "requester": 2}
    for i in range(FETCHES):
        yield None, task("pbft.fetch", fetch)
    # 9. Celery's built-in tasks
    yield "unknown_task", task("celery.chord_unlock", "x")
    yield "unknown_task", task("celery.ping")
    yield "unknown_task", task("celery.accumulate", 1)
    # 10. drops that were not counted
    bad = to_wire(node3.sign(Checkpoint(64, DIGEST, FAULTY)))
    bad["sig"] = ("0" if bad["sig"][0] != "0" else "1") + bad["sig"][1:]
    forged_inner = Checkpoint(64, DIGEST, FAULTY, bad["sig"])
    yield "nested_bad_signature", task("pbft.viewchange", to_wire(node3.sign(
        ViewChange(2, 64, (forged_inner,), (), FAULTY))))
    yield "malformed", task("pbft.prepare", dict(prepare, type=["Prepare"]))
    yield "malformed", task("pbft.prepare", dict(prepare, type={"a": 1}))
    yield "malformed", task("pbft.prepare", prepare, kwargs={"x": 1})
    yield "malformed", task("pbft.blocks", {"type": "Blocks", "sender": 2, "blocks": [
        {"seq": 1, "certificate": 5, "requests": []}]})
    yield "malformed", task("pbft.prepare", None)
    yield "checkpoint_out_of_range", task("pbft.checkpoint", to_wire(node3.sign(Checkpoint(64 * 20, DIGEST, FAULTY))))
    # further shapes of the gate
    yield "bad_content", raw(_body(prepare), _headers(mesh, "pbft.prepare"),
                             content_type="application/x-python-serialize")
    yield "undecodable", raw(b"\xff{", _headers(mesh, "pbft.prepare"))
    yield "malformed", raw(json.dumps([[prepare], {}, {"callbacks": [{"task": "celery.ping"}]}]).encode(),
                           _headers(mesh, "pbft.prepare"))


def test_every_attack_at_once_and_the_mesh_keeps_committing(mesh):
    client = mesh.client()
    client.wait(client.submit([client.put_request("before", 0)]), timeout=60, every=True)

    expected: Counter = Counter()
    with Connection(mesh.cfg.broker_url) as conn:
        conn.ensure_connection(max_retries=3)
        producer = Producer(conn.channel(), auto_declare=False)
        sent = 0
        for reason, publish in attacks(mesh):
            publish(producer)
            sent += 1
            if reason:
                expected[reason] += 1
    assert sent > VIEW_FLOOD + FETCHES
    # an honest client's big values, together far over the 4 MiB wire limit
    big = client.submit([client.put_request(f"big{i}", "v" * 60_000) for i in range(72)])

    def counted():
        c = Counter(mesh.local.status(TARGET, timeout=30)["rejected"])
        # node 1 holds block 1, so the Fetches are answered up to the rate limit: 10 at
        # once, then 10 a second for as long as it takes the worker to get through them
        limited = c.pop("fetch_rate_limited", 0)
        return c, limited

    def all_counted():
        c, limited = counted()
        return c == expected and limited >= FETCHES - FETCH_BURST - 60

    wait_until(all_counted, 180,
               lambda: f"node {TARGET} to count exactly {dict(expected)} and most of "
                       f"{FETCHES} fetches as fetch_rate_limited; it counted "
                       f"{counted()}; log tail:\n{mesh.log_text(TARGET)[-3000:]}")
    mesh.wait_replies(client, big, timeout=180, every=True)

    from tests.test_protocol_doc import code_reasons
    assert set(expected) | {"fetch_rate_limited"} <= code_reasons()
    for i, proc in mesh.local.procs.items():
        assert proc.poll() is None, f"node {i}'s worker died:\n{mesh.log_text(i)[-3000:]}"
    statuses = mesh.local.statuses(timeout=30)
    assert {s["view"] for s in statuses.values()} == {0}, "the flood moved a view"
    for i, s in statuses.items():
        if i != TARGET:
            assert not s["rejected"], f"node {i} counted {s['rejected']}"
    # no fetch loop: idle, node 1 sends only its STATUS, n-1 messages a second (the idle
    # cost of docs/PROTOCOL.md sec. 5.11), whatever the time between the two looks
    mesh.wait_quiet(timeout=60)
    before = mesh.local.status(TARGET, timeout=30)
    mesh.wait_quiet(timeout=60)
    after = mesh.local.status(TARGET, timeout=30)
    periods = (after["time"] - before["time"]) / (STATUS_MS / 1000)
    allowed = (mesh.n - 1) * (periods + 2) + 10
    assert after["sent"] - before["sent"] < allowed, f"node 1 keeps sending (more than {allowed:.0f})"

    # no delayed message is parked unacknowledged in node 1's worker (holding one until
    # RabbitMQ's consumer timeout closes the channel would stop the worker)
    wait_until(lambda: _unacked(mesh, f"node.{TARGET}") == 0, 60,
               lambda: f"node.{TARGET} to have no unacknowledged messages "
                       f"(now {_unacked(mesh, f'node.{TARGET}')})")

    # and commits after it, every replica answering (how fast is the benchmarks' business)
    client.wait(client.submit([client.put_request("after", 1)]), timeout=60, every=True)
    mesh.wait_converged(timeout=60, at_least=3)
