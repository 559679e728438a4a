"""PBFT protocol messages and their one canonical encoding.

Owns: the message types of the normal case and of checkpoints (Castro and Liskov,
"Practical Byzantine Fault Tolerance", OSDI 1999, sec. 4.2-4.3), of the view change
(sec. 4.4), the collector's Certificate (collector.py) and the Status of the status
exchange (status.py), their JSON wire form,
strict parsing of untrusted input, and the canonical bytes that are hashed and signed.

Rules of this file:
- Every message is a frozen dataclass with ``__slots__``.  Treat the ``op`` and
  ``result`` mappings inside messages as read-only.
- The wire form of a message is a flat JSON object: its fields plus ``"type"`` and
  ``"sig"``.  The bytes a sender signs are the *canonical encoding* of that object
  without ``"sig"``: JSON with sorted keys, no whitespace, UTF-8, no NaN/Infinity
  (``canonical``).  docs/PROTOCOL.md repeats this for other implementations.
- ``from_wire`` never trusts its input: unknown type, a missing or extra field, a
  wrong type (a bool is not an int), an oversize string or batch all raise
  ``MalformedMessage`` with a reason.  Signatures are not checked here (that needs keys,
  and keys live in the adapter); the core only hashes.
- ``sig`` never takes part in equality, so the core compares messages by content.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Union

# Bounds on untrusted input.  A message whose canonical encoding exceeds MAX_WIRE_BYTES
# is refused as "oversize" after decoding; the broker's own frame limit bounds the raw
# body before that (RabbitMQ: max_message_size, 128 MiB by default).
MAX_WIRE_BYTES = 4 * 1024 * 1024
MAX_BATCH = 4096
MAX_KEY_LEN = 512
MAX_CLIENT_LEN = 128
MAX_VALUE_BYTES = 64 * 1024
# A primary cuts a batch at MAX_BATCH requests or at this many bytes of requests
# (canonical wire form), whichever comes first: well below MAX_WIRE_BYTES, so a
# PRE-PREPARE is never refused as oversize by the backups.
MAX_BATCH_BYTES = 1024 * 1024
# Arrays and objects nested in a put's value.  Python's JSON encoder recurses once per
# level: a value nested ~950 deep was accepted, committed, and then broke every
# VIEW-CHANGE carrying it (RecursionError), so the view change never completed.
MAX_VALUE_DEPTH = 32
# Keys under SYSTEM_PREFIX belong to the mesh, not to clients: a put or delete there is
# malformed.  CONFIG_KEY holds the configuration history (core/config.py); the only op
# that writes it is {"op": "config", "key": CONFIG_KEY, "change": <signed change>}.
SYSTEM_PREFIX = "_hdpbf/"
CONFIG_KEY = SYSTEM_PREFIX + "config"


class MalformedMessage(ValueError):
    """Input from a peer that is not a well-formed protocol message."""


def canonical(obj: Any) -> bytes:
    """The one canonical encoding: sorted keys, compact separators, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def sha256_hex(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def _sig_field() -> Any:
    return field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Request:
    """<REQUEST, o, t, c>: client ``client`` asks for operation ``op`` at timestamp
    ``timestamp`` (a per-client number that grows; (client, timestamp) names it).

    ``op`` is one of
      {"op": "put", "key": str, "value": <JSON>, "expires_at": float | null}
      {"op": "delete", "key": str}
      {"op": "get", "key": str}
    ``expires_at`` is absolute Unix time stamped by the client, so every replica
    applies the same value.  A get changes nothing; it is ordered like any request so
    that its result (the key's record at that point of the log) is the same on every
    correct replica and a client can trust f+1 matching replies (a read through
    consensus, as in Castro-Liskov sec. 4.1, not the sec. 5.1 read-only optimisation).
    """
    client: str
    timestamp: int
    op: dict
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class PrePrepare:
    """<PRE-PREPARE, v, n, d>_p with the batch it orders; d = batch_digest(batch)."""
    view: int
    seq: int
    digest: str
    batch: tuple
    sender: int
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class Prepare:
    """<PREPARE, v, n, d, i>_i"""
    view: int
    seq: int
    digest: str
    sender: int
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class Commit:
    """<COMMIT, v, n, d, i>_i"""
    view: int
    seq: int
    digest: str
    sender: int
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class Reply:
    """<REPLY, v, t, c, i, r>_i, batched: one reply covers all requests of client
    ``client`` that the block at ``seq`` executed; ``results`` is a tuple of
    {"timestamp": t, "result": r}, and every result names the request it answers
    (``r["request"]``, its ``request_digest``), so a client accepts only replies to the
    request it sent.  A client accepts a result once f+1 distinct replicas sent the
    same one."""
    view: int
    seq: int
    client: str
    sender: int
    results: tuple
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """<CHECKPOINT, n, d, i>_i: i's state digest after executing seq n (sec. 4.3)."""
    seq: int
    state_digest: str
    sender: int
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class ViewChange:
    """<VIEW-CHANGE, v+1, n, C, P, i>_i (sec. 4.4): i moves to ``new_view``.  ``C`` is
    ``checkpoints``, the 2f+1 signed CHECKPOINTs proving the stable checkpoint
    ``stable_seq`` (empty when it is 0); ``P`` is ``prepared``: for every seq above it
    that i prepared, the signed pre-prepare and 2f matching signed prepares, as pairs
    (PrePrepare, (Prepare, ...))."""
    new_view: int
    stable_seq: int
    checkpoints: tuple
    prepared: tuple
    sender: int
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class NewView:
    """<NEW-VIEW, v+1, V, O>_p: the new primary's proof (2f+1 VIEW-CHANGEs, ``V``) and
    the pre-prepares it re-proposes in the new view (``O``), null batches in gaps."""
    view: int
    view_changes: tuple
    preprepares: tuple
    sender: int
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class Certificate:
    """<CERTIFICATE, v, n, d, phase, votes>_c (collector vote routing, core/collector.py):
    the collector ``sender`` (the primary of ``view``) forwards the signed votes it
    collected for (view, seq, digest): ``phase`` "prepare" carries 2f Prepares from
    backups, "commit" 2f+1 Commits.  Each vote keeps its own signature; a receiver
    checks every one of them and counts the votes as if they had come to it directly."""
    view: int
    seq: int
    digest: str
    phase: str
    votes: tuple
    sender: int
    sig: str = _sig_field()


@dataclass(frozen=True, slots=True)
class Status:
    """<STATUS, v, n, d, h, i>_i (core/status.py): replica i is in view ``view``, has
    executed up to ``seq`` with chain head ``head`` there, and its stable checkpoint is
    ``stable_seq``.  Sent every status period to every peer, and to a peer that is
    behind; a claim, never a proof: f+1 of them only set a state-transfer target, and
    the blocks fetched carry their own 2f+1 commits."""
    view: int
    seq: int
    head: str
    stable_seq: int
    sender: int
    sig: str = _sig_field()


CERTIFICATE_PHASES = {"prepare": Prepare, "commit": Commit}

Message = Union[Request, PrePrepare, Prepare, Commit, Reply, Checkpoint, ViewChange, NewView,
                Certificate, Status]
MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (Request, PrePrepare, Prepare, Commit, Reply, Checkpoint,
                                  ViewChange, NewView, Certificate, Status)
}
# A view change carries whole pre-prepares (batches included), so it may be larger than
# a normal-case message.
MAX_VIEW_CHANGE_BYTES = 64 * 1024 * 1024
MAX_PROOFS = 4096


