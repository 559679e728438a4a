"""The paper's experiment, reproduced and set against the obvious alternative.

``hdpbf bench paper`` makes the 100 ``get_vnc_console`` calls of Kim and Park (2020,
"Performance evaluation"; figures in docs/benchmarks/paper.md; the order is ``mesh.bench.workload.paper_sequence``)
four ways in one run, back to back as the paper's script made them: ``rpc`` (plain
OpenStack), ``redis`` (cache-aside), ``hdpbf`` (two-step with the API node's own
answers) and ``hdpbf-ledger`` (two-step from the ledger alone, the paper's design);
with nova installed, two more through nova 34's own client (``paper_nova``):
``nova-rpc`` (``rabbit://``) and ``nova-hdpbf`` (``hdpbf+rabbit://``, the driver).
The rig and the four clients are in ``mesh/bench/paper_rig.py``; the freshness check,
summary, table and plot in ``mesh/bench/paper_report.py``.  This module owns the run
and the ``hdpbf bench paper`` command, and re-exports what callers import from
``mesh.bench.paper``.

Fairness rules: repetitions are interleaved and the order of configurations rotates
each repetition; every (configuration, repetition) gets fresh instance ids so each one
starts cold; every path is warmed up once on an instance outside the workload; after an
hdpbf run (either configuration) we wait until its entries are committed, so the next
run starts on a quiet mesh.  In the same run we time ``ConsoleReader.step1`` (the ledger
read alone) and a Redis GET of the same value, interleaved.

Correctness, checked on every answer (own answers included) against what compute
served (``ComputeService.served``): see ``paper_report.check_answers``.

Figures, never assertions (the tests assert).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from typing import Any, Callable

from rich.markup import escape  # a skip reason names pip extras, '.[test]': not markup

from .consensus import write_json
from . import broker_counts as counts
from .broker_counts import PrivateBroker, RabbitCounters
from .missing import Missing
from .paper_nova import FLOOR_CALLS, NOVA_CONFIGS, NovaSide
from .paper_report import (CallRecord, check_answers, median_series, plot, report, summarize,
                           table)
from .paper_rig import (CONFIGS, CONSOLE_TYPE, HOSTS, TWO_STEP, BrokerRig, EmbeddedRig, Rig,
                        _quiet_imports, compute_main, host_of)
from .workload import INSTANCES, first_calls, paper_sequence

# -- the run ------------------------------------------------------------------------------
STEADY_ROUNDS = 10

def make_instance_ids(repeat: int, configs: tuple[str, ...] = CONFIGS + NOVA_CONFIGS
                      ) -> dict[tuple[str, int, int], str]:
    """Fresh ids per (configuration, repetition, instance number): each run starts cold."""
    return {(c, r, k): str(uuid.uuid4()) for c in configs for r in range(repeat)
            for k in range(1, INSTANCES + 1)}


def run(repeat: int = 3, service_ms: float = 0.0, nodes: int = 4, token_ttl: float = 600.0,
        embedded: bool = False, broker: str | None = None, backend: str | None = None,
        redis_url: str | None = None, rpc_timeout: float = 10.0, data_dir: str | None = None,
        console: Any = None, progress: bool = True, nova: bool = True,
        rabbit_api: str | None = None, steady_rounds: int = STEADY_ROUNDS,
        only: tuple[str, ...] | None = None, floor_calls: int = FLOOR_CALLS) -> dict:
    """The run; ``only`` keeps those configurations (default: every one that can run)."""
    say = console.print if console is not None else print
    _quiet_imports()
    seq = paper_sequence()
    ids = make_instance_ids(repeat)
    warm = {host: str(uuid.uuid4()) for host in HOSTS}  # nova objects want real uuids
    hosts = {iid: host_of(k) for (c, r, k), iid in ids.items()}
    hosts.update({iid: host for host, iid in warm.items()})
    base = data_dir or tempfile.mkdtemp(prefix="hdpbf-paper-")
    common = dict(nodes=nodes, service_ms=service_ms, token_ttl=token_ttl, redis_url=redis_url,
                  rpc_timeout=rpc_timeout, instance_ids=hosts, say=say)
    rig: Rig = EmbeddedRig(base, **common) if embedded else BrokerRig(base, broker=broker,
                                                                     backend=backend, **common)
    records: list[CallRecord] = []
    msgs: dict[str, dict] = {}      # messages RabbitMQ routed per configuration
    steady: dict[str, dict] = {}
    steady_ms: dict[str, float] = {}  # mean call at steady state (every instance recorded)
    wanted = set(only) if only else set(CONFIGS + NOVA_CONFIGS)
    use_nova, nova = nova and bool(wanted & set(NOVA_CONFIGS)), NovaSide(rig)
    nova_on = False
    nova_served: list[dict] = []
    missing = Missing()
    warnings: list[str] = []
    tally: counts.Tally | None = None
    try:
        rig.start()
        configs = [c for c in CONFIGS if c in wanted and (c != "redis" or rig.redis is not None)]
        if rig.redis is None and "redis" in wanted:
            say(f"[yellow]redis configuration skipped: {escape(rig.redis_skip)}[/yellow]")
        nova_on = use_nova and nova.start()
        if nova_on:
            configs += [c for c in NOVA_CONFIGS if c in wanted]
        elif use_nova:
            say(f"[yellow]nova configurations skipped: {escape(nova.skip)}[/yellow]")
        if not configs:
            raise RuntimeError(f"no configuration of {sorted(wanted)} can run here")

        def call(c: str, iid: str):
            return nova.call(c, iid) if c in NOVA_CONFIGS else rig.call(c, iid)
        for c in configs:                               # warm every path once
            for iid in warm.values():
                call(c, iid)
        _quiet_start(rig, nova, configs, list(warm.values()), "the warm-up calls", warnings, say)
        if rabbit_api is not None:
            from urllib.parse import urlsplit
            path = urlsplit(rig.cfg.broker_url).path
            tally = counts.Tally(RabbitCounters(rabbit_api, path[1:] if path not in ("", "/", "//")
                                                else "/"))
        schedule = [(r, c) for r in range(repeat)
                    for c in configs[r % len(configs):] + configs[:r % len(configs)]]
        bar = _progress(console, progress)
        with bar:
            task = bar.add_task("calls", total=len(schedule) * len(seq))
            for r, c in schedule:
                bar.update(task, description=f"{c:>12} repeat {r + 1}/{repeat}")
                if tally is not None and tally.before is None:
                    tally.mark()
                for n, (_, k) in enumerate(seq, start=1):
                    iid = ids[(c, r, k)]
                    w0 = time.time()
                    t0 = time.perf_counter()
                    info, step = call(c, iid)
                    dt = time.perf_counter() - t0
                    records.append(CallRecord(c, r + 1, n, k, dt * 1000, step, iid, w0,
                                              time.time(), info))
                    bar.advance(task)
                # start the next run on a quiet mesh
                _quiet_start(rig, nova, [c], [ids[(c, r, k)] for k in range(1, INSTANCES + 1)],
                             f"{c} repeat {r + 1}", warnings, say)
                if tally is not None:  # this run's "after" is the next run's "before"
                    got = tally.mark()
                    if got is not None:
                        msgs[c] = counts.add(msgs.get(c, {}), got)
        last_r = repeat - 1
        counted_runs = tally is not None and tally.ok
        if counted_runs:  # steady state: the workload again and again on the same instances
            for c in configs:
                bar_say = f"steady state: {c}, {steady_rounds} x {len(seq)} calls"
                say(bar_say)
                ms = []
                for _ in range(steady_rounds):
                    for _, k in seq:
                        t0 = time.perf_counter()
                        call(c, ids[(c, last_r, k)])
                        ms.append((time.perf_counter() - t0) * 1000)
                steady_ms[c] = round(sum(ms) / len(ms), 4)
                got = tally.mark()
                if got is None:
                    break
                steady[c] = counts.scale(got, 1000 / (steady_rounds * len(seq)))
        micro = dict.fromkeys(RIG_MICRO)
        with missing.guard(*RIG_MICRO):
            micro.update(rig.micro([ids[("hdpbf", last_r, k)] for k in range(1, INSTANCES + 1)]))
        if nova_on:
            if "nova-hdpbf" in configs:
                micro.update(dict.fromkeys(NOVA_MICRO))
                with missing.guard(*NOVA_MICRO):
                    micro.update(nova.micro([ids[("nova-hdpbf", last_r, k)]
                                             for k in range(1, INSTANCES + 1)]))
            micro.update(dict.fromkeys(NOVA_FLOOR))
            with missing.guard(*NOVA_FLOOR):
                micro.update(nova.floor(floor_calls))
            nova_served = nova.served()
            nova.close()
            nova_on = False
        if isinstance(rig, BrokerRig):
            rig.close_api_side()
            rig.reader = rig.ledger_reader = rig.transport = rig.redis = None
            rig.stop_compute()
        served = rig.served() + nova_served
    finally:
        if nova_on:
            nova.close()
        rig.close()
        if data_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    result = summarize(records, served, configs, seq)
    result.update(micro)
    if tally is not None:
        # a count that lost a snapshot is no count: the runs' counts go whole if the
        # counters failed during the runs, the steady-state ones if they failed after
        if not counted_runs:
            msgs, steady = {}, {}
            missing.note("broker_messages", tally.error)
        if not tally.ok:
            steady = {}
            missing.note("broker_messages_per_1000_steady", tally.error)
        for c in configs:
            result["configs"][c]["broker_messages"] = (
                counts.scale(msgs[c], 100 / (repeat * len(seq))) if c in msgs else None)
            result["configs"][c]["broker_messages_per_1000_steady"] = steady.get(c)
            result["configs"][c]["steady_mean_ms"] = steady_ms.get(c)
        result["broker_counts"] = {"source": "RabbitMQ management API, per-queue message_stats"
                                             ".publish", "steady_rounds": steady_rounds}
    result.update(mode=rig.mode, label=rig.label, compute=rig.compute_mode, nodes=nodes,
                  repeat=repeat, service_ms=service_ms, token_ttl=token_ttl,
                  skipped={**({"redis": rig.redis_skip} if "redis" in wanted
                               and "redis" not in configs else {}),
                           **({"nova": nova.skip} if nova.skip else {})},
                  missing=dict(missing), warnings=warnings)
    nova_rpc = result["configs"].get("nova-rpc")
    if nova_rpc is not None:
        if "nova-hdpbf" in result["configs"]:
            result["nova_hdpbf_vs_nova_rpc_pct"] = round(
                100 * result["configs"]["nova-hdpbf"]["mean_ms"] / nova_rpc["mean_ms"], 2)
        floor = result.get("nova_client_floor_ms")
        if floor is not None:
            result["nova_client_floor_vs_nova_rpc_pct"] = round(
                100 * floor / nova_rpc["mean_ms"], 2)
            # The best a driver can do: every instance's first call is a nova-rpc call,
            # every other one costs the floor alone.
            firsts = len(first_calls(seq))
            best = (firsts * nova_rpc["mean_ms"] + (len(seq) - firsts) * floor) / len(seq)
            result["nova_hdpbf_best_pct"] = round(100 * best / nova_rpc["mean_ms"], 2)
    return result


# what rig.micro, nova.micro and nova.floor measure, reported None when they cannot
RIG_MICRO = ("step1_p50_us", "step1_p99_us", "redis_get_p50_us", "redis_get_p99_us")
NOVA_MICRO = ("driver_step1_p50_us", "driver_step1_p99_us")
NOVA_FLOOR = ("nova_client_floor_ms", "nova_client_floor_p50_ms", "nova_serialize_ms",
              "nova_serialize_p50_ms", "nova_instance_fields")


def _quiet_start(rig: Rig, nova: NovaSide, configs: list[str], iids: list[str], after: str,
                 warnings: list[str], say: Callable) -> None:
    """Wait until what ``after`` recorded is committed, so the next calls start on a
    quiet mesh; if it is not, say so and go on (the figures stay, with the warning)."""
    try:
        if set(configs) & set(TWO_STEP):
            rig.wait_committed(iids)
        if "nova-hdpbf" in configs:
            nova.wait_committed(iids)
    except TimeoutError as exc:
        warnings.append(f"after {after}: {exc}; the next calls started on a busy mesh")
        say(f"[yellow]{warnings[-1]}[/yellow]")


def _progress(console: Any, enabled: bool) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=not enabled)


# -- the click command ---------------------------------------------------------------------

import click  # noqa: E402

from ..clikit import console  # noqa: E402


@click.command("paper")
@click.option("--repeat", type=click.IntRange(1, 100), default=3, show_default=True,
              help="interleaved repetitions of the 100 calls per configuration")
@click.option("--service-ms", type=click.FloatRange(0, 10_000), default=0.0, show_default=True,
              help="compute sleeps this long per call (emulates the hypervisor)")
@click.option("--nodes", type=click.IntRange(4, 64), default=4, show_default=True)
@click.option("--token-ttl", type=click.FloatRange(1, 86_400), default=600.0, show_default=True,
              help="console token lifetime, s (nova's [consoleauth] token_ttl)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default="bench-paper.png",
              show_default=True)
@click.option("--embedded", is_flag=True, help="one process, no broker (in-memory mesh, fake: RPC)")
@click.option("--broker", default=None, metavar="URL", help="AMQP URL (default: mesh default)")
@click.option("--backend", default=None, metavar="URL", help="Celery result backend (Redis)")
@click.option("--redis-url", default=None, metavar="URL",
              help="Redis for the cache-aside configuration (default: the result backend)")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="keep the mesh here (default: a temporary directory, removed afterwards)")
@click.option("--count-messages", is_flag=True,
              help="count the messages RabbitMQ routes per configuration (RPC and consensus, "
                   "per 100 calls and at steady state): starts a private RabbitMQ with the "
                   "management plugin for the run, unless --rabbit-api is given")
@click.option("--rabbit-api", default=None, metavar="URL",
              help="management API of the --broker (http://user:pass@host:15672) for "
                   "--count-messages")
@click.option("--nova/--no-nova", default=True, show_default=True,
              help="also nova-rpc and nova-hdpbf, through nova 34's own client (needs nova "
                   "installed: pip install -e '.[test]'; broker rig only)")
@click.option("--only", "only", multiple=True, type=click.Choice(CONFIGS + NOVA_CONFIGS),
              help="run only this configuration (repeatable; default: all)")
@click.option("--steady-rounds", type=click.IntRange(1, 100), default=STEADY_ROUNDS,
              show_default=True, help="--count-messages: times the workload is repeated on "
              "the same instances for the steady-state count")
@click.option("--floor-calls", type=click.IntRange(10, 100_000), default=FLOOR_CALLS,
              show_default=True, help="calls timed for nova's client-side floor")
def bench_paper(repeat: int, service_ms: float, nodes: int, token_ttl: float,
                json_path: str | None, png_path: str, embedded: bool, broker: str | None,
                backend: str | None, redis_url: str | None, data_dir: str | None,
                count_messages: bool, rabbit_api: str | None, nova: bool,
                only: tuple[str, ...], steady_rounds: int, floor_calls: int) -> None:
    """The paper's 100 get_vnc_console calls: rpc vs redis cache vs hdpbf two-step (with
    the API node's own answers, and from the ledger alone)."""
    out = console()
    if count_messages and embedded:
        raise click.UsageError("--count-messages needs the broker rig (not --embedded)")
    if rabbit_api and not count_messages:
        raise click.UsageError("--rabbit-api is for --count-messages")
    kw = dict(repeat=repeat, service_ms=service_ms, nodes=nodes, token_ttl=token_ttl,
              embedded=embedded, broker=broker, backend=backend, redis_url=redis_url,
              data_dir=data_dir, console=out, nova=nova, only=only or None,
              steady_rounds=steady_rounds, floor_calls=floor_calls)
    if count_messages and rabbit_api is None:
        if broker is not None:
            raise click.UsageError("--count-messages with --broker needs --rabbit-api (the "
                                   "broker's management API); without --broker a private "
                                   "RabbitMQ with the management plugin is started")
        pdir = tempfile.mkdtemp(prefix="hdpbf-paper-broker-")
        out.print("starting a private RabbitMQ with the management plugin (its message "
                  "counters); the machine's own broker has none")
        try:
            with PrivateBroker(pdir) as pb:
                out.print(f"private broker {pb.broker_url}, management {pb.api_url.split('@')[-1]}")
                result = run(**{**kw, "broker": pb.broker_url}, rabbit_api=pb.api_url)
        finally:
            shutil.rmtree(pdir, ignore_errors=True)
    else:
        result = run(**kw, rabbit_api=rabbit_api if count_messages else None)
    plot(result, png_path)
    result["png"] = os.path.abspath(png_path)
    result["plot_series"] = ("median over repeats" if repeat > 1 else "the one run")
    report(result, out)
    out.print(f"plot: {png_path} (per-call series: {result['plot_series']})")
    if json_path:
        write_json(result, json_path)
        out.print(f"JSON: {json_path}")


__all__ = ["run", "summarize", "check_answers", "plot", "table", "report", "median_series",
           "paper_sequence", "make_instance_ids", "compute_main", "CallRecord", "CONFIGS",
           "TWO_STEP", "CONSOLE_TYPE", "HOSTS", "host_of"]
