"""``hdpbf bench consensus --followers K`` on a small run: the follower figures describe
the run it made (no assertion on speed)."""
from __future__ import annotations

import json
import os

import pytest

from mesh.bench import consensus as bc

pytestmark = pytest.mark.broker


def test_bench_consensus_with_followers_reports_their_lag(tmp_path, broker_url):
    r = bc.run(nodes=4, requests=300, window=100, low_load=20, broker=broker_url,
               backend=os.environ.get("HDPBF_TEST_BACKEND_URL"), data_dir=str(tmp_path),
               followers=2)
    assert r["identical_heads"] is True and r["rejected"] == {} and r["follower_rejected"] == {}
    assert r["followers"] == 2
    # every low-load block reached both followers by push: one sample each per block
    assert r["follower_lag_samples"] >= 2 * 20
    assert 0 < r["follower_lag_p50_ms"] <= r["follower_lag_p99_ms"]
    assert r["follower_lag_loaded_p50_ms"] is not None and r["follower_catchup_s"] is not None
    assert r["low_load_cpu_ms_per_request"]["followers"] > 0
    bc.write_json(r, str(tmp_path / "r.json"))
    assert {"followers", "follower_lag_p50_ms", "follower_lag_p99_ms"} <= set(json.loads(
        (tmp_path / "r.json").read_text()))
