"""What a step persists is derived, and it is enough: after every step of a random
schedule (deliveries, drops, duplicates, reorders, ticks, crashes and restarts, view
changes, state transfer, an equivocating replica), a replica rebuilt from exactly the
records it persisted equals the live one on its durable state (etcd raft derives
``MustSync`` from ``prevHardSt``; this checks the derivation, after every step).

Durable state, as replica.py and log.py define it: the meta record (view, h,
last_exec, head, next_seq, stable digest, in_view_change); per log entry its
pre-prepare, this replica's own prepare and commit, and ``prior``; every checkpoint
vote and our own checkpoints; the client table.  A peer's vote on its own is not
durable (log.py says why), nor is ``next_seq`` beyond a pre-prepare held (a restart
takes it past them); but an entry this replica committed to must come back
prepared, with the certificate it voted on.
"""
from __future__ import annotations

from hypothesis import event, settings
from hypothesis.stateful import precondition, rule

from pbft_tasks.core.actions import Persist
from pbft_tasks.core.messages import PrePrepare, Prepare, batch_digest
from pbft_tasks.core.replica import Replica

from .helpers import config, req
from .test_stateful import SETTINGS, CheckedCluster, ViewChangeSafetyMachine


def durable(r: Replica) -> dict:
    w = r.window
    meta = r.meta_record()
    # a restart takes next_seq past every pre-prepare it holds (replica.py ``_restore``)
    meta["next_seq"] = max([meta["next_seq"], r.last_exec + 1]
                           + [s + 1 for s, e in w.log.items() if e.preprepare is not None])
    return {
        "meta": meta,
        "log": {s: e.durable(r.id) for s, e in sorted(w.log.items()) if e.durable(r.id)},
        "ckpt": {s: w.checkpoint_record(s) for s in sorted(w.checkpoints)},
        "clients": {c: r.clients.to_record(c)
                    for c in sorted(set(r.clients._floor) | set(r.clients._done))},
    }


def check_rebuilt(live: Replica, records: dict) -> None:
    rebuilt = Replica(live.id, live.cfg, records=dict(records))
    assert durable(rebuilt) == durable(live), f"replica {live.id}: rebuilt from its records differs"
    for s, e in live.window.log.items():
        if e.preprepare is not None and live.id in e.commits:
            primary = e.preprepare.view % live.n
            assert rebuilt.window.log[s].certificate(primary, live.need_prepares) is not None, \
                f"replica {live.id}: committed to seq {s} but restarts without its certificate"


class DurableCluster(CheckedCluster):
    """Checks every replica against its records after each of its steps."""

    def _apply(self, i, actions):
        super()._apply(i, actions)
        node = self.nodes[i]
        if node.replica is not None and i not in self.byzantine:
            check_rebuilt(node.replica, node.records)


class DurabilityMachine(ViewChangeSafetyMachine):
    """The view-change safety machine (tests/core/test_stateful.py) with state transfer
    served, on a cluster that checks durability after every step."""

    def __init__(self):
        super().__init__()
        self.c = DurableCluster(4, **self.CONFIG)

    @precondition(lambda self: self.c.fetches)
    @rule()
    def serve_fetches(self):
        if self.c.serve_fetches():
            event("state transfer installed blocks")

    def teardown(self):
        if any(n.replica is not None and n.replica.view > 0 for n in self.c.nodes):
            event("a view change happened")
        super().teardown()


TestDurability = DurabilityMachine.TestCase
TestDurability.settings = settings(SETTINGS, max_examples=120)


class CollectorDurabilityMachine(DurabilityMachine):
    CONFIG = dict(DurabilityMachine.CONFIG, votes="collector")


TestCollectorDurability = CollectorDurabilityMachine.TestCase
TestCollectorDurability.settings = settings(SETTINGS, max_examples=60)


def test_a_step_persists_exactly_what_it_changed():
    """A backup's first prepare for a pre-prepare writes the pre-prepare and its votes;
    a peer's prepare that completes nothing writes nothing; a repeated message writes
    nothing."""
    r = Replica(1, config())
    batch = (req(),)
    pp = PrePrepare(0, 1, batch_digest(batch), batch, 0)
    [persist] = [a for a in r.handle(pp) if isinstance(a, Persist)]
    assert sorted(persist.records) == ["pp/1", "votes/1"]
    assert not [a for a in r.handle(pp) if isinstance(a, Persist)]
    out = r.handle(Prepare(0, 1, pp.digest, 2))  # prepared: own commit, votes written
    [persist] = [a for a in out if isinstance(a, Persist)]
    assert sorted(persist.records) == ["votes/1"]
    assert len(persist.records["votes/1"]["prepares"]) == 2
    out = r.handle(Prepare(0, 1, pp.digest, 3))  # a late prepare: nothing durable changed
    assert not [a for a in out if isinstance(a, Persist)]