def request_wire(req: Request) -> dict:
    return {"type": "Request", "client": req.client, "timestamp": req.timestamp,
            "op": req.op, "sig": req.sig}


def to_wire(msg: Message) -> dict:
    """The JSON object sent on the wire (``sig`` included)."""
    if isinstance(msg, Request):
        return request_wire(msg)
    out: dict[str, Any] = {"type": type(msg).__name__}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if f.name == "batch":
            value = [request_wire(r) for r in value]
        elif f.name == "results":
            value = list(value)
        elif f.name in ("checkpoints", "view_changes", "preprepares", "votes"):
            value = [to_wire(m) for m in value]
        elif f.name == "prepared":
            value = [{"preprepare": to_wire(pp), "prepares": [to_wire(p) for p in ps]}
                     for pp, ps in value]
        out[f.name] = value
    return out


def signing_bytes(msg: Message) -> bytes:
    """Exactly the bytes the sender signs: canonical(wire without "sig")."""
    wire = to_wire(msg)
    del wire["sig"]
    return canonical(wire)


def request_bytes(req: Request) -> int:
    """Bytes of a request's canonical wire form (what it adds to a batch)."""
    return len(canonical(request_wire(req)))


def request_digest(req: Request) -> str:
    """The digest that names a request in its replies: SHA-256 of its signed bytes (the
    canonical wire form without ``sig``)."""
    return hashlib.sha256(signing_bytes(req)).hexdigest()


def batch_digest(batch: tuple) -> str:
    """d in the pre-prepare: SHA-256 over the canonical list of the requests' wire
    forms, client signatures included, so a certificate binds what clients signed."""
    return sha256_hex([request_wire(r) for r in batch])


# -- strict parsing ---------------------------------------------------------------

def _int(d: dict, name: str, lo: int = 0) -> int:
    v = d[name]
    if type(v) is not int or v < lo or v > 2**62:
        raise MalformedMessage(f"field {name!r} must be an integer >= {lo}")
    return v


