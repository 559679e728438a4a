"""A ledger written before persistence was derived still loads, and the replica it
restores is the one that wrote it (record formats are unchanged).

tests/ledger/data/node1.ledger was written by replica 1 of a simulated mesh with the
code that flagged durable changes by hand (tests/ledger/data/make_node1.py);
node1.json summarises that replica's live state when it stopped.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ledger import LedgerStore
from pbft_tasks.core.actions import Persist
from pbft_tasks.core.replica import Replica, ReplicaConfig
from pbft_tasks.core.stimuli import Resume, Tick

DATA = Path(__file__).parent / "data"


def summary(r: Replica) -> dict:
    """The replica's durable state (tests/core/test_durability.py): peers' votes are not
    durable on their own, and a restart takes next_seq past every pre-prepare held."""
    w = r.window
    meta = r.meta_record()
    meta["next_seq"] = max([meta["next_seq"], r.last_exec + 1]
                           + [s + 1 for s, e in w.log.items() if e.preprepare is not None])
    return {"meta": meta,
            "log": {str(s): [e.preprepare.digest if e.preprepare else None, 1 in e.prepares,
                            1 in e.commits, e.prior[0].digest if e.prior else None] for s, e in sorted(w.log.items())},
            "checkpoints": {str(s): sorted(v) for s, v in sorted(w.checkpoints.items())},
            "clients": {"a": r.clients.to_record("a"), "b": r.clients.to_record("b")}}


def test_a_ledger_written_before_derived_persistence_restores_its_replica(tmp_path):
    want = json.loads((DATA / "node1.json").read_text())
    path = tmp_path / "node1.ledger"
    shutil.copy(DATA / "node1.ledger", path)
    cfg = ReplicaConfig(n=4, **want["config"])
    with LedgerStore(path) as led:
        r = Replica(want["node"], cfg, records=led.protocol_records())
        assert led.height == r.last_exec == want["meta"]["last_exec"]
        assert {k: v for k, v in summary(r).items()} == {k: want[k] for k in summary(r)}
        # today's code carries on from it and writes the same formats back
        for stimulus in (Resume(), *[Tick() for _ in range(10)]):
            for a in r.handle(stimulus):
                if isinstance(a, Persist):
                    led.apply(a.records, [])
        live = summary(r)
    with LedgerStore(path) as led:
        again = Replica(want["node"], cfg, records=led.protocol_records())
        assert summary(again)["meta"] == live["meta"]
        assert summary(again)["checkpoints"] == live["checkpoints"]
        assert summary(again)["clients"] == live["clients"]
