"""The consensus benchmark and the demo's workload: figures, never assertions.

``hdpbf bench consensus --nodes 4 --requests 5000`` starts one real Celery worker per
node on the local RabbitMQ (results in Redis), then measures, in one run:

- low load: requests one at a time; commit latency = submit -> a reply from *every*
  node (each reply is sent after that node appended the block to its ledger), and
  submit -> f+1 matching replies (what the client waits for);
- throughput: ``--requests`` updates kept ``--window`` in flight, bundled as the client
  does; committed tx/s = requests / (time until every node replied to the last one);
- messages per committed batch: node-to-node protocol messages sent, over blocks made,
  under load (``messages_per_batch``) and at low load (``low_load_messages_per_batch``:
  a PBFT batch at n=4 needs 3 + 3x3 + 4x3 = 24, plus checkpoints; more is
  retransmission);
- with ``--low-load-gap S`` the low-load requests are S seconds apart (an idle mesh
  between them, as with interactive use; the retransmission timer must not take the
  idle time for silence);
- CPU per request at low load (``low_load_cpu_ms_per_request``): all workers together,
  the client, and RabbitMQ when it runs on this machine.  With two cores, half their sum
  is a floor under the low-load latency.

The JSON file (``--json``) has ``nodes``, ``requests``, ``tx_per_s``, ``commit_p50_ms``,
``commit_p99_ms``, ``messages_per_batch``, ``views`` (each node's view at the end;
``view_max`` the highest: a view change during the run is part of its figures) and the
details; ``followers``,
``follower_lag_p50_ms`` and ``follower_lag_p99_ms`` always (None without followers).
``--followers K`` adds K followers and ``--netns`` puts every validator and follower on
a namespace host of its own (mesh/bench/followers.py says what the figures mean).

- the critical path of the median low-load commit (``critical_path_ms``: a list of
  ``{hop, queue_ms, cpu_ms, fsync_ms, broker_ms}`` from the client's publish to the last
  reply; ``critical_path_total_ms`` sums each kind; mesh/bench/critical_path.py);
- CPU by stage at low load: the workers' task runs per request and their CPU split by
  stage (decode, parse, verify, step, ledger, sign, publish, observe, task, event, ack;
  pbft_tasks/stages.py), the rest of the workers' CPU as ``rest``.

``votes`` picks the vote routing (mesh.json ``votes``: ``all-to-all`` or ``collector``).
The JSON file (``--json``) has ``nodes``, ``votes``, ``requests``, ``tx_per_s``,
``commit_p50_ms``, ``commit_p99_ms``, ``messages_per_batch``,
``cpu_ms_per_request_workers`` and the details; ``run_matrix`` runs several
configurations interleaved and returns their results in run order.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from typing import Any, Callable

import psutil

from ..client import MeshClient, Pending, SubmitTimeout
from . import critical_path
from .missing import UNAVAILABLE, Missing
from .stats import percentile


def protocol_sent(status: dict) -> int:
    """Messages a node sent for the protocol, its once-a-second statuses apart: they cost
    time, not batches (docs/PROTOCOL.md sec. 5.11)."""
    return status["sent"] - status.get("sent_status", 0)


def drive(client: MeshClient, count: int, window: int = 1000, chunk: int = 100,
          key_prefix: str = "k", every: bool = True, timeout: float = 120.0,
          progress: Callable[[int], None] | None = None) -> list[Pending]:
    """Submit ``count`` puts keeping at most ``window`` unfinished; returns them all."""
    done: list[Pending] = []
    inflight: list[Pending] = []
    sent = 0
    deadline = time.perf_counter() + timeout
    while sent < count or inflight:
        while sent < count and len(inflight) < window:
            n = min(chunk, count - sent, window - len(inflight))
            inflight += client.submit([client.put_request(f"{key_prefix}{sent + i}", sent + i) for i in range(n)])
            sent += n
        head = inflight[: chunk]
        client.wait(head, timeout=max(0.1, deadline - time.perf_counter()), every=every)
        finished = [p for p in inflight if (p.all_at if every else p.done_at) is not None]
        inflight = [p for p in inflight if (p.all_at if every else p.done_at) is None]
        done += finished
        client.forget(finished)
        if progress:
            progress(len(finished))
    return done


def latencies_ms(batch: list[Pending], every: bool = True) -> list[float]:
    return [((p.all_at if every else p.done_at) - p.sent_at) * 1000 for p in batch]


def run(nodes: int = 4, requests: int = 5000, window: int = 2000, low_load: int = 200,
        broker: str | None = None, backend: str | None = None, data_dir: str | None = None,
        max_batch: int = 256, durability: str = "full", console: Any = None,
        low_load_gap: float = 0.0, queue_type: str = "classic", followers: int = 0,
        netns: bool = False, votes: str = "all-to-all", followers_nice: int = 0) -> dict:
    from pbft_tasks.signing import Verifier
    from pbft_tasks.topology import client_keys, load_client_identity, node_keys

    from ..client import BrokerClientTransport
    from .followers import FollowerRig, lag_figures

    say = console.print if console is not None else print
    base = data_dir or tempfile.mkdtemp(prefix="hdpbf-bench-")
    rig = FollowerRig(base, nodes, followers, netns, broker, backend, max_batch, durability,
                      queue_type=queue_type, votes=votes, nice=followers_nice)
    cfg, mesh = rig.cfg, rig.mesh
    missing = Missing()
    t0 = time.perf_counter()
    try:
        rig.start(timeout=300)  # K=32 followers start slowly on a loaded 2-core box
        say(f"{nodes} workers ready in {time.perf_counter() - t0:.1f}s (data in {base})")
        client = MeshClient("admin", load_client_identity(cfg, "admin"), cfg.n,
                            Verifier(node_keys(cfg), client_keys(cfg)))
        client.transport = BrokerClientTransport(mesh.app, client)
        drive(client, 50, window=10, chunk=10, key_prefix="warm")
        # Low load: one request at a time, with the CPU it costs (where it can be read).
        if followers:
            rig.wait_followers(mesh.statuses()[0]["height"], timeout=60)
        pids = {i: p.pid for i, p in mesh.procs.items()}
        fpids = rig.follower_pids()
        fcpu0 = sum(process_cpu_s(p) for p in fpids)
        broker_pids = local_broker_pids()
        low_before = mesh.statuses()
        stages0 = mesh.statuses()
        threads0 = {i: thread_cpu_s(p) for i, p in pids.items()}
        cpu0 = {i: process_cpu_s(p) for i, p in pids.items()}
        t_low = time.time()
        broker0, client0 = {p: process_cpu_s(p) for p in broker_pids}, time.process_time()
        low = []
        for i in range(low_load):
            if low_load_gap and i:
                time.sleep(low_load_gap)  # an idle mesh between requests (interactive use)
            low += client.wait(client.submit([client.put_request(f"low{i}", i)]), every=True, timeout=30)
            client.forget(low[-1:])
        threads1 = {i: thread_cpu_s(p) for i, p in pids.items()}
        cpu = {"workers": round(sum(process_cpu_s(p) - cpu0[i] for i, p in pids.items()) / low_load * 1000, 2),
               "client": round((time.process_time() - client0) / low_load * 1000, 2)}
        if fpids:
            cpu["followers"] = round((sum(process_cpu_s(p) for p in fpids) - fcpu0) / low_load * 1000, 2)
        low_window = (t_low, time.time())
        if followers:
            rig.wait_followers(mesh.statuses()[0]["height"], timeout=60)
        if broker_pids:
            # per process, and only those still running: another run's RabbitMQ node that
            # stops meanwhile would make this negative (a shared machine)
            used = sum(max(0.0, process_cpu_s(p) - c0) for p, c0 in broker0.items()
                       if psutil.pid_exists(p))
            cpu["rabbitmq"] = round(used / low_load * 1000, 2)
        low_all, low_quorum = latencies_ms(low), latencies_ms(low, every=False)
        path, path_commit_ms = [], None
        with missing.guard("critical_path_ms"):
            path, path_commit_ms = critical_path.of_median_request(
                low, client.client_id, node_hops(mesh), time.time() - time.perf_counter())
            if not path:
                missing.note("critical_path_ms", "the median request's reply is not in the "
                                                 "nodes' timing records")
        before = mesh.statuses()
        low_blocks = before[0]["height"] - low_before[0]["height"]
        low_msgs = sum(protocol_sent(before[i]) - protocol_sent(low_before[i]) for i in before)
        stages = stage_breakdown(stages0, before, low_load, cpu["workers"])
        stages["ms_per_request"].update(thread_breakdown(
            pids, threads0, threads1, before, low_load, stages["ms_per_request"]))
        t1, t1_wall = time.perf_counter(), time.time()
        loaded = drive(client, requests, window=window, chunk=100)
        elapsed = max(p.all_at for p in loaded) - t1
        loaded_window = (t1_wall, t1_wall + elapsed)
        load_all = latencies_ms(loaded)
        # the run is measured: from here a figure that cannot be had is missing, not fatal
        after, catchup = None, None
        with missing.guard(*NODE_FIGURES):
            after = mesh.statuses()
        if followers and after is not None:
            catchup = rig.wait_followers(after[0]["height"], timeout=120)
            if catchup is None:
                missing.note("follower_catchup_s", f"the followers were not at height "
                                                   f"{after[0]['height']} within 120 s")
        result = {
            "nodes": nodes, "requests": requests, "window": window, "max_batch": max_batch,
            "low_load": low_load, "low_load_gap_s": low_load_gap,
            "durability": durability, "votes": votes,
            "cpu_ms_per_request_workers": cpu["workers"],
            "low_load_task_runs_per_request": stages["runs_per_request"],
            "low_load_stages_ms_per_request": stages["ms_per_request"],
            "low_load_stages_us_per_task_run": stages["us_per_run"],
            "tx_per_s": round(requests / elapsed, 1),
            "elapsed_s": round(elapsed, 3),
            "commit_p50_ms": round(percentile(low_all, 50), 3),
            "commit_p99_ms": round(percentile(low_all, 99), 3),
            "quorum_reply_p50_ms": round(percentile(low_quorum, 50), 3),
            "low_load_cpu_ms_per_request": cpu,
            "critical_path_ms": path,
            "critical_path_total_ms": critical_path.totals(path) if path else None,
            "critical_path_commit_ms": path_commit_ms,
            "loaded_commit_p50_ms": round(percentile(load_all, 50), 3),
            "loaded_commit_p99_ms": round(percentile(load_all, 99), 3),
            "low_load_messages_per_batch": round(low_msgs / low_blocks, 2) if low_blocks else None,
            **dict.fromkeys(NODE_FIGURES),
            **(node_figures(before, after, requests) if after is not None else {}),
            "followers": followers, "netns": netns, "followers_nice": followers_nice,
            "follower_catchup_s": None if catchup is None else round(catchup, 3),
            "follower_rejected": rig.rejected(),
            "missing": missing,
        }
        client.transport.close()
    except SubmitTimeout as exc:
        # what each node was doing when the client gave up (a view change? one node
        # behind?), in the failed run's record: run_matrix keeps it as ``at_failure``
        try:
            exc.at_failure = {i: None if st is None else  # None: no answer in 10 s
                              {k: st.get(k) for k in ("view", "height", "last_exec", "h")}
                              for i, st in mesh.poll_statuses(timeout=10).items()}
        except Exception as why:  # a stuck worker does not answer either
            exc.at_failure = {"status": f"not read: {type(why).__name__}: {why}"}
        raise
    finally:
        rig.stop()
    result.update(lag_figures(rig.lag_samples(), low_window, loaded_window) if followers else
                  {"follower_lag_p50_ms": None, "follower_lag_p99_ms": None})
    if followers:  # deliveries of pushed blocks, per block (all followers together)
        result["follower_pushes_per_block"] = (
            round(rig.pushes() / max(1, after[0]["height"]), 2) if after is not None else None)
    result["missing"] = dict(missing)
    missing.say(say)
    return result


def node_hops(mesh: Any, timeout: float = 30.0) -> dict[int, list]:
    """Every node's timing records of its last task runs (``pbft.hops``)."""
    pending = {n.id: mesh.app.send_task("pbft.hops", queue=n.queue) for n in mesh.cfg.nodes}
    return {i: r.get(timeout=timeout) for i, r in pending.items()}