def _str(d: dict, name: str, max_len: int, allow_empty: bool = False) -> str:
    v = d[name]
    if type(v) is not str or len(v) > max_len or (not v and not allow_empty):
        raise MalformedMessage(f"field {name!r} must be a non-empty string of at most {max_len} chars")
    try:
        v.encode("utf-8")  # an unpaired surrogate has no canonical encoding
    except UnicodeEncodeError:
        raise MalformedMessage(f"field {name!r} is not valid Unicode") from None
    return v


def _hex(d: dict, name: str, length: int) -> str:
    v = d[name]
    if type(v) is not str or len(v) != length or any(c not in "0123456789abcdef" for c in v):
        raise MalformedMessage(f"field {name!r} must be {length} lowercase hex chars")
    return v


def _sig(d: dict) -> str:
    v = d["sig"]
    if type(v) is not str or len(v) > 256:
        raise MalformedMessage("field 'sig' must be a hex string")
    return v


def _op(v: Any) -> dict:
    if type(v) is not dict:
        raise MalformedMessage("field 'op' must be an object")
    kind = v.get("op")
    if kind == "put":
        if set(v) != {"op", "key", "value", "expires_at"}:
            raise MalformedMessage("put op needs exactly op, key, value, expires_at")
        exp = v["expires_at"]
        # "not 0 <= exp < inf" also refuses NaN, which canonical() cannot encode
        if exp is not None and (type(exp) not in (int, float) or not 0 <= exp < float("inf")):
            raise MalformedMessage("expires_at must be null or a finite non-negative number")
        if json_depth(v["value"]) > MAX_VALUE_DEPTH:
            raise MalformedMessage(f"value nested deeper than {MAX_VALUE_DEPTH} levels")
        try:
            size = len(canonical(v["value"]))
        except (ValueError, TypeError, RecursionError):
            raise MalformedMessage("value is not canonical JSON (NaN, Infinity?)") from None
        if size > MAX_VALUE_BYTES:
            raise MalformedMessage(f"value larger than {MAX_VALUE_BYTES} bytes")
    elif kind in ("delete", "get"):
        if set(v) != {"op", "key"}:
            raise MalformedMessage(f"{kind} op needs exactly op, key")
    elif kind == "config":
        if set(v) != {"op", "key", "change"} or v["key"] != CONFIG_KEY:
            raise MalformedMessage(f"config op needs exactly op, key ({CONFIG_KEY!r}), change")
        # what the change says is checked when it executes (core/config.py: a bad one is
        # a counted no-op, the same on every replica); here only its size and shape
        if type(v["change"]) is not dict or json_depth(v["change"]) > MAX_VALUE_DEPTH:
            raise MalformedMessage("config change must be an object")
        try:
            size = len(canonical(v["change"]))
        except (ValueError, TypeError, RecursionError):
            raise MalformedMessage("config change is not canonical JSON") from None
        if size > MAX_VALUE_BYTES:
            raise MalformedMessage(f"config change larger than {MAX_VALUE_BYTES} bytes")
    else:
        raise MalformedMessage(f"unknown op {kind!r}")
    _str(v, "key", MAX_KEY_LEN)
    if kind in ("put", "delete") and v["key"].startswith(SYSTEM_PREFIX):
        raise MalformedMessage(f"keys under {SYSTEM_PREFIX!r} belong to the mesh")
    return v


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (0 for a scalar), without
    recursion, so that any input has an answer."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        if d > MAX_VALUE_DEPTH + 8:
            return d  # deep enough to refuse; no need to walk the rest
        stack.extend((c, d + 1) for c in children)
    return deepest


def _results(v: Any) -> tuple:
    if type(v) is not list or len(v) > MAX_BATCH:
        raise MalformedMessage("field 'results' must be a list")
    if json_depth(v) > MAX_VALUE_DEPTH + 4:  # a value read back sits 4 levels down
        raise MalformedMessage("results nested too deeply")
    try:
        canonical(v)
    except (ValueError, TypeError, RecursionError):
        raise MalformedMessage("results are not canonical JSON (NaN, Infinity, bad Unicode?)") from None
    for r in v:
        if type(r) is not dict or set(r) != {"timestamp", "result"}:
            raise MalformedMessage("each result needs exactly timestamp, result")
        _int(r, "timestamp")
    return tuple(v)


def _request(d: dict) -> Request:
    return Request(client=_str(d, "client", MAX_CLIENT_LEN), timestamp=_int(d, "timestamp"),
                   op=_op(d["op"]), sig=_sig(d))


_FIELDS = {
    name: {f.name for f in dataclasses.fields(cls)} | {"type"}
    for name, cls in MESSAGE_TYPES.items()
}


