"""``hdpbf bench``: one group, a command per benchmark (consensus, read, paper, verify).

Each is a thin shell over its module (``consensus.py``, ``read.py``, ``paper.py``;
``verify`` is the audit's, mesh/audit/verify.py): it runs, prints figures with rich and
writes JSON; it asserts nothing.  A figure it cannot have is printed and written as
missing, with the reason; a run the world stops ends in one line of error
(mesh/bench/missing.py).
"""
from __future__ import annotations

import click
from rich.table import Table

from ..audit.verify import bench_verify
from ..clikit import BadInput, console
from .backlog import backlog as bench_backlog
from .failover import failover as bench_failover
from .missing import BenchGroup
from .paper import bench_paper


@click.group(cls=BenchGroup)
def bench() -> None:
    """Benchmarks: they print figures and write JSON; they assert nothing."""


@bench.command("consensus")
@click.option("--nodes", "nodes_spec", default="4", show_default=True, metavar="N[,N...]",
              help="mesh size; several (4,7,10,16) run one after another, interleaved with --votes")
@click.option("--requests", "count", type=click.IntRange(100, 10_000_000), default=5000, show_default=True)
@click.option("--window", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="requests kept in flight")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=256, show_default=True)
@click.option("--low-load", type=click.IntRange(10, 100_000), default=200, show_default=True,
              help="one-at-a-time requests for the low-load latency")
@click.option("--low-load-gap", type=click.FloatRange(0, 60), default=0.0, show_default=True,
              help="seconds between the low-load requests (an idle mesh between them)")
@click.option("--durability", type=click.Choice(["full", "normal"]), default="full", show_default=True,
              help="ledger fsync policy (mesh.json 'durability')")
@click.option("--votes", type=click.Choice(["all", "collector", "both"]), default="all", show_default=True,
              help="vote routing (mesh.json 'votes'): all-to-all, collector, or both interleaved")
@click.option("--rounds", type=click.IntRange(1, 100), default=None,
              help="repeat every configuration, interleaved round by round [default: 1; "
                   "3 with --baseline]")
@click.option("--baseline", default=None, metavar="REV",
              help="A/B: run the commit REV (git archive) and this tree alternately, each "
                   "run on a fresh RabbitMQ vhost, --rounds rounds; medians and ratios "
                   "(mesh/bench/ab.py)")
@click.option("--broker", default=None, metavar="URL")
@click.option("--backend", default=None, metavar="URL")
@click.option("--broker-nodes", type=click.IntRange(1, 9), default=1, show_default=True,
              help="> 1: also start a local RabbitMQ cluster of this many nodes (quorum "
                   "queues) and report it beside the single broker, in one run")
@click.option("--followers", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="verified non-validating followers to run beside the validators")
@click.option("--netns", is_flag=True,
              help="every validator and follower on a network-namespace host of its own (root)")
@click.option("--followers-nice", type=click.IntRange(0, 19), default=0, show_default=True,
              help="run the followers under nice N: on one machine they then take only the CPU "
                   "validators leave, as on hosts of their own")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="one configuration: its figures; several: {\"runs\": [...]} in run order")
def bench_consensus(nodes_spec: str, count: int, window: int, max_batch: int, low_load: int,
                    low_load_gap: float, durability: str, votes: str, rounds: int | None,
                    baseline: str | None, broker: str | None, backend: str | None, broker_nodes: int, followers: int,
                    netns: bool, followers_nice: int, json_path: str | None) -> None:
    """Committed tx/s, commit latency and CPU by stage on real RabbitMQ, one worker per node."""
    from . import consensus as bc
    try:
        nodes = [int(x) for x in nodes_spec.split(",")]
    except ValueError:
        raise BadInput(f"--nodes must be integers separated by commas, got {nodes_spec!r}") from None
    if any(not 4 <= n <= 64 for n in nodes):
        raise BadInput(f"--nodes must each be in 4..64, got {nodes_spec!r}")
    modes = {"all": ["all-to-all"], "collector": ["collector"], "both": ["all-to-all", "collector"]}[votes]
    if baseline is not None:
        if len(nodes) > 1 or len(modes) > 1 or broker_nodes > 1 or followers or netns or low_load_gap:
            raise BadInput("--baseline compares one configuration with the flags every bench "
                           "since the baseline knows: one --nodes, one --votes, no "
                           "--broker-nodes, --followers, --netns or --low-load-gap")
        from .ab import run_ab
        out = run_ab(baseline, rounds=rounds or 3, nodes=nodes[0], requests=count,
                     low_load=low_load, window=window, max_batch=max_batch,
                     durability=durability, broker=broker, backend=backend,
                     votes=None if votes == "all" else modes[0], say=console().print)
        console().print(_ab_table(out))
        if "critical_path_ms" in out:
            console().print(_critical_path_table([out]))
        bc.write_json(out, json_path)
        return
    rounds = rounds or 1
    kw = dict(requests=count, window=window, low_load=low_load, broker=broker, backend=backend,
              max_batch=max_batch, durability=durability, low_load_gap=low_load_gap,
              followers=followers, netns=netns, followers_nice=followers_nice)
    if broker_nodes > 1:
        if len(nodes) > 1 or len(modes) > 1 or rounds > 1:
            raise BadInput("--broker-nodes compares one configuration: give one --nodes, one "
                           "--votes and no --rounds")
        from .failover import run_cluster_vs_single
        runs = [run_cluster_vs_single(broker_nodes, say=console().print, nodes=nodes[0],
                                      votes=modes[0], **kw)]
    else:
        runs = bc.run_matrix(nodes, modes, rounds=rounds, say=console().print,
                             console=console(),
                             on_result=lambda so_far: bc.write_json({"runs": so_far}, json_path),
                             **kw)
    console().print(_consensus_table(runs, count, durability))
    console().print(_stages_table(runs))
    if any(r.get("critical_path_ms") for r in runs):
        console().print(_critical_path_table(runs))
    bc.write_json(runs[0] if len(runs) == 1 else {"runs": runs}, json_path)


