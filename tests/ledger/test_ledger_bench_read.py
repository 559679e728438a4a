"""mesh.bench.read runs end to end on a small sample and cleans up after itself."""
from __future__ import annotations

import json

from mesh.bench import read as bench_read

REQUIRED = ("ledger_get_p50_us", "ledger_get_p99_us", "sqlitedict_get_p50_us",
            "redis_get_p50_us", "redis_get_p99_us", "ratio_redis_over_ledger")


def test_bench_read_small_run(tmp_path, monkeypatch):
    out = tmp_path / "read.json"
    result = bench_read.main(["--n", "300", "--keys", "50", "--json", str(out)])
    assert set(REQUIRED) <= set(result)
    assert 0 < result["ledger_get_p50_us"] <= result["ledger_get_p99_us"]
    assert result["sqlitedict_get_p50_us"] > 0
    if result.get("redis_error") is None:
        assert result["ratio_redis_over_ledger"] > 0
        import redis
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        assert list(client.scan_iter("hdpbf:bench_read:*")) == []     # keys removed
    assert json.loads(out.read_text()) == result
