"""mesh.bench.read runs end to end on a small sample and cleans up after itself; with
Redis it measures all three reads, without it it says Redis is missing and why."""
from __future__ import annotations

import json

import pytest

from mesh.bench import read as bench_read
from tests.services import free_port

REQUIRED = ("ledger_get_p50_us", "ledger_get_p99_us", "sqlitedict_get_p50_us",
            "redis_get_p50_us", "redis_get_p99_us", "ratio_redis_over_ledger")


@pytest.mark.broker
def test_bench_read_small_run(tmp_path, backend_url):
    out = tmp_path / "read.json"
    result = bench_read.main(["--n", "300", "--keys", "50", "--json", str(out),
                              "--redis-url", backend_url])
    assert set(REQUIRED) <= set(result)
    assert "redis_error" not in result, result["redis_error"]
    assert 0 < result["ledger_get_p50_us"] <= result["ledger_get_p99_us"]
    assert 0 < result["redis_get_p50_us"] <= result["redis_get_p99_us"]
    assert result["sqlitedict_get_p50_us"] > 0 and result["ratio_redis_over_ledger"] > 0
    import redis
    client = redis.Redis.from_url(backend_url)
    assert list(client.scan_iter("hdpbf:bench_read:*")) == []     # keys removed
    assert json.loads(out.read_text()) == result


def test_without_redis_the_redis_figures_are_missing_with_the_reason(tmp_path, capsys):
    result = bench_read.main(["--n", "50", "--keys", "20", "--redis-url",
                              f"redis://127.0.0.1:{free_port()}/0"])
    assert result["ledger_get_p50_us"] > 0                         # the rest is kept
    assert result["redis_get_p50_us"] is None and result["ratio_redis_over_ledger"] is None
    assert "ConnectionError" in result["redis_error"]
    assert "Redis not measured" in capsys.readouterr().out


@pytest.mark.broker
def test_redis_going_away_mid_run_leaves_its_figures_missing_and_keeps_the_rest(
        tmp_path, backend_url, monkeypatch):
    import redis
    real_get, calls = redis.Redis.get, []

    def get(self, name):
        calls.append(name)
        if len(calls) > 100:
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        return real_get(self, name)
    monkeypatch.setattr(redis.Redis, "get", get)
    result = bench_read.main(["--n", "300", "--keys", "50", "--redis-url", backend_url])
    assert result["redis_get_p50_us"] is None and result["ratio_redis_over_ledger"] is None
    assert result["redis_error"].startswith("ConnectionError: Connection reset by peer")
    assert result["ledger_get_p50_us"] > 0 and result["sqlitedict_get_p50_us"] > 0
    assert list(redis.Redis.from_url(backend_url).scan_iter("hdpbf:bench_read:*")) == []
