"""Signatures: every message type signs and verifies, any change is caught with the right
reason, a primary cannot forge a client's request, and key files stay private."""
from __future__ import annotations

import dataclasses
import os
import stat
import threading

import pytest

from pbft_tasks import signing
from pbft_tasks.core import messages
from pbft_tasks.core.messages import (Checkpoint, Commit, PrePrepare, Prepare, Reply,
                                      Request, batch_digest)
from pbft_tasks.signing import (REASONS, KeyFileError, Rejected, Signer, Verifier,
                                generate_key, read_key_file, write_key_file)

NODE_SKS = {i: generate_key() for i in range(4)}
CLIENT_SKS = {"alice": generate_key(), "bob": generate_key()}
D = "ab" * 32


def node(i: int) -> Signer:
    return Signer(i, NODE_SKS[i])


def client(name: str) -> Signer:
    return Signer(name, CLIENT_SKS[name])


@pytest.fixture
def verifier():
    v = Verifier({i: k.verify_key for i, k in NODE_SKS.items()},
                 {c: k.verify_key for c, k in CLIENT_SKS.items()})
    yield v
    v.close()


def request(name="alice", ts=1, key="k", value="v") -> Request:
    return client(name).sign(Request(client=name, timestamp=ts,
                                     op={"op": "put", "key": key, "value": value,
                                         "expires_at": None}))


def pre_prepare(batch) -> PrePrepare:
    batch = tuple(batch)
    return node(0).sign(PrePrepare(view=0, seq=1, digest=batch_digest(batch), batch=batch,
                                   sender=0))


def samples() -> list:
    """One signed message of every type."""
    return [
        request(),
        pre_prepare([request("alice", 1), request("bob", 7, value={"a": [1, 2]})]),
        node(1).sign(Prepare(view=0, seq=1, digest=D, sender=1)),
        node(2).sign(Commit(view=0, seq=1, digest=D, sender=2)),
        node(3).sign(Reply(view=0, seq=1, client="alice", sender=3,
                           results=({"timestamp": 1, "result": "ok"},))),
        node(1).sign(Checkpoint(seq=64, state_digest=D, sender=1)),
    ]


SAMPLE_IDS = [type(m).__name__ for m in samples()]


def reason(verifier: Verifier, msg) -> str:
    with pytest.raises(Rejected) as exc:
        verifier.check(msg)
    assert exc.value.reason in REASONS
    return exc.value.reason


def mutate(name: str, value):
    """A different value of the same type (for sender/client: another *known* signer,
    so the failure is the signature, not the lookup)."""
    if name == "sender":
        return (value + 1) % 4
    if name == "client":
        return "bob" if value == "alice" else "alice"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return ("0" if value[0] != "0" else "1") + value[1:]
    if isinstance(value, dict):
        return {**value, "key": value["key"] + "x"}
    if isinstance(value, tuple):
        return value[:-1]
    raise AssertionError(f"no mutation for {name}={value!r}")


# -- round trip --------------------------------------------------------------------------

@pytest.mark.parametrize("msg", samples(), ids=SAMPLE_IDS)
def test_every_message_type_signs_and_verifies_also_after_the_wire(verifier, msg):
    assert len(msg.sig) == 128 and bytes.fromhex(msg.sig)
    verifier.check(msg)
    verifier.check(messages.parse(messages.canonical(messages.to_wire(msg))))


def test_sign_sets_only_the_signature_and_is_deterministic():
    req = Request(client="alice", timestamp=3, op={"op": "delete", "key": "k"})
    signed = client("alice").sign(req)
    assert signed == req and dataclasses.replace(signed, sig="") == req  # sig not in eq
    assert client("alice").sign(req).sig == signed.sig  # Ed25519 is deterministic


def test_signer_refuses_to_sign_in_another_identitys_name():
    with pytest.raises(ValueError):
        node(1).sign(Prepare(view=0, seq=1, digest=D, sender=2))
    with pytest.raises(ValueError):
        client("alice").sign(Request(client="bob", timestamp=1, op={"op": "delete", "key": "k"}))


# -- tampering ---------------------------------------------------------------------------