# what the nodes' own status says of the loaded run, missing if they do not answer it
NODE_FIGURES = ("blocks", "mean_batch", "messages_per_batch", "identical_heads", "views",
                "view_max", "rejected")


def node_figures(before: dict, after: dict, requests: int) -> dict:
    blocks = after[0]["height"] - before[0]["height"]
    msgs = sum(protocol_sent(after[i]) - protocol_sent(before[i]) for i in after)
    heads = {s["head"] for s in after.values()}
    heights = {s["height"] for s in after.values()}
    return {
        "blocks": blocks,
        "mean_batch": round(requests / blocks, 1) if blocks else None,
        "messages_per_batch": round(msgs / blocks, 2) if blocks else None,
        "identical_heads": len(heads) == 1 and len(heights) == 1,
        # a view change during the run (the 1 s request timer under a deep backlog)
        # is part of the figure: the view each node ended in
        "views": {i: s["view"] for i, s in after.items()},
        "view_max": max(s["view"] for s in after.values()),
        "rejected": {i: s["rejected"] for i, s in after.items() if s["rejected"]},
    }


def stage_breakdown(before: dict, after: dict, requests: int, workers_ms: float) -> dict:
    """The workers' CPU per request split by stage (pbft_tasks/stages.py), from two
    ``pbft.status`` snapshots of every node around ``requests`` low-load requests.
    ``rest`` is what the process spent outside the measured stages (socket and AMQP
    framing, Celery's consumer loop, the tick thread, sqlitedict's thread, GC): the
    workers' CPU (psutil) minus the stages."""
    runs = 0
    ns: dict[str, int] = {}
    for i, st in after.items():
        a, b = st.get("cpu_stages"), before.get(i, {}).get("cpu_stages")
        if not a or not b:
            continue
        runs += a["runs"] - b["runs"]
        for k, v in a["ns"].items():
            ns[k] = ns.get(k, 0) + v - b["ns"].get(k, 0)
    ms = {k: round(v / 1e6 / requests, 3) for k, v in ns.items()}
    measured = sum(ms.values())
    ms["rest"] = round(workers_ms - measured, 3)
    return {"runs_per_request": round(runs / requests, 2), "ms_per_request": ms,
            "us_per_run": {k: round(v / 1e3 / runs, 1) for k, v in ns.items()} if runs else {}}


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process so far, by OS thread id ({} if gone)."""
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except psutil.Error:
        return {}


def thread_breakdown(pids: dict, before: dict, after: dict, statuses: dict, requests: int,
                     stages_ms: dict) -> dict:
    """Split ``rest`` (the workers' CPU outside the measured stages): the main thread's
    unmeasured part (receiving from the socket, AMQP framing, Celery's consumer loop) and
    every other thread by name (the tick thread, sqlitedict's writer, ...).  The kernel
    counts CPU in 10 ms clock ticks, so these are coarse at small ``requests``."""
    by_name: dict[str, float] = {}
    main = 0.0
    for i, pid in pids.items():
        names = statuses.get(i, {}).get("threads", {})
        for tid, t1 in after[i].items():
            used = t1 - before[i].get(tid, 0.0)
            if tid == pid:
                main += used
                continue
            name = names.get(str(tid), "other")
            if name.startswith("Thread-"):
                name = "sqlitedict and other unnamed"
            by_name[name] = by_name.get(name, 0.0) + used
    measured = sum(v for k, v in stages_ms.items() if k != "rest")
    out = {"rest: consumer loop (receive, AMQP, Celery)": round(main / requests * 1000 - measured, 3)}
    for name, used in sorted(by_name.items()):
        out[f"rest: thread {name}"] = round(used / requests * 1000, 3)
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, 0 if it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def local_broker_pids() -> list[int]:
    """RabbitMQ's Erlang VM on this machine (owned by the rabbitmq user), if any."""
    uid = _uid("rabbitmq")
    return [p.pid for p in psutil.process_iter(["name", "uids"])
            if p.info["name"] == "beam.smp" and p.info["uids"] is not None
            and p.info["uids"].real == uid]


def _uid(user: str) -> int | None:
    try:
        import pwd
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ImportError):
        return None


def run_matrix(nodes: list[int], votes: list[str], rounds: int = 1, say: Callable[[str], None] = print,
               on_result: Callable[[list[dict]], None] | None = None, **kw: Any) -> list[dict]:
    """Every (nodes, votes) configuration, ``rounds`` times, interleaved: each round runs
    all of them in turn, so a change in the machine's load hits every configuration.  A
    configuration whose requests time out is recorded as ``{"failed": reason}`` and the
    others still run."""
    out = []
    for r in range(rounds):
        for n in nodes:
            for v in votes:
                say(f"round {r + 1}/{rounds}: {n} nodes, votes={v}")
                try:
                    res = run(nodes=n, votes=v, **kw)
                except UNAVAILABLE as exc:  # a figure too: it did not keep up
                    # (e.g. the broker dropped a connection that missed its heartbeats on
                    # an overloaded machine); the other runs of the matrix go on
                    say(f"  {n} nodes, votes={v}: FAILED: {type(exc).__name__}: {exc}")
                    res = {"nodes": n, "votes": v, "failed": f"{type(exc).__name__}: {exc}"}
                    if getattr(exc, "at_failure", None):
                        res["at_failure"] = exc.at_failure
                        say(f"  at the failure: {exc.at_failure}")
                res["round"] = r + 1
                out.append(res)
                if on_result is not None:
                    on_result(out)  # e.g. write the JSON so far: a long matrix keeps what it measured
    return out


def write_json(result: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
            fh.write("\n")


__all__ = ["drive", "run", "run_matrix", "stage_breakdown", "percentile", "latencies_ms", "write_json", "statistics"]
