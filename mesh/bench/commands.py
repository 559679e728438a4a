"""``hdpbf bench``: one group, a command per benchmark (consensus, read, paper, verify).

Each is a thin shell over its module (``consensus.py``, ``read.py``, ``paper.py``;
``verify`` is the audit's, mesh/audit/verify.py): it runs, prints figures with rich and
writes JSON; it asserts nothing.
"""
from __future__ import annotations

import click
from rich.table import Table

from ..audit.verify import bench_verify
from ..clikit import console
from .backlog import backlog as bench_backlog
from .failover import failover as bench_failover
from .paper import bench_paper


@click.group()
def bench() -> None:
    """Benchmarks: they print figures and write JSON; they assert nothing."""


@bench.command("consensus")
@click.option("--nodes", type=click.IntRange(4, 64), default=4, show_default=True)
@click.option("--requests", "count", type=click.IntRange(100, 10_000_000), default=5000, show_default=True)
@click.option("--window", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="requests kept in flight")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=256, show_default=True)
@click.option("--low-load", type=click.IntRange(10, 100_000), default=200, show_default=True,
              help="one-at-a-time requests for the low-load latency")
@click.option("--durability", type=click.Choice(["full", "normal"]), default="full", show_default=True,
              help="ledger fsync policy (mesh.json 'durability')")
@click.option("--broker", default=None, metavar="URL")
@click.option("--backend", default=None, metavar="URL")
@click.option("--broker-nodes", type=click.IntRange(1, 9), default=1, show_default=True,
              help="> 1: also start a local RabbitMQ cluster of this many nodes (quorum "
                   "queues) and report it beside the single broker, in one run")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_consensus(nodes: int, count: int, window: int, max_batch: int, low_load: int,
                    durability: str, broker: str | None, backend: str | None,
                    broker_nodes: int, json_path: str | None) -> None:
    """Committed tx/s and commit latency on real RabbitMQ with one worker per node."""
    from . import consensus as bc
    kw = dict(nodes=nodes, requests=count, window=window, low_load=low_load, broker=broker,
              backend=backend, max_batch=max_batch, durability=durability)
    if broker_nodes > 1:
        from .failover import run_cluster_vs_single
        r = run_cluster_vs_single(broker_nodes, say=console().print, **kw)
    else:
        r = bc.run(console=console(), **kw)
    table = Table(title=f"consensus, {nodes} nodes, {count} requests, durability={durability} "
                        f"(real RabbitMQ + Redis)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, key in (("committed tx/s", "tx_per_s"), ("commit p50 ms (low load, all nodes)", "commit_p50_ms"),
                       ("commit p99 ms (low load, all nodes)", "commit_p99_ms"),
                       ("f+1 replies p50 ms (low load)", "quorum_reply_p50_ms"),
                       ("commit p50 ms under load", "loaded_commit_p50_ms"),
                       ("mean batch", "mean_batch"), ("messages per batch", "messages_per_batch"),
                       ("identical heads", "identical_heads"), ("broker nodes", "broker_nodes"),
                       ("single broker tx/s (same run)", "single_broker_tx_per_s"),
                       ("tx/s ratio cluster / single", "tx_per_s_ratio_to_single")):
        if key in r:
            table.add_row(label, str(r[key]))
    for who, ms in r["low_load_cpu_ms_per_request"].items():
        table.add_row(f"CPU ms per request, {who} (low load)", str(ms))
    console().print(table)
    bc.write_json(r, json_path)


@bench.command("read")
@click.option("--n", "count", type=click.IntRange(100, 10_000_000), default=20000, show_default=True)
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_read(count: int, redis_url: str, json_path: str | None) -> None:
    """Local ledger read vs a Redis GET, in the same run."""
    from . import read as br
    from .consensus import write_json
    write_json(br.run(n=count, redis_url=redis_url), json_path)


bench.add_command(bench_paper)
bench.add_command(bench_verify)
bench.add_command(bench_failover)
bench.add_command(bench_backlog)