@pytest.mark.parametrize("msg", samples(), ids=SAMPLE_IDS)
def test_changing_any_field_breaks_the_signature(verifier, msg):
    fields = [f.name for f in dataclasses.fields(msg) if f.name != "sig"]
    assert fields
    for name in fields:
        changed = dataclasses.replace(msg, **{name: mutate(name, getattr(msg, name))})
        assert changed != msg
        assert reason(verifier, changed) == "bad_signature", name


@pytest.mark.parametrize("msg", samples(), ids=SAMPLE_IDS)
def test_flipping_any_signature_byte_is_rejected(verifier, msg):
    sig = bytearray.fromhex(msg.sig)
    for i in range(len(sig)):
        flipped = bytearray(sig)
        flipped[i] ^= 0x01
        assert reason(verifier, dataclasses.replace(msg, sig=flipped.hex())) == "bad_signature"


@pytest.mark.parametrize("sig, why", [
    ("", "missing_signature"),
    ("ab" * 63, "malformed_signature"),            # 63 bytes
    ("ab" * 65, "malformed_signature"),            # 65 bytes
    ("zz" * 64, "malformed_signature"),            # not hex
    ("AB" * 64, "malformed_signature"),            # upper case: a second wire form
    (" " + "ab" * 63 + "a", "malformed_signature"),
])
def test_missing_or_malformed_signature(verifier, sig, why):
    msg = node(1).sign(Prepare(view=0, seq=1, digest=D, sender=1))
    assert reason(verifier, dataclasses.replace(msg, sig=sig)) == why


def test_upper_case_spelling_of_a_valid_signature_is_still_refused(verifier):
    msg = node(1).sign(Commit(view=0, seq=1, digest=D, sender=1))
    assert reason(verifier, dataclasses.replace(msg, sig=msg.sig.upper())) == "malformed_signature"


def test_unknown_node_and_unknown_client(verifier):
    stranger = generate_key()
    assert reason(verifier, Signer(9, stranger).sign(
        Commit(view=0, seq=1, digest=D, sender=9))) == "unknown_node"
    assert reason(verifier, Signer("mallory", stranger).sign(
        Request(client="mallory", timestamp=1, op={"op": "delete", "key": "k"}))) == "unknown_client"


def test_client_sessions_use_the_key_of_their_name(verifier):
    """mesh/client.py signs as '<name>/<session>'; the name picks the key."""
    ok = Signer("alice/1f2e", CLIENT_SKS["alice"]).sign(
        Request(client="alice/1f2e", timestamp=1, op={"op": "delete", "key": "k"}))
    verifier.check(ok)
    forged = Signer("alice/1f2e", CLIENT_SKS["bob"]).sign(dataclasses.replace(ok, sig=""))
    assert reason(verifier, forged) == "bad_signature"
    moved = dataclasses.replace(ok, client="alice/other")  # session is signed too
    assert reason(verifier, moved) == "bad_signature"
    stranger = Signer("mallory/1", generate_key()).sign(
        Request(client="mallory/1", timestamp=1, op={"op": "delete", "key": "k"}))
    assert reason(verifier, stranger) == "unknown_client"


def test_rejected_carries_a_slug_and_a_readable_detail(verifier):
    msg = dataclasses.replace(node(1).sign(Prepare(view=0, seq=1, digest=D, sender=1)), seq=2)
    with pytest.raises(Rejected) as exc:
        verifier.check(msg)
    assert exc.value.reason == "bad_signature"
    assert str(exc.value) == "Prepare from node 1: signature does not verify"


def test_node_signing_with_a_key_not_its_own_is_rejected(verifier):
    forged = Signer(2, NODE_SKS[3]).sign(Prepare(view=0, seq=1, digest=D, sender=2))
    assert reason(verifier, forged) == "bad_signature"


# -- a primary cannot make up requests ---------------------------------------------------

