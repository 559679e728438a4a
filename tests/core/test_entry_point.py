"""One entry point for every stimulus (after dask's ``handle_stimulus`` and
etcd raft's ``Step``).

- ``Replica.handle`` is the replica's only way in: protocol messages, and the stimuli of
  stimuli.py (``Tick``, ``Install``, ``FetchDone``, ``Resume``).  There is no other
  (no ``step``, ``tick``, ``install``, ``request_state`` or ``resume``).
- One dispatch table maps each of them to its handler.
- Every action a stimulus causes carries its cause, ``describe(stimulus)``.
- Stimuli are values: frozen dataclasses with slots, like the messages.
"""
from __future__ import annotations

import dataclasses

import pytest

from pbft_tasks.core.actions import FetchState
from pbft_tasks.core.messages import (Certificate, Checkpoint, Commit, NewView, PrePrepare, Prepare,
                                      Request, Status, ViewChange)
from pbft_tasks.core.replica import Replica, describe
from pbft_tasks.core.stimuli import FetchDone, Install, Resume, Tick

from .helpers import checkpoint_votes, config, fake_digest, feed, messages, persisted, reasons, req

STIMULI = (Tick, Install, FetchDone, Resume)


def test_handle_is_the_only_entry_point():
    assert [name for name in ("step", "tick", "install", "request_state", "resume")
            if hasattr(Replica, name)] == []


def test_one_dispatch_table_takes_every_message_and_stimulus():
    assert set(Replica._handlers) == {Request, PrePrepare, Prepare, Commit, Checkpoint, ViewChange,
                                      NewView, Certificate, Status, *STIMULI}


@pytest.mark.parametrize("kind", STIMULI, ids=lambda k: k.__name__)
def test_stimuli_are_frozen_dataclasses_with_slots(kind):
    assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen
    assert "__slots__" in vars(kind)


def test_describe_names_every_stimulus():
    assert describe(Tick(), 7) == "tick 7"
    assert describe(Install({"seq": 3})) == "state transfer n3"
    assert describe(FetchDone()) == "fetch done"
    assert describe(Resume()) == "resume"


def test_a_tick_moves_the_clock_and_names_what_it_causes():
    # set up: a primary with a request waiting for the batch timeout
    r = Replica(0, config(max_batch=4))
    assert r.handle(req()) == []
    # step
    out = r.handle(Tick())
    # check: the partial batch goes out, caused by the first tick
    assert r.now == 1 and [pp.seq for pp in messages(out, PrePrepare)] == [1]
    assert {a.cause for a in out} == {"tick 1"}


def test_resume_after_a_restart_names_what_it_causes():
    # set up: the primary proposed seq 1, persisted it, and crashed
    r = Replica(0, config(max_batch=1))
    records = persisted(r.handle(req()))
    # step
    out = Replica(0, config(max_batch=1), records=records).handle(Resume())
    # check: its pre-prepare goes out again, caused by the restart
    assert [pp.seq for pp in messages(out, PrePrepare)] == [1]
    assert {a.cause for a in out} == {"resume"}


def test_a_fetched_block_that_does_not_fit_is_evidence_named_after_it():
    out = Replica(1, config()).handle(Install({"seq": 5}))
    assert reasons(out) == ["bad_state_transfer"]
    assert {a.cause for a in out} == {"state transfer n5"}


def test_fetch_done_asks_again_only_while_behind():
    # set up: f+1 checkpoints at 4 this replica has not reached: it asks for blocks
    r = Replica(3, config())
    assert r.handle(FetchDone()) == []  # not behind: nothing to ask
    asked = [a for a in feed(r, checkpoint_votes(4, fake_digest("s"), [0, 1]))
             if isinstance(a, FetchState)]
    # step: the fetched blocks did not get it there
    out = r.handle(FetchDone())
    # check: it asks again at once, for the same range
    assert [(a.from_seq, a.to_seq) for a in asked] == [(1, 4)]
    assert [(a.from_seq, a.to_seq, a.cause) for a in out] == [(1, 4, "state transfer continues")]


def test_an_unknown_stimulus_is_evidence_and_changes_nothing():
    r = Replica(1, config())
    out = r.handle(object())
    assert reasons(out) == ["unexpected_type"] and r.now == 0
