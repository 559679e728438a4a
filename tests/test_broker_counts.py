"""The per-queue message counts of ``hdpbf bench paper --count-messages``: which queue is
RPC and which is consensus, and the difference of two snapshots (mesh/bench/broker_counts.py).
The counting against a live management API was run by hand (docs/benchmarks/paper.md, "Load taken off the broker")."""
from __future__ import annotations

from mesh.bench.broker_counts import MARKER, kind_of, routed, scale


def test_queues_are_classified_by_their_names():
    assert kind_of("node.0") == kind_of("node.13") == "consensus"
    assert kind_of("hdpbf.reply.admin/1a2b") == "consensus"        # a mesh client's replies
    for q in ("compute", "compute.cmp1", "compute_fanout_3f2e", "reply_5434dbaf07824074"):
        assert kind_of(q) == "rpc", q
    assert kind_of("celery") == kind_of("something") == "other"


def test_routed_is_the_difference_per_kind_without_the_marker():
    before = {"node.0": 10, "compute.cmp1": 4, MARKER: 3}
    after = {"node.0": 25, "node.1": 7, "compute.cmp1": 6, "reply_ab": 2, MARKER: 4,
             "x": 1}
    assert routed(before, after) == {"rpc": 4, "consensus": 22, "other": 1, "total": 27}
    assert scale({"rpc": 3, "total": 3}, 100 / 300) == {"rpc": 1.0, "total": 1.0}
