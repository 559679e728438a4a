"""Writes node1.ledger and node1.json, the ledger of replica 1 of a simulated mesh (a
few requests, a checkpoint, the primary crashing and a view change starting) and a
summary of its live state.  The committed files were written by the code that flagged
durable changes by hand; tests/ledger/test_ledger_old_format.py loads them with
today's code.  Run: PYTHONPATH=. python tests/ledger/data/make_node1.py tests/ledger/data
"""
import json, os, sys
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core.actions import Persist, Execute
from pbft_tasks.core.messages import to_wire
from pbft_tasks.core.replica import Replica
from ledger import LedgerStore
from tests.ledger.test_ledger_old_format import summary as durable_summary

CFG = dict(checkpoint_interval=2, log_window=4, max_batch=2, batch_timeout_ticks=1,
           retransmit_ticks=4, view_change_ticks=3)
out = sys.argv[1]
stores = {}

class LedgerCluster(Cluster):
    def _apply(self, i, actions):
        records, blocks = {}, []
        for a in actions:
            if isinstance(a, Persist):
                records.update(a.records)
            elif isinstance(a, Execute):
                blocks.append(dict(a.block, certificate=[to_wire(c) for c in a.certificate]))
        if i in stores and (records or blocks):
            stores[i].apply(records, blocks)
        super()._apply(i, actions)

path = os.path.join(out, "node1.ledger")
if os.path.exists(path):
    os.remove(path)
stores[1] = LedgerStore(path)
c = LedgerCluster(4, **CFG)
for ts in range(1, 6):
    c.request("a", ts, f"k{ts}", ts)
c.run()
c.crash(0)                      # the primary goes: a view change to view 1
for ts in range(6, 8):
    c.request("b", ts, f"k{ts}", ts, to=1)
for _ in range(40):
    c.tick(1); c.stabilize()
for ts in range(8, 10):
    c.request("a", ts, f"k{ts}", ts, to=1)
c.stabilize()
c.request("a", 10, "k10", 10, to=1)
for _ in range(3):
    c.deliver(0) if c.network else None
r = c.nodes[1].replica
stores[1].close()
summary = {"config": CFG, "node": 1, **durable_summary(r)}
json.dump(summary, open(os.path.join(out, "node1.json"), "w"), indent=1, sort_keys=True)
print(json.dumps(summary["meta"]), summary["log"], summary["checkpoints"])
