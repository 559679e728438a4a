"""Hostile input at the core: what one faulty replica can make an honest one
store or do is bounded.  Each test: set up a replica, step the attack, check the bound.
The adapter's side is tests/test_hostile_adapter.py, the real mesh's
tests/integration/test_hostile_mesh.py.
"""
from __future__ import annotations

from pbft_tasks.core.actions import FetchState
from pbft_tasks.core.messages import Prepare, ViewChange
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.stimuli import Tick

from .helpers import config, fake_digest, preprepare, reasons

FAR = 2**62


def tick(r: Replica, ticks: int) -> list:
    out: list = []
    for _ in range(ticks):
        out += r.handle(Tick())
    return out


# -- a seq far ahead is evidence, not a target ---------------------------------

def test_one_prepare_far_ahead_starts_no_fetch_loop():
    """One Prepare with seq 2^62 from a faulty node made the replica fetch blocks forever."""
    r = Replica(1, config())
    out = r.handle(Prepare(0, FAR, fake_digest("x"), 3))
    assert reasons(out) == ["outside_watermarks"]
    out = tick(r, 10 * r.cfg.retransmit_ticks)
    assert not [a for a in out if isinstance(a, FetchState)]
    assert r.catchup.behind_to == 0


def test_far_ahead_from_f_plus_one_senders_is_a_target():
    """f+1 senders beyond the window: at least one honest replica is there, so the stuck
    check fetches -- up to the lower of their seqs, not the faulty one's."""
    r = Replica(1, config())
    honest_far = r.window.high + 2 * r.cfg.log_window + 3
    r.handle(preprepare(1))  # work to do, so the stuck check runs
    r.handle(Prepare(0, FAR, fake_digest("x"), 3))
    r.handle(Prepare(0, honest_far, fake_digest("y"), 2))
    out = tick(r, r.cfg.retransmit_ticks + 1)
    fetches = [a for a in out if isinstance(a, FetchState)]
    assert fetches and fetches[0].to_seq == honest_far


# -- a VIEW-CHANGE flood from one faulty node ------------------------------------

def stored_view_changes(r: Replica) -> int:
    return sum(len(vs) for vs in r.vc.view_changes.values())


def test_a_view_change_flood_stores_the_newest_per_sender_only():
    r = Replica(1, config())
    for v in range(1, 2001):
        r.handle(ViewChange(v + 10, 0, (), (), 3))
    assert stored_view_changes(r) == 1, "one sender, one stored VIEW-CHANGE"
    assert r.view == 0 and not r.vc.in_view_change
    out = r.handle(ViewChange(10 ** 6, 0, (), (), 3))
    assert reasons(out) == ["view_out_of_range"] and stored_view_changes(r) == 1


def test_a_flooder_cannot_carry_an_honest_timeout_to_its_view():
    """The f+1 join rule with a flooder's votes stored: it goes to the smallest view
    among the newest VIEW-CHANGE of each sender (kept true by the per-sender bound)."""
    r = Replica(1, config())
    for v in range(2, 14):
        r.handle(ViewChange(v, 0, (), (), 3))
    r.handle(ViewChange(1, 0, (), (), 2))  # an honest replica timed out
    assert r.view == 1 and r.vc.in_view_change


# -- value nesting depth -----------------------------------------------------------------------

def nested(depth: int):
    v = 1
    for i in range(depth):
        v = [v] if i % 2 else {"a": v}
    return v


def request_wire(value) -> dict:
    return {"type": "Request", "client": "c", "timestamp": 1, "sig": "",
            "op": {"op": "put", "key": "k", "value": value, "expires_at": None}}


def test_a_deeply_nested_value_is_malformed_before_it_can_commit():
    """A value nested ~944 deep committed, then every VIEW-CHANGE carrying its block
    failed with RecursionError and the view change never completed."""
    import pytest
    from pbft_tasks.core.messages import (MAX_VALUE_DEPTH, MalformedMessage, from_wire,
                                          json_depth, signing_bytes)
    ok = from_wire(request_wire(nested(MAX_VALUE_DEPTH)))
    assert signing_bytes(ok)
    for depth in (MAX_VALUE_DEPTH + 1, 944, 5000):
        with pytest.raises(MalformedMessage, match="nested deeper"):
            from_wire(request_wire(nested(depth)))
    assert json_depth(nested(100_000)) > MAX_VALUE_DEPTH  # no recursion, any input