def test_pre_prepare_with_one_forged_request_is_rejected(verifier):
    forged = Signer("alice", CLIENT_SKS["bob"]).sign(
        Request(client="alice", timestamp=2, op={"op": "delete", "key": "k"}))
    pp = pre_prepare([request("bob", 1), forged, request("alice", 3)])
    with pytest.raises(Rejected) as exc:
        verifier.check(pp)
    assert exc.value.reason == "batch_bad_signature"
    assert "batch[1]" in str(exc.value)


@pytest.mark.parametrize("bad, why", [
    (Request(client="alice", timestamp=2, op={"op": "delete", "key": "k"}),
     "batch_missing_signature"),
    (Signer("eve", generate_key()).sign(
        Request(client="eve", timestamp=2, op={"op": "delete", "key": "k"})),
     "batch_unknown_client"),
])
def test_pre_prepare_batch_request_unsigned_or_unknown(verifier, bad, why):
    assert reason(verifier, pre_prepare([request(), bad])) == why


def test_empty_batch_pre_prepare_verifies(verifier):
    verifier.check(pre_prepare([]))  # a null request (view change fills gaps with it)


# -- bulk --------------------------------------------------------------------------------

class ThreadRecordingVerifier(Verifier):
    def __init__(self, *a):
        super().__init__(*a)
        self.threads: set[str] = set()

    def check(self, msg):
        self.threads.add(threading.current_thread().name)
        super().check(msg)


def corrupted(n: int, bad: dict[int, str]) -> list:
    msgs = [node(i % 4).sign(Commit(view=0, seq=i + 1, digest=D, sender=i % 4))
            for i in range(n)]
    for i, kind in bad.items():
        m = msgs[i]
        if kind == "bad_signature":
            msgs[i] = dataclasses.replace(m, seq=m.seq + 1000)
        elif kind == "missing_signature":
            msgs[i] = dataclasses.replace(m, sig="")
        elif kind == "unknown_node":
            msgs[i] = Signer(7, generate_key()).sign(dataclasses.replace(m, sender=7, sig=""))
    return msgs


@pytest.mark.parametrize("n, threaded", [(10, False), (signing.THREADED_MIN * 4 + 3, True)])
def test_check_many_finds_exactly_the_bad_indices(n, threaded):
    bad = {0: "bad_signature", 5: "missing_signature", n - 1: "unknown_node"}
    if threaded:
        bad.update({n // 2: "bad_signature", n // 2 + 1: "bad_signature"})
    v = ThreadRecordingVerifier({i: k.verify_key for i, k in NODE_SKS.items()}, {})
    with v:
        assert v.check_many(corrupted(n, bad)) == sorted(bad.items())
        assert v.check_many(corrupted(n, {})) == []
    pool_threads = {t for t in v.threads if t.startswith("hdpbf-verify")}
    if threaded:
        assert len(pool_threads) >= min(2, signing._WORKERS) and v.threads == pool_threads
    else:
        assert v.threads == {threading.current_thread().name}


def test_check_many_accepts_a_generator_and_an_empty_list(verifier):
    assert verifier.check_many([]) == []
    assert verifier.check_many(m for m in samples()) == []


# -- key files ---------------------------------------------------------------------------

def test_key_file_round_trip_is_created_0600_even_with_umask_0(tmp_path):
    key = generate_key()
    old = os.umask(0)
    try:
        write_key_file(tmp_path / "k.key", key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    assert bytes(read_key_file(tmp_path / "k.key")) == bytes(key)
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]  # no temp file left


def test_rewriting_a_too_open_key_file_leaves_it_0600(tmp_path):
    path = tmp_path / "k.key"
    path.write_text("x")
    path.chmod(0o644)
    write_key_file(path, generate_key())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused_with_the_fix(tmp_path, mode):
    path = tmp_path / "k.key"
    write_key_file(path, generate_key())
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {path}") as exc:
        read_key_file(path)
    assert f"{mode:04o}" in str(exc.value)


@pytest.mark.parametrize("content", ["", "abcd", "zz" * 32, "ab" * 33, "ab" * 31 + "\u00e9\u00e9"])
def test_key_file_with_bad_content_is_refused(tmp_path, content):
    path = tmp_path / "k.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match="64 hex chars"):
        read_key_file(path)


def test_missing_key_file_is_refused(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "nope.key")
