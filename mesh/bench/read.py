"""Read-path benchmark: a node's local ledger read against sqlitedict and a Redis GET.

Owns: the measurement behind step 2a of the two-step read (docs/nova.md, "Two-step reads"): is a
local ledger hit cheap enough to try before anything else?  It builds a temporary ledger
of ``keys`` records with ``ledger.LedgerStore`` (real blocks, real JSON records), stores
the same JSON records in Redis under a private prefix, and then, in ONE loop, times

- ``LedgerReader.get``   raw read-only sqlite3 by primary key + JSON decode + expiry check
- sqlitedict ``d[key]``  the same row through sqlitedict's background thread + decode
- Redis ``GET``          redis-py round trip to the local server + JSON decode

interleaved (the order rotates every iteration) so machine noise hits all three alike,
each call timed with ``time.perf_counter_ns``.  Redis keys are deleted afterwards; the
database is never flushed (it is shared with Celery's result backend).

Run: ``.venv/bin/python -m mesh.bench.read [--n 20000] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
import uuid
from typing import Any, Callable, Optional

from sqlitedict import SqliteDict

from ledger import LedgerReader, LedgerStore, build_block
from ledger import format as fmt
from ledger.memory import put

from .missing import UNAVAILABLE, reason
from .stats import percentile

BLOCK_SIZE = 250
WARMUP = 300


def _record_value(i: int) -> dict:
    """A value shaped like what nova-api asks for: an instance's placement."""
    return {"instance": str(uuid.UUID(int=i)), "host": f"compute-{i % 16}",
            "state": "active", "flavor": "m1.small", "ports": [f"10.0.{i % 250}.{i % 200}"]}


def _build_ledger(path: str, keys: list[str]) -> None:
    with LedgerStore(path, durability="normal") as store:
        for start in range(0, len(keys), BLOCK_SIZE):
            ops = [put(k, _record_value(start + j)) for j, k in enumerate(keys[start:start + BLOCK_SIZE])]
            store.apply({}, [build_block(store.height + 1, store.head, ops)])


def run(n: int = 20000, redis_url: str = "redis://127.0.0.1:6379/0", keys: int = 1000,
        seed: int = 1, show: bool = True) -> dict:
    """Measure and return p50/p99 latencies (us) of the three reads; print a table."""
    rng = random.Random(seed)
    names = [f"vm/{uuid.UUID(int=rng.getrandbits(128))}" for _ in range(keys)]
    result: dict[str, Any] = {"n": n, "keys": keys}
    with tempfile.TemporaryDirectory(prefix="bench_read-") as tmp:
        path = os.path.join(tmp, "node0.sqlite")
        _build_ledger(path, names)
        reader = LedgerReader(path)
        sdict = SqliteDict(path, tablename=fmt.TABLE, flag="r", journal_mode="WAL",
                           encode=fmt.encode, decode=fmt.decode,
                           encode_key=fmt.identity, decode_key=fmt.identity, outer_stack=False)
        redis_client, prefix, redis_error = None, f"hdpbf:bench_read:{uuid.uuid4().hex}:", None
        try:
            import redis
            redis_client = redis.Redis.from_url(redis_url, socket_timeout=2)
            pipe = redis_client.pipeline(transaction=False)
            for name in names:
                pipe.set(prefix + name, fmt.encode(reader.get_record(name)))
            pipe.execute()
        except Exception as exc:        # no server: still report the local figures
            redis_error, redis_client = f"{type(exc).__name__}: {exc}", None
        try:
            now = time.time()

            def ledger_get(k: str) -> Any:
                return reader.get(k, now)

            def sqlitedict_get(k: str) -> Any:
                record = sdict[fmt.KV_PREFIX + k]
                return record if fmt.is_live(record, now) else None

            def redis_get(k: str) -> Any:
                raw = redis_client.get(prefix + k)
                record = None if raw is None else json.loads(raw)
                return record if fmt.is_live(record, now) else None

            probes: dict[str, Callable[[str], Any]] = {"ledger": ledger_get,
                                                       "sqlitedict": sqlitedict_get}
            if redis_client is not None:
                probes["redis"] = redis_get
            samples: dict[str, list[int]] = {name: [] for name in probes}

            def drop_redis(exc: BaseException, phase: str) -> None:
                # Redis went away mid-run: its figures are missing, the local ones stay
                nonlocal redis_error
                redis_error = f"{reason(exc)} ({phase}, after {len(samples['redis'])} reads)"
                del probes["redis"], samples["redis"]

            for k in names[:WARMUP]:
                for name, probe in list(probes.items()):
                    try:
                        assert probe(k) is not None
                    except UNAVAILABLE as exc:
                        if name != "redis":
                            raise
                        drop_redis(exc, "warming up")
            clock = time.perf_counter_ns
            for i in range(n):
                k = names[rng.randrange(keys)]
                order = list(probes.items())
                shift = i % len(order)
                for name, probe in order[shift:] + order[:shift]:
                    t0 = clock()
                    try:
                        probe(k)
                    except UNAVAILABLE as exc:
                        if name != "redis":
                            raise
                        drop_redis(exc, "measuring")
                        continue
                    samples[name].append(clock() - t0)
        finally:
            reader.close()
            sdict.close()
            if redis_client is not None:
                try:
                    for start in range(0, len(names), 500):
                        redis_client.delete(*(prefix + k for k in names[start:start + 500]))
                    redis_client.close()
                except UNAVAILABLE as exc:
                    result["redis_cleanup_error"] = (f"{reason(exc)}: keys {prefix}* left "
                                                     f"in Redis")

    for name, ns in samples.items():
        result[f"{name}_get_p50_us"] = round(percentile(ns, 50) / 1000, 2)
        result[f"{name}_get_p99_us"] = round(percentile(ns, 99) / 1000, 2)
    if redis_error is not None:
        result.update(redis_get_p50_us=None, redis_get_p99_us=None, redis_error=redis_error)
    result["ratio_redis_over_ledger"] = (
        round(result["redis_get_p50_us"] / result["ledger_get_p50_us"], 1)
        if result["redis_get_p50_us"] is not None else None)
    if show:
        _print_table(result)
    return result


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"local read latency, {result['n']} interleaved reads of "
                        f"{result['keys']} keys (us)")
    table.add_column("read")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    for name, label in (("ledger", "LedgerReader.get (sqlite3, ro)"),
                        ("sqlitedict", "sqlitedict d\\[key]"), ("redis", "Redis GET (redis-py)")):
        p50, p99 = result.get(f"{name}_get_p50_us"), result.get(f"{name}_get_p99_us")
        table.add_row(label, "-" if p50 is None else f"{p50:.1f}",
                      "-" if p99 is None else f"{p99:.1f}")
    console = Console()
    console.print(table)
    if result.get("redis_error"):
        console.print(f"[yellow]Redis not measured: {result['redis_error']}[/yellow]")
    else:
        console.print(f"Redis GET p50 / ledger get p50 = {result['ratio_redis_over_ledger']}x")


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="reads of each kind")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    result = run(n=args.n, redis_url=args.redis_url, keys=args.keys)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return result


if __name__ == "__main__":
    main()