def test_a_view_change_with_the_deepest_allowed_value_encodes():
    from pbft_tasks.core.messages import MAX_VALUE_DEPTH, from_wire, signing_bytes, to_wire
    r = from_wire(request_wire(nested(MAX_VALUE_DEPTH)))
    pp = preprepare(1, batch=(r,))
    vc = ViewChange(1, 0, (), ((pp, ()),), 2)
    nv_wire = {"type": "NewView", "view": 1, "view_changes": [to_wire(vc)] * 3,
               "preprepares": [to_wire(pp)], "sender": 1, "sig": ""}
    assert signing_bytes(from_wire(nv_wire))


# -- batches are cut by bytes as well as by count --------------------------------

def test_big_requests_are_batched_below_the_wire_limit():
    """128 puts of 60 KB made a primary build a batch over the 4 MiB wire limit; every
    backup refused it as oversize, and every new primary repeated it."""
    from pbft_tasks.core.messages import MAX_WIRE_BYTES, PrePrepare, signing_bytes

    from .helpers import messages, req
    r = Replica(0, config(max_batch=256, batch_timeout_ticks=5, pipeline=0))
    out: list = []
    for ts in range(1, 129):
        out += r.handle(req(ts=ts, key=f"k{ts}", value="v" * 60_000))
    out += tick(r, 6)  # the batch timeout: everything waiting is proposed
    pps = messages(out, PrePrepare)
    assert sum(len(pp.batch) for pp in pps) == 128
    assert len(pps) >= 8
    for pp in pps:
        assert len(signing_bytes(pp)) <= r.cfg.max_batch_bytes + 1024 < MAX_WIRE_BYTES


def test_count_still_cuts_small_requests():
    from pbft_tasks.core.messages import PrePrepare

    from .helpers import messages, req
    r = Replica(0, config(max_batch=16, batch_timeout_ticks=5, pipeline=0))
    out: list = []
    for ts in range(1, 41):
        out += r.handle(req(ts=ts))
    out += tick(r, 6)
    assert [len(pp.batch) for pp in messages(out, PrePrepare)] == [16, 16, 8]


def test_a_request_over_max_batch_bytes_is_refused_by_the_primary():
    from .helpers import req
    r = Replica(0, config(max_batch_bytes=4096, batch_timeout_ticks=0))
    out = r.handle(req(ts=1, value="x" * 5000))
    assert reasons(out) == ["request_too_large"] and not r.batcher.pending and not r.awaiting


# -- retransmission waits for silence ------------------------------------------------------

def test_an_idle_primary_does_not_resend_a_fresh_preprepare():
    """At low load the primary re-broadcast every PRE-PREPARE ~10 ms (one tick) after
    sending it: the timer counted the idle time before the request as silence."""
    from pbft_tasks.core.messages import PrePrepare

    from .helpers import messages, req
    r = Replica(0, config(retransmit_ticks=100, batch_timeout_ticks=0))
    tick(r, 1000)  # idle for a long time
    out = r.handle(req(ts=1))
    assert len(messages(out, PrePrepare)) == 1
    out = tick(r, 20)  # well within what a commit may take
    assert messages(out, PrePrepare) == [], "re-sent before any silence"


def test_retransmission_timeout_adapts_to_what_commits_take():
    from pbft_tasks.core.messages import PrePrepare

    from .helpers import commit_seq, messages, preprepare
    r = Replica(1, config(retransmit_ticks=100, log_window=64, checkpoint_interval=32))
    assert r._retransmit_timeout() == 100  # nothing observed yet: the configured bound
    for seq in range(1, 41):  # commits that take 2 ticks each
        tick(r, 2)
        commit_seq(r, preprepare(seq))
    assert r._retransmit_timeout() == 25, "fast commits: the floor, retransmit_ticks / 4"
    r.handle(preprepare(41))  # then one stalls: its votes are re-sent after the timeout
    from pbft_tasks.core.messages import Prepare
    early = tick(r, 24)
    late = tick(r, 2)
    assert messages(early, Prepare) == [] and messages(late, Prepare)
