"""Stimulus ids and the stimulus log (core/actions.py ``Cause``, core/trace.py).

- Every stimulus gets an id, and every action it causes carries it; a retransmitted
  message is a new stimulus with a new id.
- The driver may name the id; the core's default is ``<replica>.<count>``.
- The log is bounded, records steps that caused nothing, and leaves out ticks that did
  nothing.
- A commit is traced across nodes by its request id: on every replica, the entries of
  the pre-prepare, the votes and the execution of the seq that carried it.
"""
from __future__ import annotations

from pbft_tasks.core.actions import Cause, Execute, Persist
from pbft_tasks.core.messages import PrePrepare, Prepare, batch_digest
from pbft_tasks.core.replica import Replica
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.stimuli import Tick
from pbft_tasks.core.trace import StimulusLog, follow, keys

from .helpers import config, req


def preprepare(seq: int = 1, client: str = "c", ts: int = 1) -> PrePrepare:
    batch = (req(client, ts),)
    return PrePrepare(0, seq, batch_digest(batch), batch, 0)


def test_every_action_of_a_step_carries_its_stimulus_id():
    r = Replica(1, config())
    pp = preprepare()
    out = r.handle(pp)
    assert out and {a.cause.id for a in out} == {"1.1"}
    assert all(isinstance(a.cause, Cause) and a.cause.stimulus is pp for a in out)
    assert out[0].cause == "PrePrepare v0 n1 from 0"  # still reads as before


def test_a_retransmission_is_a_new_stimulus_with_a_new_id():
    r = Replica(1, config())
    pp = preprepare()
    first = r.handle(Prepare(0, 1, pp.digest, 2))
    r.handle(pp)
    again = r.handle(Prepare(0, 1, pp.digest, 2), "mine")
    assert [a.cause.id for a in first + again] == ["1.1"] * len(first) + ["mine"] * len(again)


def test_a_derived_cause_keeps_the_id():
    c = Cause("tick 3", "2.9", Tick())
    assert (c + ": stuck").id == "2.9" and c.derive("state transfer continues").id == "2.9"
    assert c + ": stuck" == "tick 3: stuck"


def test_the_log_is_bounded_and_keeps_quiet_steps_but_not_idle_ticks():
    r, log = Replica(1, config()), StimulusLog(size=3)
    log.step(r, Tick())                                   # nothing happened: left out
    assert len(log) == 0
    log.step(r, Prepare(0, 5, "d" * 64, 2))               # a vote that completes nothing
    [e] = log.entries()
    assert e["id"] == "1.2" and e["actions"] == [] and e["keys"] == ["n5"]
    for _ in range(4):
        log.step(r, preprepare())
    assert len(log) == 3 and [e["id"] for e in log.entries()] == ["1.4", "1.5", "1.6"]


def test_an_entry_names_its_request_seq_and_what_it_caused():
    r, log = Replica(1, config()), StimulusLog()
    log.step(r, preprepare(client="c", ts=7))
    [e] = log.entries()
    assert e["stimulus"] == "PrePrepare v0 n1 from 0"
    assert e["keys"][:2] == ["n1", "c/7"]
    assert e["actions"][0] == "persist pp/1, votes/1"
    assert "broadcast Prepare v0 n1" in e["actions"]


def test_a_commit_is_traced_across_nodes_by_its_request_id():
    c = Cluster(4, **dict(checkpoint_interval=4, log_window=8, max_batch=1, batch_timeout_ticks=0))
    c.request("c", 1, "k", 1)
    c.request("d", 1, "k", 2)
    c.run()
    by_node = {i: n.trace.entries() for i, n in enumerate(c.nodes)}
    seq = next(a.seq for _, _, acts in c.nodes[1].trace.snapshot() for a in acts
               if isinstance(a, Execute) and "c/1" in keys(a))
    traced = follow("c/1", by_node)
    for i, entries in traced.items():
        stimuli = [e["stimulus"] for e in entries]
        assert any(f"execute n{seq} (1 requests)" in e["actions"] for e in entries), (i, stimuli)
        assert any(s.startswith(f"Commit v0 n{seq}") for s in stimuli), (i, stimuli)
        assert all("d/1" not in e["keys"] for e in entries), "another request's seq came along"
        if i != 0:
            assert f"PrePrepare v0 n{seq} from 0" in stimuli
    assert "Request c/1" in [e["stimulus"] for e in traced[0]]
    ids = {e["id"] for entries in traced.values() for e in entries}
    assert len(ids) == sum(len(v) for v in traced.values()), "stimulus ids repeat"
    # and by a stimulus id: exactly that step
    one = traced[2][0]["id"]
    assert [e["id"] for e in follow(one, by_node)[2]] == [one]


def test_persist_actions_carry_the_cause_too():
    r = Replica(1, config())
    [p] = [a for a in r.handle(preprepare(), "x.1") if isinstance(a, Persist)]
    assert p.cause.id == "x.1"