def _ab_table(out: dict) -> Table:
    table = Table(title=f"A/B: {out['baseline']} vs this tree, n={out['nodes']}, "
                        f"{out['requests']} requests, {out['rounds']} rounds alternating "
                        f"on fresh vhosts (tree / baseline)")
    for col in ("figure", "baseline rounds", "tree rounds", "baseline median", "tree median", "ratio"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for label, key, ratio in (("committed tx/s", "tx_per_s", "tx_per_s_ratio"),
                              ("commit p50 ms (low load)", "commit_p50_ms", "commit_p50_ratio")):
        table.add_row(label, " / ".join(str(v) for v in out[f"baseline_{key}_rounds"]),
                      " / ".join(str(v) for v in out[f"{key}_rounds"]),
                      str(out[f"baseline_{key}"]), str(out[key]), str(out[ratio]))
    for what, why in out["missing"].items():
        table.add_row(f"missing: {what}", why, "", "", "", "")
    return table


_CONSENSUS_ROWS = (
    ("committed tx/s", "tx_per_s"), ("commit p50 ms (low load, all nodes)", "commit_p50_ms"),
    ("commit p99 ms (low load, all nodes)", "commit_p99_ms"),
    ("f+1 replies p50 ms (low load)", "quorum_reply_p50_ms"),
    ("commit p50 ms under load", "loaded_commit_p50_ms"),
    ("mean batch", "mean_batch"), ("messages per batch", "messages_per_batch"),
    ("messages per batch (low load)", "low_load_messages_per_batch"),
    ("task runs per request (low load)", "low_load_task_runs_per_request"),
    ("identical heads", "identical_heads"), ("highest view at the end", "view_max"))
_BROKER_ROWS = (("broker nodes", "broker_nodes"),
                ("single broker tx/s (same run)", "single_broker_tx_per_s"),
                ("tx/s ratio cluster / single", "tx_per_s_ratio_to_single"))
_FOLLOWER_ROWS = (("followers", "followers"), ("follower lag p50 ms (low load)", "follower_lag_p50_ms"),
                  ("follower lag p99 ms (low load)", "follower_lag_p99_ms"),
                  ("follower lag p50 ms under load", "follower_lag_loaded_p50_ms"),
                  ("follower lag p99 ms under load", "follower_lag_loaded_p99_ms"),
                  ("followers at head after the last commit, s", "follower_catchup_s"),
                  ("pushed blocks received per block", "follower_pushes_per_block"))


def _label(r: dict) -> str:
    return f"n={r['nodes']} {r['votes']}" + (f" #{r['round']}" if r.get("round", 1) > 1 else "")


def _consensus_table(runs: list[dict], count: int, durability: str) -> Table:
    table = Table(title=f"consensus, {count} requests, durability={durability} (real RabbitMQ + Redis)")
    table.add_column("figure")
    for r in runs:
        table.add_column(_label(r), justify="right")
    rows = list(_CONSENSUS_ROWS)
    if any("broker_nodes" in r for r in runs):
        rows += _BROKER_ROWS
    if any(r.get("followers") for r in runs):
        rows += _FOLLOWER_ROWS
    for label, key in rows:
        table.add_row(label, *(_cell(r, key) for r in runs))
    for who in ("workers", "followers", "rabbitmq", "client"):
        if any(who in r.get("low_load_cpu_ms_per_request", {}) for r in runs):
            table.add_row(f"CPU ms per request, {who} (low load)",
                          *(str(r.get("low_load_cpu_ms_per_request", {}).get(who, "")) for r in runs))
    return table


def _cell(r: dict, key: str) -> str:
    if "failed" in r:
        return "FAILED"
    if key in r.get("missing", {}):
        return "missing"
    return str(r.get(key, ""))


def _stages_table(runs: list[dict]) -> Table:
    table = Table(title="workers' CPU ms per request at low load, by stage (pbft_tasks/stages.py)")
    table.add_column("stage")
    for r in runs:
        table.add_column(_label(r), justify="right")
    stages = list(dict.fromkeys(k for r in runs for k in r.get("low_load_stages_ms_per_request", {})))
    for stage in stages:
        table.add_row(stage, *(str(r.get("low_load_stages_ms_per_request", {}).get(stage, "")) for r in runs))
    return table


def _critical_path_table(runs: list[dict]) -> Table:
    """Each run's median low-load commit, hop by hop (mesh/bench/critical_path.py)."""
    from .critical_path import KEYS, totals
    table = Table(title="the median low-load commit, hop by hop (ms; mesh/bench/critical_path.py)")
    table.add_column("run")
    table.add_column("hop")
    for k in KEYS:
        table.add_column(k.removesuffix("_ms"), justify="right")
    for r in runs:
        path = r.get("critical_path_ms") or []
        label = _label(r) if "votes" in r else "tree"
        for h in path:
            table.add_row(label, h["hop"], *(str(h[k]) for k in KEYS))
        if path:
            t = totals(path)
            table.add_row(label, f"all hops: {t['total_ms']} (the commit took "
                                 f"{r.get('critical_path_commit_ms', '?')})",
                          *(str(t[k]) for k in KEYS))
    return table


@bench.command("read")
@click.option("--n", "count", type=click.IntRange(100, 10_000_000), default=20000, show_default=True)
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_read(count: int, redis_url: str, json_path: str | None) -> None:
    """Local ledger read vs a Redis GET, in the same run."""
    from . import read as br
    from .consensus import write_json
    write_json(br.run(n=count, redis_url=redis_url), json_path)


@bench.command("step")
@click.option("--requests", type=click.IntRange(100, 1_000_000), default=6000, show_default=True)
@click.option("--clients", type=click.IntRange(1, 1000), default=4, show_default=True)
@click.option("--window", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="requests each client keeps in flight")
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True,
              help="runs; the least disturbed is kept")
