"""The gate of a follower's queue (pbft_tasks/follower_gate.py).

Set up: kombu messages shaped as a hostile publisher shapes them (every body that used
to stop a follower), and a handler standing for ``FollowerNode.on_message``.
Step: hand each message to the gated handler (through ``guard_channel`` for the raw
checks, as the follower's channel does).
Check: it is acknowledged, counted once under the documented reason, and the handler
never saw it; honest pushes, answers and status requests still reach the handler.
"""
from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter

import pytest
from kombu.message import Message

from pbft_tasks.follower_gate import (MAX_BLOCKS_BODY_BYTES, MAX_PUSH_BODY_BYTES, FollowerGate,
                                      raw_reason)
from pbft_tasks.guard import POISON_LIMIT, PoisonJournal, guard_channel
from pbft_tasks.node import FETCH_MAX


class Msg(Message):
    acked = 0

    def ack(self, multiple=False):
        self.acked += 1


def push(seq=1) -> dict:
    return {"type": "Block", "sender": 0, "executed_at": 1.5, "block": {"seq": seq}}


def msg(body, content_type="application/json", content_encoding="utf-8", headers=None,
        redelivered=False):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body).encode()
    return Msg(body=body, headers=headers or {}, content_type=content_type,
               content_encoding=content_encoding, delivery_info={"redelivered": redelivered},
               delivery_tag=1)


class Rig:
    def __init__(self, journal=None):
        self.counts: Counter = Counter()
        self.passed: list = []
        self.gate = FollowerGate(lambda r: self.counts.update([r]), journal)
        self.on_message = self.gate.wrap(lambda body, m: self.passed.append(body))


def nested(depth: int) -> bytes:
    return b'{"type": "Block", "block": ' + b"[" * depth + b"]" * depth + b"}"


HOSTILE = [
    ("invalid utf-8", msg(b'{"type": "Block", "x": "\xff\xfe"}'), "undecodable"),
    ("not json", msg(b"hello, follower"), "undecodable"),
    ("unknown kombu __type__", msg(b'{"__type__": "rogue", "__value__": 1}'), "undecodable"),
    ("text/plain", msg(push(), content_type="text/plain"), "bad_content"),
    ("yaml", msg(b"type: Block", content_type="application/x-yaml"), "bad_content"),
    ("latin-1", msg(push(), content_encoding="latin-1"), "bad_content"),
    ("nested 200,000 deep", msg(nested(200_000)), "undecodable"),
    ("a list", msg([1, 2, 3]), "malformed"),
    ("unknown type", msg({"type": "Prepare"}), "malformed"),
    ("extra keys", msg({**push(), "x": 1}), "malformed"),
    ("Block without a block", msg({"type": "Block", "sender": 0, "block": [1]}), "malformed"),
    ("too many blocks", msg({"type": "Blocks", "sender": 0, "blocks": [{}] * (FETCH_MAX + 1)}),
     "malformed"),
    ("blocks not a list", msg({"type": "Blocks", "sender": 0, "blocks": {}}), "malformed"),
]


@pytest.mark.parametrize("name, message, reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_message_is_acked_counted_and_dropped(name, message, reason):
    rig = Rig()
    rig.on_message(message)
    assert message.acked == 1
    assert rig.counts == Counter([reason]) and rig.passed == []


def test_honest_messages_pass():
    rig = Rig()
    honest = [push(), {"type": "Blocks", "sender": 1, "blocks": [{"seq": 1}] * FETCH_MAX},
              {"type": "Status"}]
    for body in honest:
        rig.on_message(msg(body))
    assert rig.passed == honest and not rig.counts


def test_raw_bounds_come_before_decoding():
    big_push = b'{"type": "Block", "block": "' + b"x" * MAX_PUSH_BODY_BYTES + b'"}'
    assert raw_reason(big_push, {})[0] == "oversize"
    # an answer may be larger than a push, and no larger than its own bound
    answer = b'{"type": "Blocks", "blocks": "' + b"x" * MAX_PUSH_BODY_BYTES + b'"}'
    assert raw_reason(answer, {}) is None
    assert raw_reason(answer + b" " * MAX_BLOCKS_BODY_BYTES, {})[0] == "oversize"
    assert raw_reason(b"{}", {"compression": "application/x-gzip"})[0] == "bad_content"


def test_a_zlib_bomb_is_never_inflated():
    """guard_channel refuses a compressed body before kombu builds the message (kombu
    inflates in Message.__init__)."""
    z = zlib.compressobj()
    bomb = b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(64)) + z.flush()
    assert len(bomb) < 1 << 20
    inflated = []

    class Raw:
        body = bomb
        properties = {"application_headers": {"compression": "application/x-gzip"},
                      "content_type": "application/json", "content_encoding": "utf-8"}

    class Channel:
        def message_to_python(self, raw):
            m = Msg(body=raw.body, headers=raw.properties["application_headers"],
                    content_type="application/json", content_encoding="utf-8",
                    delivery_info={})
            inflated.append(len(m.body))
            return m

    ch = Channel()
    guard_channel(ch, check=raw_reason)
    m = ch.message_to_python(Raw())
    rig = Rig()
    rig.on_message(m)
    assert inflated == [2] and m.acked == 1
    assert rig.counts == Counter(["bad_content"]) and rig.passed == []
    gz = gzip.compress(json.dumps(push()).encode())
    assert raw_reason(gz, {"compression": "gzip"})[0] == "bad_content"


def test_a_poison_message_is_dropped_after_bounded_deliveries(tmp_path):
    """A message whose handling never finishes (the process dies in it) is started on
    its first delivery and POISON_LIMIT redeliveries, then dropped."""
    journal = PoisonJournal(str(tmp_path / "poison.json"))
    counts: Counter = Counter()
    started = []

    def dies(body, message):
        started.append(body)
        raise SystemExit("the follower died handling it")

    gate = FollowerGate(lambda r: counts.update([r]), journal)
    on_message = gate.wrap(dies)
    for delivery in range(POISON_LIMIT + 1):
        with pytest.raises(SystemExit):
            on_message(msg(push(), redelivered=delivery > 0))
        # a restart reads the journal again
        gate = FollowerGate(lambda r: counts.update([r]), PoisonJournal(str(tmp_path / "poison.json")))
        on_message = gate.wrap(dies)
    last = msg(push(), redelivered=True)
    on_message(last)
    assert len(started) == POISON_LIMIT + 1 and last.acked == 1
    assert counts == Counter(["poison"])
    # a quorum queue's own count is honoured too
    counts.clear()
    q = msg(push(), headers={"x-delivery-count": POISON_LIMIT})
    on_message(q)
    assert counts == Counter(["poison"]) and q.acked == 1


def test_a_redelivered_body_kombu_handed_over_as_text_passes(tmp_path):
    """A follower killed mid-load gets its unacknowledged pushes again, redelivered; kombu
    may hand the body over as str.  It is hashed for the poison journal, not a crash."""
    rig = Rig(PoisonJournal(str(tmp_path / "poison.json")))
    for redelivered in (False, True):
        m = msg(json.dumps(push()), redelivered=redelivered)
        rig.on_message(m)
    assert rig.passed == [push(), push()] and not rig.counts


def test_the_bounds_are_the_documented_ones():
    from pathlib import Path
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text().split())
    assert MAX_PUSH_BODY_BYTES == 32 << 20 and MAX_BLOCKS_BODY_BYTES == 48 << 20
    assert "over 32 MiB (48 MiB for a body starting" in doc and f"at most {FETCH_MAX} `blocks`" in doc