def from_wire(d: Any) -> Message:
    """Parse an untrusted wire object; raise MalformedMessage saying why not."""
    if type(d) is not dict:
        raise MalformedMessage("message must be a JSON object")
    kind = d.get("type")
    if type(kind) is not str or kind not in MESSAGE_TYPES:
        raise MalformedMessage(f"unknown message type {kind!r}")
    expected = _FIELDS[kind]
    if set(d) != expected:
        missing, extra = sorted(expected - set(d)), sorted(set(d) - expected)
        raise MalformedMessage(f"{kind}: missing fields {missing}, unexpected fields {extra}")
    if kind == "Request":
        return _request(d)
    if kind == "PrePrepare":
        batch = d["batch"]
        if type(batch) is not list or len(batch) > MAX_BATCH:
            raise MalformedMessage(f"batch must be a list of at most {MAX_BATCH} requests")
        reqs = []
        for r in batch:
            if type(r) is not dict or set(r) != _FIELDS["Request"] or r.get("type") != "Request":
                raise MalformedMessage("batch entries must be Request objects")
            reqs.append(_request(r))
        return PrePrepare(view=_int(d, "view"), seq=_int(d, "seq", 1), digest=_hex(d, "digest", 64),
                          batch=tuple(reqs), sender=_int(d, "sender"), sig=_sig(d))
    if kind in ("Prepare", "Commit"):
        return MESSAGE_TYPES[kind](view=_int(d, "view"), seq=_int(d, "seq", 1),
                                   digest=_hex(d, "digest", 64), sender=_int(d, "sender"),
                                   sig=_sig(d))
    if kind == "Reply":
        return Reply(view=_int(d, "view"), seq=_int(d, "seq", 1),
                     client=_str(d, "client", MAX_CLIENT_LEN), sender=_int(d, "sender"),
                     results=_results(d["results"]), sig=_sig(d))
    if kind == "ViewChange":
        prepared = []
        for item in _list(d, "prepared"):
            if type(item) is not dict or set(item) != {"preprepare", "prepares"}:
                raise MalformedMessage("prepared entries need exactly preprepare, prepares")
            pp = _nested(item["preprepare"], PrePrepare)
            ps = tuple(_nested(w, Prepare) for w in _list(item, "prepares"))
            prepared.append((pp, ps))
        return ViewChange(new_view=_int(d, "new_view", 1), stable_seq=_int(d, "stable_seq"),
                          checkpoints=tuple(_nested(w, Checkpoint) for w in _list(d, "checkpoints")),
                          prepared=tuple(prepared), sender=_int(d, "sender"), sig=_sig(d))
    if kind == "Certificate":
        phase = d["phase"]
        if type(phase) is not str or phase not in CERTIFICATE_PHASES:
            raise MalformedMessage(f"field 'phase' must be one of {sorted(CERTIFICATE_PHASES)}")
        return Certificate(view=_int(d, "view"), seq=_int(d, "seq", 1), digest=_hex(d, "digest", 64),
                           phase=phase,
                           votes=tuple(_nested(w, CERTIFICATE_PHASES[phase]) for w in _list(d, "votes")),
                           sender=_int(d, "sender"), sig=_sig(d))
    if kind == "NewView":
        return NewView(view=_int(d, "view", 1),
                       view_changes=tuple(_nested(w, ViewChange) for w in _list(d, "view_changes")),
                       preprepares=tuple(_nested(w, PrePrepare) for w in _list(d, "preprepares")),
                       sender=_int(d, "sender"), sig=_sig(d))
    if kind == "Status":
        return Status(view=_int(d, "view"), seq=_int(d, "seq"), head=_hex(d, "head", 64),
                      stable_seq=_int(d, "stable_seq"), sender=_int(d, "sender"), sig=_sig(d))
    return Checkpoint(seq=_int(d, "seq", 1), state_digest=_hex(d, "state_digest", 64),
                      sender=_int(d, "sender"), sig=_sig(d))


def _list(d: dict, name: str) -> list:
    v = d[name]
    if type(v) is not list or len(v) > MAX_PROOFS:
        raise MalformedMessage(f"field {name!r} must be a list of at most {MAX_PROOFS} entries")
    return v


def _nested(w: Any, cls: type) -> Any:
    m = from_wire(w)
    if type(m) is not cls:
        raise MalformedMessage(f"expected a {cls.__name__} inside, got {type(m).__name__}")
    return m


def _refuse_constant(name: str) -> Any:
    """json.loads accepts NaN and Infinity; canonical() cannot encode them."""
    raise ValueError(f"{name} is not JSON")


def parse(raw: bytes | str) -> Message:
    """Parse raw bytes from the network (size-checked first)."""
    if len(raw) > MAX_WIRE_BYTES:
        raise MalformedMessage(f"message of {len(raw)} bytes exceeds {MAX_WIRE_BYTES}")
    try:
        obj = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    return from_wire(obj)
