"""``hdpbf bench consensus`` end to end on a small run: it must report figures that
describe the run it made (not assert on speed: these machines are noisy)."""
from __future__ import annotations

import os

import pytest

from mesh.bench import consensus as bc

pytestmark = pytest.mark.broker


def test_bench_consensus_reports_its_own_run(tmp_path, broker_url):
    r = bc.run(nodes=4, requests=300, window=100, low_load=20, broker=broker_url,
               backend=os.environ.get("HDPBF_TEST_BACKEND_URL"), data_dir=str(tmp_path))
    assert r["identical_heads"] is True and r["rejected"] == {}
    # the view every node ended in (a view change would be part of the figures)
    assert sorted(r["views"]) == [0, 1, 2, 3] and r["view_max"] == max(r["views"].values())
    # 50 warm-up + 20 low-load + 300 loaded updates, in blocks of at least one
    assert 1 <= r["blocks"] <= 300 and r["mean_batch"] == round(300 / r["blocks"], 1)
    assert 0 < r["quorum_reply_p50_ms"] <= r["commit_p50_ms"] <= r["commit_p99_ms"]
    cpu = r["low_load_cpu_ms_per_request"]
    assert cpu["workers"] > 0 and cpu["client"] > 0
    assert cpu.get("rabbitmq", 1) > 0  # present (and positive) when RabbitMQ runs here
    # n=4: per batch 1 pre-prepare broadcast, 3 prepare and 4 commit broadcasts, counted
    # per receiver (3 each), plus replies: never fewer than the 24 node-to-node messages
    assert r["messages_per_batch"] >= 24
    # the median low-load commit hop by hop: from the client's request to the last reply,
    # and the hops add up to that commit's latency (less the client's own processing)
    path = r["critical_path_ms"]
    assert path[0]["hop"] == "client -> node 0: Request" and path[-1]["hop"].endswith("-> client: Reply")
    assert all(set(h) == {"hop", "queue_ms", "cpu_ms", "fsync_ms", "broker_ms"} for h in path)
    assert all(h[k] >= 0 for h in path for k in ("queue_ms", "cpu_ms", "fsync_ms", "broker_ms"))
    total = r["critical_path_total_ms"]["total_ms"]
    assert 0 < total <= r["critical_path_commit_ms"] * 1.05 + 0.1  # rounding, clock slew
