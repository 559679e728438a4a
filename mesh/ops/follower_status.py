"""Followers in ``hdpbf up`` and ``hdpbf status``, kept out of mesh/ops/stack.py.

Owns: the names ``hdpbf up --followers K`` gives (``f1`` .. ``fK``), when a started
follower counts as ready, the follower rows of ``hdpbf status`` and their table.  A
row's status is the follower's answer over the broker (``ask``: a ``Status`` message in
its queue, docs/PROTOCOL.md sec. 5.9), so followers on other hosts and with data dirs of
their own show; for one that does not answer, its ``status.json`` in the mesh's default
place, if there is one on this host (pbft_tasks/follower_node.py writes both).

A follower is healthy when its process runs, its status is fresh (written within
``STALE_S``), it is connected to the broker and it is at most ``max_lag`` blocks
behind the highest validator.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any, Optional

from rich.table import Table

from pbft_tasks.topology import MeshConfig, add_followers

STALE_S = 5.0
METRICS_BASE = 9600   # follower i of ``hdpbf up`` exports on METRICS_BASE + i


def names(k: int) -> list[str]:
    return [f"f{i}" for i in range(1, k + 1)]


def ensure(config_path: str, k: int) -> list[str]:
    """List ``f1`` .. ``fK`` in mesh.json (kept if already there); their names."""
    wanted = names(k)
    if wanted:
        add_followers(config_path, wanted)
    return wanted


def _status(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ready(rec: Any) -> bool:
    st = _status(rec.extra.get("status"))
    return st is not None and st.get("pid") == rec.pid and bool(st.get("connected"))


def ask(cfg: MeshConfig, connection: Any, timeout: float = 1.0) -> dict[str, dict]:
    """Every follower's status over the broker, within one shared ``timeout``: name ->
    its answer, for those that answered.  ``connection``: a kombu Connection (not yet
    open is fine; it is closed here).  The requests expire, so a follower that is down
    does not find a pile of them when it comes back."""
    from kombu import Consumer, Producer, Queue
    names = {f.name for f in cfg.followers}
    if not names:
        return {}
    cid = uuid.uuid4().hex
    answers: dict[str, dict] = {}

    def on_answer(body: Any, message: Any) -> None:
        message.ack()
        if (message.properties.get("correlation_id") == cid and isinstance(body, dict)
                and body.get("name") in names and type(body.get("height")) is int):
            answers[body["name"]] = body

    with connection as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        queue = Queue(f"hdpbf.status.{cid}", exclusive=True, auto_delete=True, channel=channel)
        queue.declare()
        with Consumer(channel, [queue], callbacks=[on_answer], accept=["json"]):
            producer = Producer(channel, auto_declare=False)
            for info in cfg.followers:
                producer.publish({"type": "Status"}, exchange="", routing_key=info.queue,
                                 serializer="json", reply_to=queue.name, correlation_id=cid,
                                 expiration=timeout + 1.0)
            deadline = time.monotonic() + timeout
            while len(answers) < len(names):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    conn.drain_events(timeout=left)
                except socket.timeout:
                    break
    return answers


def rows(cfg: MeshConfig, procs: list, top: Optional[int], max_lag: int,
         answers: Optional[dict[str, dict]] = None) -> list[dict]:
    """One row per follower of mesh.json: process, height, head, lag, health.
    ``answers``: what ``ask`` returned (a follower not in it falls back to its local
    status.json)."""
    by_name = {p.name: p for p in procs if p.kind == "follower"}
    out = []
    now = time.time()
    for info in cfg.followers:
        rec = by_name.get(f"follower-{info.name}")
        st = (answers or {}).get(info.name)
        via = "broker" if st is not None else "status.json"
        if st is None:
            st = _status(str(cfg.follower_data_dir(info.name) / "status.json"))
        state = rec.state() if rec else ("elsewhere" if via == "broker" else "not started here")
        row: dict[str, Any] = {"name": info.name, "pid": rec.pid if rec else None,
                               "process": state, "height": None, "head": None, "lag": None,
                               "lag_ms_p50": None, "lag_ms_p99": None, "rejected": None,
                               "via": via, "host": None, "data_dir": None}
        reasons = []
        if st is not None:
            row.update(height=st["height"], head=st["head"], rejected=st.get("rejected", {}),
                       host=st.get("host"), data_dir=st.get("data_dir"),
                       lag_ms_p50=st.get("lag_ms_p50"), lag_ms_p99=st.get("lag_ms_p99"),
                       connected=st.get("connected"), age_s=round(now - st.get("time", 0), 1))
            highest = max(x for x in (top, st.get("seen_top"), st["height"]) if x is not None)
            row["lag"] = highest - st["height"]
        if state not in ("running", "elsewhere"):
            reasons.append(f"process {state}")
        if st is None:
            reasons.append("no status.json")
        else:
            if now - st.get("time", 0) > STALE_S:
                reasons.append(f"status {row['age_s']:g}s old")
            if not st.get("connected"):
                reasons.append("not connected to the broker")
            if row["lag"] is not None and row["lag"] > max_lag:
                reasons.append(f"{row['lag']} blocks behind (more than {max_lag})")
        row["healthy"] = not reasons
        row["reason"] = "; ".join(reasons)
        out.append(row)
    return out


def print_table(report: dict, out: Any) -> None:
    followers = report.get("followers") or []
    if not followers:
        return
    mark = {True: "[green]healthy[/green]", False: "[red]UNHEALTHY[/red]"}
    table = Table(title="followers (verified, non-validating)")
    for col in ("follower", "pid / host", "height", "head", "lag", "lag p50/p99 ms", "refused", "health"):
        table.add_column(col, justify="left" if col in ("follower", "head", "health") else "right")
    for f in followers:
        ms = "-" if f["lag_ms_p50"] is None else f"{f['lag_ms_p50']:g}/{f['lag_ms_p99']:g}"
        refused = "-" if f["rejected"] is None else str(sum(f["rejected"].values()))
        where = str(f["pid"]) if f["pid"] else (f.get("host") or "-")
        table.add_row(f["name"], where, "-" if f["height"] is None else str(f["height"]),
                      (f["head"] or "")[:12] or "-", "-" if f["lag"] is None else str(f["lag"]),
                      ms, refused, mark[f["healthy"]] + (f" ({f['reason']})" if f["reason"] else ""))
    out.print(table)


def start_env(base_env: dict, i: int) -> dict:
    """The environment of follower ``i`` (1-based) of ``hdpbf up``."""
    env = dict(base_env)
    env["HDPBF_METRICS_PORT"] = str(METRICS_BASE + i)
    env.pop("HDPBF_NODE_ID", None)
    return env


def status_path(cfg: MeshConfig, name: str) -> str:
    return os.fspath(cfg.follower_data_dir(name) / "status.json")


__all__ = ["names", "ensure", "ready", "ask", "rows", "print_table", "start_env", "status_path"]
