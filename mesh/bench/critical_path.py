"""Where one commit's milliseconds go, hop by hop: the critical path through the nodes.

Owns: following one low-load request from the client's publish to the last reply the
client needed, through the nodes' timing records of their task runs (``pbft.hops``,
pbft_tasks/stages.py: a run's start, the message it handled, and for every message it
sent, when it was handed to the publish, with the run's CPU and ledger wait so far).

The walk goes backwards.  The last reply came from a run of node L; that run handled
the message that completed L's quorum (a Commit from node k, say); k published it from
a run that handled a Prepare, and so on, back to the run of the primary that handled
the client's request.  Each hop is one message and the work its receiver did before
sending the next message on the path:

  broker_ms  handed to the publish at the sender -> the receiver's run started, less
             the time the receiver was still busy with earlier messages (the publish,
             RabbitMQ, the network stack, the consumer's fetch)
  queue_ms   waiting at the receiver: behind its earlier runs, and inside the run for
             a core (the run's wall time that was neither its CPU nor the ledger wait)
  cpu_ms     the receiving run's CPU until it sent the next message on the path
  fsync_ms   the run's wait on the ledger transaction (its wall time less its CPU)

The last hop is the reply: from its publish to the client's reading of it (all of it
``broker_ms``, the client's own poll loop included).  The hops add up to the commit latency of that request, within the
client's own processing.  Timestamps are ``time.time`` of processes on one host; on
several hosts their clocks' offsets would enter ``broker_ms``.
"""
from __future__ import annotations

from typing import Any

KEYS = ("queue_ms", "cpu_ms", "fsync_ms", "broker_ms")


def index_sends(hops: dict[int, list]) -> dict[str, tuple[int, list, list]]:
    """Message name -> (node, run, send record) of its first publish."""
    out: dict[str, tuple[int, list, list]] = {}
    for node, runs in hops.items():
        for run in runs:
            for send in run[2]:
                have = out.get(send[0])
                if have is None or send[1] < have[2][1]:
                    out[send[0]] = (node, run, send)
    return out


def _free_at(runs: list, since: float, until: float) -> float | None:
    """When the node finished its last run that ended in (since, until]: the moment it
    could take the next message; None if it was idle all that time."""
    ends = [r[3] for r in runs if since < r[3] <= until]
    return max(ends) if ends else None


def walk(hops: dict[int, list], reply_key: str, client_sent: float, client_got: float,
         ms: int = 3) -> list[dict]:
    """The critical path of one request, in order from the client's publish; [] if the
    reply is not in the records (they keep only the last runs of each node).  Times in
    seconds (``time.time``); ``reply_key`` is the last reply's name (stages.hop_key)."""
    sends = index_sends(hops)
    found = sends.get(reply_key)
    if found is None:
        return []
    node, run, send = found
    path = [{"hop": f"node {node} -> client: Reply", "queue_ms": 0.0, "cpu_ms": 0.0,
             "fsync_ms": 0.0, "broker_ms": client_got - send[1]}]
    seen = set()
    while True:
        start, handled, _, _ = run
        cpu, wait = send[2] / 1e9, send[3] / 1e9
        inside = max(0.0, send[1] - start - cpu - wait)  # waiting for a core
        kind = handled.split(" ", 1)[0]
        prev = sends.get(handled)
        if prev is not None and (prev[0], handled) not in seen:
            seen.add((prev[0], handled))
            sender, published = f"node {prev[0]}", prev[2][1]
        elif kind == "Request":
            sender, published = "client", client_sent
        else:  # sent by a timer (not a task run) or before the records begin
            path.append({"hop": f"? -> node {node}: {kind} (sender not in the records)",
                         "queue_ms": inside, "cpu_ms": cpu, "fsync_ms": wait, "broker_ms": 0.0})
            break
        free = _free_at(hops[node], published, start)
        behind = max(0.0, free - published) if free is not None else 0.0
        path.append({"hop": f"{sender} -> node {node}: {kind}", "queue_ms": behind + inside,
                     "cpu_ms": cpu, "fsync_ms": wait,
                     "broker_ms": max(0.0, start - published - behind)})
        if prev is None or sender == "client":
            break
        node, run, send = prev
    path.reverse()
    return [{"hop": h["hop"], **{k: round(h[k] * 1000, ms) for k in KEYS}} for h in path]


def totals(path: list[dict]) -> dict[str, float]:
    """Each kind of time over the whole path, and all of it (``total_ms``)."""
    out = {k: round(sum(h[k] for h in path), 3) for k in KEYS}
    out["total_ms"] = round(sum(out.values()), 3)
    return out


def reply_key(node: int, client: str, timestamp: int) -> str:
    """The name (stages.hop_key) of node ``node``'s reply to request ``timestamp``."""
    return f"Reply {node} {client} {timestamp}"


def of_median_request(pendings: list[Any], client: str, hops: dict[int, list],
                      wall_offset: float) -> tuple[list[dict], float | None]:
    """The critical path of the request whose commit latency (submit -> every reply) is
    the median one, and that latency in ms.  ``wall_offset`` turns the client's
    ``perf_counter`` times into ``time.time``."""
    done = sorted((p for p in pendings if p.all_at is not None), key=lambda p: p.all_at - p.sent_at)
    if not done:
        return [], None
    p = done[(len(done) - 1) // 2]
    last = list(p.votes)[-1]  # the replies in the order they came: the last one completed it
    path = walk(hops, reply_key(last, client, p.request.timestamp),
                p.sent_at + wall_offset, p.all_at + wall_offset)
    return path, round((p.all_at - p.sent_at) * 1000, 3)


__all__ = ["walk", "totals", "of_median_request", "reply_key", "index_sends", "KEYS"]
