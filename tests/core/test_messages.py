"""The wire form of every message: round trips, strict parsing of untrusted input, and
the canonical bytes that are signed (messages.py)."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from pbft_tasks.core.messages import (Certificate, NewView, ViewChange, MAX_BATCH, MAX_WIRE_BYTES, Checkpoint, Commit,
                                      MalformedMessage, MESSAGE_TYPES, PrePrepare, Prepare,
                                      Reply, Request, Status, batch_digest, canonical, from_wire,
                                      parse, signing_bytes, to_wire)

from .helpers import fake_digest

D = fake_digest("d")
PUT = {"op": "put", "key": "k", "value": {"nested": [1, "two", None]}, "expires_at": 12.5}
DELETE = {"op": "delete", "key": "k"}
REQ = Request("client-1", 7, PUT, sig="ab" * 32)
BATCH = (REQ, Request("c2", 1, DELETE))

SAMPLES = {
    "Request": REQ,
    "Request-delete": Request("c", 0, DELETE),
    "Request-get": Request("c", 1, {"op": "get", "key": "k"}),
    "PrePrepare": PrePrepare(0, 1, batch_digest(BATCH), BATCH, 0, sig="cd"),
    "PrePrepare-empty": PrePrepare(3, 9, batch_digest(()), (), 3),
    "Prepare": Prepare(0, 5, D, 2, sig="ef"),
    "Commit": Commit(1, 5, D, 3),
    "Reply": Reply(0, 5, "client-1", 1, ({"timestamp": 7, "result": {"seq": 5, "index": 0}},)),
    "Checkpoint": Checkpoint(64, D, 1, sig="00"),
    "ViewChange": ViewChange(1, 64, (Checkpoint(64, D, 0), Checkpoint(64, D, 1), Checkpoint(64, D, 2)),
                             ((PrePrepare(0, 65, batch_digest(BATCH), BATCH, 0, sig="cd"),
                               (Prepare(0, 65, batch_digest(BATCH), 1), Prepare(0, 65, batch_digest(BATCH), 2))),),
                             3, sig="11"),
    "NewView": NewView(1, (ViewChange(1, 0, (), (), 2),), (PrePrepare(1, 1, batch_digest(()), (), 1),), 1),
    "Certificate": Certificate(0, 5, D, "prepare", (Prepare(0, 5, D, 1, sig="aa"), Prepare(0, 5, D, 2)), 0,
                               sig="22"),
    "Certificate-commit": Certificate(0, 5, D, "commit", tuple(Commit(0, 5, D, i) for i in range(3)), 0),
    "Status": Status(2, 70, D, 64, 1, sig="33"),
    "Status-genesis": Status(0, 0, "0" * 64, 0, 3),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name):
    msg = SAMPLES[name]
    wire = to_wire(msg)
    assert wire["type"] == type(msg).__name__
    back = from_wire(json.loads(json.dumps(wire)))
    assert back == msg and back.sig == msg.sig
    assert to_wire(back) == wire
    assert parse(json.dumps(wire)) == msg
    assert parse(json.dumps(wire).encode()) == msg


def test_every_message_type_has_a_sample():
    assert {type(m).__name__ for m in SAMPLES.values()} == set(MESSAGE_TYPES)


def test_sig_takes_no_part_in_equality():
    assert Prepare(0, 1, D, 2, sig="aa") == Prepare(0, 1, D, 2, sig="bb")
    assert Prepare(0, 1, D, 2) != Prepare(0, 1, D, 3)


def test_messages_are_frozen_with_slots():
    for msg in SAMPLES.values():
        name = dataclasses.fields(msg)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, name, 99)
        assert not hasattr(msg, "__dict__")


def wire(name: str) -> dict:
    return copy.deepcopy(to_wire(SAMPLES[name]))


def mutated(name: str, **changes) -> dict:
    w = wire(name)
    w.update(changes)
    return w


BAD = {
    # wrong scalar types
    "bool-as-int view": mutated("Prepare", view=True),
    "bool-as-int seq": mutated("Commit", seq=False),
    "str-as-int seq": mutated("Prepare", seq="5"),
    "float-as-int sender": mutated("Prepare", sender=2.0),
    "str-as-int timestamp": mutated("Request", timestamp="7"),
    "negative seq": mutated("Prepare", seq=-1),
    "zero seq": mutated("Commit", seq=0),
    "zero checkpoint seq": mutated("Checkpoint", seq=0),
    "negative view": mutated("PrePrepare", view=-1),
    "negative sender": mutated("Checkpoint", sender=-3),
    "huge int": mutated("Prepare", seq=2**63),
    "int client": mutated("Request", client=5),
    "empty client": mutated("Request", client=""),
    "oversize client": mutated("Request", client="c" * 129),
    "int sig": mutated("Prepare", sig=5),
    "oversize sig": mutated("Prepare", sig="a" * 257),
    # digests
    "short digest": mutated("Prepare", digest="ab" * 10),
    "uppercase digest": mutated("Prepare", digest=D.upper()),
    "non-hex digest": mutated("Commit", digest="z" * 64),
    "int digest": mutated("Commit", digest=7),
    "non-hex state digest": mutated("Checkpoint", state_digest="g" * 64),
    "non-hex pre-prepare digest": mutated("PrePrepare", digest="x" * 64),
    # fields
    "missing field": {k: v for k, v in wire("Prepare").items() if k != "sender"},
    "missing sig": {k: v for k, v in wire("Commit").items() if k != "sig"},
    "extra field": mutated("Commit", extra=1),
    "missing type": {k: v for k, v in wire("Prepare").items() if k != "type"},
    "unknown type": mutated("Prepare", type="ViewChange"),
    "type not str": mutated("Prepare", type=7),
    # batches
    "batch not list": mutated("PrePrepare", batch={"a": 1}),
    "batch entry not request": mutated("PrePrepare", batch=[to_wire(SAMPLES["Prepare"])]),
    "batch entry not dict": mutated("PrePrepare", batch=["x"]),
    "batch entry without type": mutated(
        "PrePrepare", batch=[{k: v for k, v in to_wire(REQ).items() if k != "type"}]),
    "batch entry bad op": mutated(
        "PrePrepare", batch=[dict(to_wire(REQ), op={"op": "drop", "key": "k"})]),
    "oversize batch": mutated("PrePrepare", batch=[to_wire(REQ)] * (MAX_BATCH + 1)),
    # op shapes
    "op not dict": mutated("Request", op=["put", "k"]),
    "unknown op": mutated("Request", op={"op": "incr", "key": "k"}),
    "put without expires_at": mutated("Request", op={"op": "put", "key": "k", "value": 1}),
    "put extra key": mutated("Request", op=dict(PUT, ttl=3)),
    "delete with value": mutated("Request", op=dict(DELETE, value=1)),
    "get with value": mutated("Request", op={"op": "get", "key": "k", "value": 1}),
    "get without key": mutated("Request", op={"op": "get"}),
    "get empty key": mutated("Request", op={"op": "get", "key": ""}),
    "key not str": mutated("Request", op={"op": "delete", "key": 5}),
    "empty key": mutated("Request", op={"op": "delete", "key": ""}),
    "oversize key": mutated("Request", op={"op": "delete", "key": "k" * 513}),
    "negative expires_at": mutated("Request", op=dict(PUT, expires_at=-1)),
    "str expires_at": mutated("Request", op=dict(PUT, expires_at="soon")),
    "bool expires_at": mutated("Request", op=dict(PUT, expires_at=True)),
    "oversize value": mutated("Request", op=dict(PUT, value="v" * (64 * 1024))),
    # replies
    "results not list": mutated("Reply", results={"timestamp": 1, "result": 2}),
    "result missing field": mutated("Reply", results=[{"timestamp": 1}]),
    "result bool timestamp": mutated("Reply", results=[{"timestamp": True, "result": 1}]),
    "result not dict": mutated("Reply", results=[1]),
    # regressions: these raised TypeError / ValueError instead of MalformedMessage
    "unhashable type": mutated("Prepare", type=["Prepare"]),
    "dict type": mutated("Prepare", type={"a": 1}),
    "nan expires_at": mutated("Request", op=dict(PUT, expires_at=float("nan"))),
    "infinite expires_at": mutated("Request", op=dict(PUT, expires_at=float("inf"))),
    "nan value": mutated("Request", op=dict(PUT, value=[float("nan")])),
    "unhashable op kind": mutated("Request", op={"op": ["put"], "key": "k"}),
    # certificates
    "status head not hex": mutated("Status", head="xyz"),
    "status seq negative": mutated("Status", seq=-1),
    "status stable_seq a bool": mutated("Status", stable_seq=True),
    "unknown phase": mutated("Certificate", phase="pre-prepare"),
    "phase not str": mutated("Certificate", phase=["prepare"]),
    "commit in a prepare certificate": mutated("Certificate", votes=[to_wire(Commit(0, 5, D, 1))]),
    "votes not list": mutated("Certificate", votes={"a": 1}),
    "vote not a message": mutated("Certificate", votes=[1]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_from_wire_rejects(case):
    with pytest.raises(MalformedMessage):
        from_wire(BAD[case])


@pytest.mark.parametrize("obj", [None, 1, "Prepare", [], [to_wire(SAMPLES["Prepare"])], True])
def test_from_wire_rejects_non_dict(obj):
    with pytest.raises(MalformedMessage):
        from_wire(obj)


def test_from_wire_accepts_max_batch():
    batch = tuple(Request("c", ts, DELETE) for ts in range(MAX_BATCH))
    pp = PrePrepare(0, 1, batch_digest(batch), batch, 0)
    assert from_wire(to_wire(pp)) == pp


def test_malformed_message_is_a_value_error():
    assert issubclass(MalformedMessage, ValueError)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", "{'type': 'Prepare'}",
                                 b'{"type": "Prepare", "view": NaN}'])
def test_parse_rejects_non_json(raw):
    with pytest.raises(MalformedMessage):
        parse(raw)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_parse_rejects_non_finite_numbers(constant):
    """Regression: json.loads accepts NaN and Infinity, which canonical() cannot encode,
    so a request carrying one crashed the primary when it hashed the batch."""
    raw = json.dumps(to_wire(SAMPLES["Request"])).replace("12.5", constant)
    assert constant in raw
    with pytest.raises(MalformedMessage):
        parse(raw)


def test_parse_rejects_deep_nesting():
    """Regression: a small but deeply nested body raised RecursionError out of parse."""
    with pytest.raises(MalformedMessage):
        parse("[" * 100_000)


def test_parse_rejects_oversize_before_parsing():
    raw = b" " * (MAX_WIRE_BYTES + 1)
    with pytest.raises(MalformedMessage, match="exceeds"):
        parse(raw)


def test_signing_bytes_exclude_sig():
    a, b = Prepare(0, 1, D, 2, sig="aa"), Prepare(0, 1, D, 2, sig="bb")
    assert signing_bytes(a) == signing_bytes(b)
    assert b'"sig"' not in signing_bytes(a)
    assert canonical(to_wire(a)) != canonical(to_wire(b))  # the wire form does cover it


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_signing_bytes_are_canonical(name):
    msg = SAMPLES[name]
    body = signing_bytes(msg)
    obj = json.loads(body)
    assert "sig" not in obj
    assert body == json.dumps(obj, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
    assert b" " not in body.replace(b'" "', b"")  # compact: no separator whitespace
    # the same content decoded in any key order re-encodes to the same bytes
    reordered = dict(reversed(list(to_wire(msg).items())))
    assert signing_bytes(from_wire(reordered)) == body


def test_canonical_is_sorted_compact_utf8_and_refuses_nan():
    assert canonical({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == \
        '{"a":[1,{"c":"é","d":2}],"b":1}'.encode("utf-8")
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


def test_batch_digest_binds_client_signatures_and_order():
    a, b = Request("c", 1, DELETE, sig="aa"), Request("c", 1, DELETE, sig="bb")
    r2 = Request("c", 2, DELETE)
    assert batch_digest((a,)) != batch_digest((b,))
    assert batch_digest((a, r2)) != batch_digest((r2, a))
    assert len(batch_digest(())) == 64


def test_unpaired_surrogate_in_key_or_client_is_malformed():
    import pytest as _pytest
    from pbft_tasks.core.messages import MalformedMessage as _M, from_wire as _fw
    base = {"type": "Request", "client": "a/1", "timestamp": 1,
            "op": {"op": "delete", "key": "k"}, "sig": ""}
    with _pytest.raises(_M):
        _fw(dict(base, client="a/\ud800"))
    with _pytest.raises(_M):
        _fw(dict(base, op={"op": "delete", "key": "k\udfff"}))


def test_reply_with_nan_result_is_malformed():
    import pytest as _pytest
    from pbft_tasks.core.messages import MalformedMessage as _M, from_wire as _fw
    wire = {"type": "Reply", "view": 0, "seq": 1, "client": "a/1", "sender": 0,
            "results": [{"timestamp": 1, "result": float("nan")}], "sig": ""}
    with _pytest.raises(_M):
        _fw(wire)
