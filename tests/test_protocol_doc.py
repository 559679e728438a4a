"""docs/PROTOCOL.md stays true: every marked block in it is checked against the real code.

A marked block is a fenced code block right after an HTML comment naming it, e.g.

    <!-- example: Prepare -->
    ```json
    {...wire object...}
    ```

Markers (``kind: arg``): ``example: <Type>`` (wire JSON), ``signed-bytes: <Type>`` (the
exact signed bytes as UTF-8 text), ``signature: <Type>``, ``batch-bytes: PrePrepare``,
``batch-digest: <Type>``, ``block-header-bytes: <seq>``, ``block: <seq>``,
``public-key``, ``envelope-properties``, ``envelope-headers``, ``envelope-body: <Type>``,
``snippet: <name>`` (Python, executed against kombu's in-memory broker), and the tables
``task-table`` and ``limits``.  All examples are signed with the fixed key
``SigningKey(bytes(range(32)))``.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import uuid
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from kombu import Connection, Queue
from nacl.signing import SigningKey, VerifyKey

from ledger.audit import check_block_contents
from ledger.memory import MemoryLedger
from pbft_tasks.core import chain, messages
from pbft_tasks.core.messages import (PrePrepare, batch_digest, canonical, from_wire, request_digest,
                                      request_wire, signing_bytes, to_wire)
from pbft_tasks.core.quorum import quorum
from pbft_tasks.core.replica import ReplicaConfig
from pbft_tasks.node import TASK_FOR_TYPE, NodeRuntime
from pbft_tasks.signing import REASONS, Signer, Verifier

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PROTOCOL.md"
KEY = SigningKey(bytes(range(32)))
TYPES = ("Request", "PrePrepare", "Prepare", "Commit", "Reply", "Checkpoint", "Certificate", "Status")
N = 4

_BLOCK_RE = re.compile(
    r"<!--\s*([a-z-]+)(?::\s*([^\s>]+))?\s*-->[ \t]*\n```([a-z]*)\n(.*?)\n```", re.S)
_TABLE_RE = re.compile(r"<!--\s*(task-table|limits|reasons)\s*-->[ \t]*\n((?:\|.*\|[ \t]*\n)+)")
KNOWN = {"example", "signed-bytes", "signature", "batch-bytes", "batch-digest",
         "block-header-bytes", "block", "public-key", "envelope-properties",
         "envelope-headers", "envelope-body", "snippet"}


def _doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def _blocks() -> list[tuple[str, str | None, str, str]]:
    return [m.groups() for m in _BLOCK_RE.finditer(_doc_text())]


def blocks(kind: str, arg: str | None = None) -> list[str]:
    return [body for k, a, _lang, body in _blocks() if k == kind and (arg is None or a == arg)]


def one(kind: str, arg: str | None = None) -> str:
    found = blocks(kind, arg)
    assert len(found) == 1, f"expected one <!-- {kind}: {arg} --> block in {DOC.name}, found {len(found)}"
    return found[0]


def example(kind: str) -> dict:
    return json.loads(blocks("example", kind)[0])


def table(name: str) -> list[list[str]]:
    m = [m for m in _TABLE_RE.finditer(_doc_text()) if m.group(1) == name]
    assert len(m) == 1, f"expected one <!-- {name} --> table"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in m[0].group(2).strip().splitlines()]
    return rows[2:]  # drop the header and the |---| line


def code(cell: str) -> str:
    """The text inside the first `backticks` of a table cell (or the cell itself)."""
    m = re.search(r"`([^`]*)`", cell)
    return m.group(1) if m else cell


def fixed_verifier() -> Verifier:
    """The example key stands for every node and for client alice."""
    return Verifier({i: KEY.verify_key for i in range(N)}, {"alice": KEY.verify_key})


# -- the marked blocks themselves ------------------------------------------------------

def test_doc_exists_and_every_marker_is_known():
    found = _blocks()
    assert found, "no marked blocks found"
    unknown = sorted({k for k, *_ in found} - KNOWN)
    assert not unknown, f"unknown markers {unknown}"
    for kind, arg, lang, body in found:
        if lang == "json":
            json.loads(body)  # every marked JSON block is valid JSON
    for t in TYPES:
        assert blocks("example", t), f"no example for {t}"
        one("signed-bytes", t)
        one("signature", t)


def test_public_key_is_the_fixed_keys():
    assert one("public-key") == KEY.verify_key.encode().hex()


# -- (a) parse, (b) signed bytes, (c) signature ------------------------------------------

@pytest.mark.parametrize("kind", TYPES)
def test_examples_parse_and_round_trip(kind):
    for body in blocks("example", kind):
        wire = json.loads(body)
        msg = from_wire(wire)                       # (a) the node's parser accepts it
        assert type(msg).__name__ == kind
        assert to_wire(msg) == wire                 # the doc shows the exact wire form
        assert len(canonical(wire)) <= messages.MAX_WIRE_BYTES


@pytest.mark.parametrize("kind", TYPES)
def test_signed_bytes_are_exactly_what_the_doc_shows(kind):
    wire = example(kind)
    shown = one("signed-bytes", kind).encode("utf-8")
    assert signing_bytes(from_wire(wire)) == shown                              # (b)
    assert canonical({k: v for k, v in wire.items() if k != "sig"}) == shown  # the rule in prose


@pytest.mark.parametrize("kind", TYPES)
def test_signatures_verify_with_the_fixed_key(kind):
    pub = VerifyKey(bytes.fromhex(one("public-key")))
    for body in blocks("example", kind):
        wire = json.loads(body)
        msg = from_wire(wire)
        assert re.fullmatch(r"[0-9a-f]{128}", wire["sig"])
        pub.verify(signing_bytes(msg), bytes.fromhex(wire["sig"]))              # (c)
        # Ed25519 is deterministic: signing again gives the signature shown
        assert KEY.sign(signing_bytes(msg)).signature.hex() == wire["sig"]
        with fixed_verifier() as v:                 # the project's own signer rules
            v.check(msg)
    assert one("signature", kind) == example(kind)["sig"]


VIEW_TYPES = ("ViewChange", "NewView")


@pytest.mark.parametrize("kind", VIEW_TYPES)
def test_view_change_examples_parse_round_trip_and_verify(kind):
    """Sec. 5.7's examples: the exact wire form, every signature (nested ones included,
    each by its own sender) valid, within the view-change size limit."""
    (body,) = blocks("example", kind)
    wire = json.loads(body)
    msg = from_wire(wire)
    assert type(msg).__name__ == kind and to_wire(msg) == wire
    assert len(signing_bytes(msg)) <= messages.MAX_VIEW_CHANGE_BYTES
    assert KEY.sign(signing_bytes(msg)).signature.hex() == wire["sig"]
    with fixed_verifier() as v:
        v.check(msg)


def test_the_new_view_example_is_built_from_the_view_change_example():
    vc, nv = example("ViewChange"), example("NewView")
    assert vc in nv["view_changes"]
    assert nv["sender"] == nv["view"] % N
    assert len({w["sender"] for w in nv["view_changes"]}) == quorum(N)
    pp, cert = from_wire(example("PrePrepare")), vc["prepared"][0]
    assert cert["preprepare"] == example("PrePrepare")
    assert [(o["view"], o["seq"], o["digest"]) for o in nv["preprepares"]] == \
        [(nv["view"], pp.seq, pp.digest)]                # O re-proposes the prepared batch


def test_a_node_accepts_the_view_change_examples():
    """Node 3 takes node 2's ViewChange without evidence; node 0, the silent primary
    back, takes the NewView and moves to view 1 (sec. 4.4)."""
    node3 = NodeRuntime(3, ReplicaConfig(n=N), MemoryLedger(), Signer(3, KEY), fixed_verifier(),
                        _Capture())
    assert node3.handle(example("ViewChange"), "ViewChange") is None
    assert not node3.rejected and node3.handled == {"ViewChange": 1}
    node0 = NodeRuntime(0, ReplicaConfig(n=N), MemoryLedger(), Signer(0, KEY), fixed_verifier(),
                        _Capture())
    assert node0.handle(example("NewView"), "NewView") is None
    assert not node0.rejected and node0.replica.view == 1
    # and refuses it, validly signed, with O emptied: the core's evidence
    bad = dict(example("NewView"), preprepares=[])
    node0b = NodeRuntime(0, ReplicaConfig(n=N), MemoryLedger(), Signer(0, KEY), fixed_verifier(),
                         _Capture())
    forged = to_wire(Signer(1, KEY).sign(from_wire({**bad, "sig": ""})))  # re-signed by node 1
    node0b.handle(forged, "NewView")
    assert node0b.rejected == {"bad_new_view": 1} and node0b.replica.view == 0


def test_signer_of_each_type_is_as_documented():
    identity = {"Request": "alice/5e55104a", "PrePrepare": 0, "Prepare": 2, "Commit": 3,
                "Reply": 1, "Checkpoint": 2, "Certificate": 0}
    for kind, who in identity.items():
        msg = from_wire(example(kind))
        assert Signer(who, KEY).sign(msg).sig == msg.sig


# -- (d) batch digests --------------------------------------------------------------------

def test_batch_digest_and_batch_bytes():
    pp = from_wire(example("PrePrepare"))
    assert isinstance(pp, PrePrepare)
    shown = one("batch-digest", "PrePrepare")
    assert shown == batch_digest(pp.batch) == pp.digest                       # (d)
    batch_bytes = one("batch-bytes", "PrePrepare").encode("utf-8")
    assert batch_bytes == canonical([request_wire(r) for r in pp.batch])
    assert hashlib.sha256(batch_bytes).hexdigest() == shown
    # the Request examples are the batch, in order
    assert [json.loads(b) for b in blocks("example", "Request")] == [request_wire(r) for r in pp.batch]


@pytest.mark.parametrize("kind", ["Prepare", "Commit"])
def test_votes_carry_the_batch_digest(kind):
    pp = from_wire(example("PrePrepare"))
    vote = from_wire(example(kind))
    assert one("batch-digest", kind) == batch_digest(pp.batch) == vote.digest
    assert (vote.view, vote.seq) == (pp.view, pp.seq)


def test_empty_batch_digest_in_prose():
    assert batch_digest(()) in _doc_text()


def test_reply_matches_the_batch():
    pp = from_wire(example("PrePrepare"))
    reply = from_wire(example("Reply"))
    assert reply.seq == pp.seq and reply.view == pp.view
    assert reply.client == pp.batch[0].client
    assert list(reply.results) == [
        {"timestamp": r.timestamp, "result": {"seq": pp.seq, "index": i, "request": request_digest(r)}}
        for i, r in enumerate(pp.batch) if r.client == reply.client]


# -- blocks and checkpoints -------------------------------------------------------------

def test_block_example():
    block = json.loads(one("block", "1"))
    check_block_contents(block)                      # hash and digest, as the ledger checks
    header = chain.block_header(block["seq"], block["view"], block["digest"], block["prev"],
                                block["skip"])
    hashed = {k: header[k] for k in ("seq", "digest", "prev", "skip")}  # not the view
    assert one("block-header-bytes", "1").encode("utf-8") == canonical(hashed)
    assert block["hash"] == chain.block_hash(header)
    assert block["prev"] == chain.GENESIS and block["seq"] == 1
    assert set(block) == {"seq", "view", "digest", "prev", "skip", "hash", "requests", "certificate"}
    pp = from_wire(example("PrePrepare"))
    assert block["requests"] == [request_wire(r) for r in pp.batch]
    assert block["digest"] == pp.digest
    cert = [from_wire(c) for c in block["certificate"]]
    assert len(cert) == quorum(N)
    assert [c.sender for c in cert] == sorted({c.sender for c in cert})
    with fixed_verifier() as v:
        for c in cert:
            assert type(c).__name__ == "Commit"
            assert (c.view, c.seq, c.digest) == (block["view"], block["seq"], block["digest"])
            v.check(c)
    assert to_wire(cert[-1]) == example("Commit") or example("Commit") in block["certificate"]


def test_certificate_example_carries_the_block_examples_commits():
    block = json.loads(one("block", "1"))
    cert = from_wire(example("Certificate"))
    assert cert.phase == "commit" and [to_wire(v) for v in cert.votes] == block["certificate"]
    assert (cert.view, cert.seq, cert.digest) == (block["view"], block["seq"], block["digest"])
    from pbft_tasks.core.collector import check_certificate
    assert check_certificate(cert, N) is None


def test_checkpoint_state_digest_is_the_documented_chain_head():
    block = json.loads(one("block", "1"))
    ck = from_wire(example("Checkpoint"))
    assert ck.seq % ReplicaConfig(n=N).checkpoint_interval == 0
    head = block["hash"]
    for s in range(2, ck.seq + 1):
        head = chain.block_hash(chain.block_header(s, 0, batch_digest(()), head, []))
    assert ck.state_digest == head


# -- tables and reasons ---------------------------------------------------------------------

def test_task_table_matches_the_code():
    rows = table("task-table")
    documented = {r[0]: code(r[3]) for r in rows}
    assert set(documented) == set(TYPES) | {"ViewChange", "NewView"}
    for kind, task in TASK_FOR_TYPE.items():
        assert documented[kind] == task
        assert code(rows[[r[0] for r in rows].index(kind)][2]) == "node.<i>"
    assert "Reply" not in TASK_FOR_TYPE
    reply_row = next(r for r in table("task-table") if r[0] == "Reply")
    assert code(reply_row[2]) == "hdpbf.reply.<client>"
    from pbft_tasks.transport import reply_queue_name
    assert reply_queue_name("alice/5e55104a") == "hdpbf.reply.alice/5e55104a"


def test_broadcast_exchange_is_as_documented():
    from pbft_tasks import transport
    text = _doc_text()
    assert f"`{transport.BROADCAST_EXCHANGE}`" in text and "`from.<sender>`" in text

    class Channel:  # records what declare_mesh asks the broker for
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *a, **kw: self.calls.append((name, a, kw))

    ch = Channel()
    transport.declare_mesh(ch, list(range(N)))
    (kind, args, kw), = [c for c in ch.calls if c[0] == "exchange_declare"]
    assert args[:2] == (transport.BROADCAST_EXCHANGE, "direct") and kw.get("durable") is True
    binds = {(a[0], kw["routing_key"]) for name, a, kw in ch.calls if name == "queue_bind"}
    assert binds == {(f"node.{j}", f"from.{i}") for i in range(N) for j in range(N) if i != j}


def test_limits_table_matches_the_code():
    rows = table("limits")
    documented = {code(r[0]): int(r[1]) for r in rows}
    assert set(documented) == {"MAX_WIRE_BYTES", "MAX_BATCH", "MAX_KEY_LEN", "MAX_CLIENT_LEN",
                               "MAX_VALUE_BYTES", "MAX_VALUE_DEPTH"}
    for name, value in documented.items():
        assert getattr(messages, name) == value, name


def _evidence_reasons() -> set[str]:
    out = set()
    # the replica and every sub-protocol module of the core (a new one counts too)
    trees = [ast.parse(path.read_text()) for path in sorted((ROOT / "pbft_tasks" / "core").glob("*.py"))]
    for node in (n for tree in trees for n in ast.walk(tree)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_evidence" and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)):
            out.add(node.args[1].value)
    return out


def _adapter_reason_literals() -> set[str]:
    """Every reason string literal the adapters count: ``reject("...")``,
    ``count_rejected("...")``, ``refuse(msg, "...")`` and ``Refused("...")``."""
    out = set()
    for path in (ROOT / "pbft_tasks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            pos = {"reject": 0, "count_rejected": 0, "Refused": 0, "refuse": 1}.get(name)
            if pos is not None and len(node.args) > pos and isinstance(node.args[pos], ast.Constant):
                out.add(node.args[pos].value)
    return out


def code_reasons() -> set[str]:
    from pbft_tasks.guard import GUARD_REASONS
    from ledger.state import REFUSALS
    from pbft_tasks.node import RUNTIME_REASONS
    return (set(REASONS) | _evidence_reasons() | set(GUARD_REASONS) | set(RUNTIME_REASONS)
            | set(REFUSALS))


def test_every_rejection_reason_is_documented():
    """The reasons table of sec. 7 and the code name the same reasons, both ways."""
    documented = [code(r[0]) for r in table("reasons")]
    assert len(documented) == len(set(documented)), "a reason listed twice"
    assert len(_evidence_reasons()) >= 10
    reasons = code_reasons()
    assert not sorted(reasons - set(documented)), f"reasons not in {DOC.name}: {sorted(reasons - set(documented))}"
    assert not sorted(set(documented) - reasons), f"documented, not in the code: {sorted(set(documented) - reasons)}"
    stray = _adapter_reason_literals() - reasons
    assert not stray, f"counted by an adapter but in no reasons list: {sorted(stray)}"


# -- the Celery envelope -------------------------------------------------------------------

def test_envelope_is_what_celery_builds():
    from pbft_tasks.celery_app import app
    wire = example("Prepare")
    from pbft_tasks.transport import task_message
    built = task_message(app, TASK_FOR_TYPE["Prepare"], wire)  # what a node publishes
    headers = json.loads(one("envelope-headers"))
    assert set(headers) == set(built.headers)
    assert headers["task"] == "pbft.prepare"
    for name in ("argsrepr", "kwargsrepr", "ignore_result"):
        assert headers[name] == built.headers[name], name
    assert headers["root_id"] == headers["id"]
    body = json.loads(one("envelope-body", "Prepare"))
    assert body == json.loads(json.dumps(list(built.body)))
    assert body[0] == [wire] and body[1] == {}
    props = json.loads(one("envelope-properties"))
    assert props["content_type"] == "application/json"
    assert props["content_encoding"] == "utf-8"
    assert props["correlation_id"] == headers["id"]
    assert {k: props[k] for k in built.properties} == dict(built.properties, correlation_id=headers["id"])


# -- the kombu-only snippets, on kombu's in-memory broker -----------------------------------

BROKER = "memory://"


def _run_snippet(name: str, monkeypatch, **env: str) -> tuple[dict, str]:
    monkeypatch.setenv("HDPBF_BROKER", BROKER)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    src = one("snippet", name)
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"json", "os", "socket", "uuid", "kombu", "nacl"}, \
        f"snippets must need only kombu and PyNaCl, {name} imports {sorted(imported)}"
    scope: dict = {"__name__": f"protocol_doc_{name.replace('-', '_')}"}
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(src, f"PROTOCOL.md:{name}", "exec"), scope)
    return scope, out.getvalue()


class _Capture:
    """A transport that records whatever a node sends (send, broadcast, send_client...)."""

    def __init__(self):
        self.sent: list = []

    def __getattr__(self, name):
        return lambda *args: self.sent.append((name, args))


def test_send_prepare_snippet_produces_a_task_message_a_node_accepts(monkeypatch):
    from celery.worker.request import Request as CeleryRequest

    from pbft_tasks.celery_app import app
    import pbft_tasks.tasks  # noqa: F401  (registers the pbft.* tasks)

    with Connection(BROKER) as conn:
        q = Queue("node.1", exchange="", routing_key="node.1", durable=True)(conn.default_channel)
        q.declare()
        q.purge()
        _run_snippet("send-prepare", monkeypatch)
        message = q.get(no_ack=True)
        assert message is not None, "the snippet published nothing on node.1"
        assert q.get(no_ack=True) is None
    assert message.content_type == "application/json"
    assert message.headers["task"] == "pbft.prepare"
    assert message.delivery_info["routing_key"] == "node.1"
    # Celery's worker reads it as the pbft.prepare task with the doc's Prepare as argument
    req = CeleryRequest(message, app=app, task=app.tasks[message.headers["task"]])
    assert req.name == "pbft.prepare" and req.kwargs == {}
    assert req.args == [example("Prepare")]
    # and a node accepts it: node 1 after the doc's PrePrepare takes node 2's Prepare
    net = _Capture()
    node1 = NodeRuntime(1, ReplicaConfig(n=N), MemoryLedger(), Signer(1, KEY), fixed_verifier(), net)
    assert node1.handle(example("PrePrepare"), "PrePrepare") is None
    assert node1.handle(req.args[0], "Prepare") is None
    assert node1.handled == {"PrePrepare": 1, "Prepare": 1}
    assert not node1.rejected
    # ... and refuses the same Prepare with the signature in upper case
    bad = dict(example("Prepare"), sig=example("Prepare")["sig"].upper())
    assert node1.handle(bad, "Prepare") == "malformed_signature"


def test_read_replies_snippet_accepts_on_f_plus_one(monkeypatch, tmp_path):
    reply = example("Reply")
    client = reply["client"]
    pub = KEY.verify_key.encode().hex()
    mesh = {"version": 1, "nodes": [{"id": i, "public_key": pub} for i in range(N)],
            "clients": [{"name": "alice", "public_key": pub}]}
    (tmp_path / "mesh.json").write_text(json.dumps(mesh))
    from pbft_tasks.core.messages import Reply
    from_node2 = to_wire(Signer(2, KEY).sign(Reply(reply["view"], reply["seq"], client, 2,
                                                   tuple(reply["results"]))))
    forged = dict(from_node2, sender=3)  # node 2's signature claimed by node 3
    rk = f"hdpbf.reply.{client}"
    with Connection(BROKER) as conn:
        q = Queue(rk, exchange="", routing_key=rk)(conn.default_channel)
        q.declare()
        q.purge()
        with conn.Producer() as p:
            for body in (reply, forged):
                p.publish(body, exchange="", routing_key=rk, serializer="json")
        scope, out = _run_snippet("read-replies", monkeypatch, HDPBF_CLIENT=client,
                                  HDPBF_CONFIG=str(tmp_path / "mesh.json"), HDPBF_WAIT="0.2")
        assert scope["accepted"] == {}, "one genuine reply (plus a forgery) is not f+1"
        with conn.Producer() as p:
            for body in (reply, from_node2):
                p.publish(body, exchange="", routing_key=rk, serializer="json")
        scope, out = _run_snippet("read-replies", monkeypatch, HDPBF_CLIENT=client,
                                  HDPBF_CONFIG=str(tmp_path / "mesh.json"), HDPBF_WAIT="0.2")
    assert scope["accepted"] == {r["timestamp"]: r["result"] for r in reply["results"]}
    assert out.count("accepted") == len(reply["results"])