@click.option("--baseline", default=None, metavar="COMMIT",
              help="also run the same bench on this commit's tree (git archive)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_step_cmd(requests: int, clients: int, window: int, rounds: int, baseline: str | None,
                   json_path: str | None) -> None:
    """CPU per request of the core step and of the ledger write, in one process, no broker."""
    import tempfile

    from . import step as bs
    from .consensus import write_json
    trees = {"this tree": None}
    if baseline:
        trees[baseline] = baseline
    table = Table("tree", "step us/req", "ledger us/req", "of which gc", "steps", "persist rows", "blocks")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, commit in trees.items():
            if commit is None:
                r = bs.bench_step(requests, clients, window, rounds)
            else:
                r = bs.run_tree(bs.baseline_tree(commit, tmp), requests, clients, window, rounds)
            result[name] = r
            table.add_row(name, f"{r['step_us_per_request']:.1f}", f"{r['ledger_us_per_request']:.1f}",
                          f"{r['gc_us_per_request']:.1f}", str(r["steps"]), str(r["rows"]), str(r["blocks"]))
    console().print(table)
    write_json(result, json_path)


@bench.command("reconfig")
@click.option("--broker", default=None, help="broker URL (default: mesh.json's default)")
@click.option("--backend", default=None, help="result backend URL")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--checkpoint-interval", type=click.IntRange(1), default=8, show_default=True)
@click.option("--log-window", type=click.IntRange(2), default=16, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_reconfig(broker: str | None, backend: str | None, data_dir: str | None,
                   checkpoint_interval: int, log_window: int, json_path: str | None) -> None:
    """Membership changes (add client, reader, follower; revoke the client) under a
    steady stream of updates on real workers, with no restart (mesh/bench/reconfig.py)."""
    import json as _json

    from . import reconfig as br
    from .consensus import write_json
    if log_window % checkpoint_interval or log_window < 2 * checkpoint_interval:
        raise BadInput("--log-window must be a multiple of --checkpoint-interval and at least twice it")
    result = br.run(broker, backend, data_dir, checkpoint_interval, log_window, say=console().print)
    write_json(result, json_path)
    console().print(_json.dumps(result, indent=2, sort_keys=True), markup=False, highlight=False)


bench.add_command(bench_paper)
bench.add_command(bench_verify)
bench.add_command(bench_failover)
bench.add_command(bench_backlog)
