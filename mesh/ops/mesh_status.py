"""``hdpbf status`` for any mesh, from its mesh.json alone: every node and follower asked
over the broker.

Owns: the report for a mesh that ``hdpbf up`` did not start here (a compose stack, workers
on other hosts, a mesh run by systemd), its table, and the columns a node row shows.  The
launcher's own report (processes, pids, logs) is mesh/ops/stack.py's; it asks the nodes
the same way (``launcher.poll_statuses``) and shares the node columns defined here.

Rules of this file:
- The only input is mesh.json: the broker and result backend it names, its nodes and its
  followers.  Nothing is read from a data dir, so the command runs the same inside a
  container of the stack, in a client container, or on a host that reaches the broker.
- A node is healthy when it answers ``pbft.status`` within ``--timeout`` and is at most
  ``--max-lag`` blocks behind the highest node that answered; a follower when it answers
  its ``Status`` (docs/PROTOCOL.md sec. 5.9), is connected and within ``--max-lag``.
- ``--node``/``--follower`` narrow the verdict (the exit code), not the question: every
  node is still asked, since lag is measured against the highest of them.  This is what a
  container healthcheck runs for its own node.
- ``--trace`` also asks every node's ``pbft.trace``: its recent stimuli, each with its
  id and the actions it caused; ``--follow KEY`` picks, on every node, those about one
  request (``client/ts``), seq (``n<seq>``) or stimulus id (pbft_tasks/core/trace.py).
- One column is one entry of ``NODE_COLUMNS`` (title, justification, cell): a new field of
  ``pbft.status`` becomes a column by adding one entry, in both reports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from rich.markup import escape
from rich.table import Table

from pbft_tasks.core.trace import follow
from pbft_tasks.topology import MeshConfig

from ..clikit import redact
from . import follower_status as follower_ops
from .launcher import mesh_app, poll_statuses

DEFAULT_MAX_LAG = 64          # one checkpoint interval: beyond it a node needs the others' log
MARK = {True: "[green]healthy[/green]", False: "[red]UNHEALTHY[/red]"}


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[dict], str]
    justify: str = "right"
    launcher_only: bool = False     # needs a process record (pid, metrics URL)


def _answered(key: str) -> Callable[[dict], str]:
    return lambda row: str(row[key]) if row["answered"] and row[key] is not None else "-"


def _health(row: dict) -> str:
    return MARK[row["healthy"]] + (f" ({row['reason']})" if row["reason"] else "")


NODE_COLUMNS: tuple[Column, ...] = (
    Column("node", lambda r: str(r["id"])),
    Column("pid", lambda r: str(r["pid"]), launcher_only=True),
    Column("height", _answered("height")),
    Column("view", _answered("view")),
    Column("head", lambda r: (r["head"] or "")[:12] or "-", justify="left"),
    Column("lag", _answered("lag")),
    Column("config", lambda r: "-" if r.get("config_version") is None else
           str(r["config_version"]) + (" (differs)" if r.get("config_differs") else "")),
    Column("head age", lambda r: "-" if r.get("head_age_s") is None else f"{r['head_age_s']:g}s",
           launcher_only=True),
    Column("health", _health, justify="left"),
)


def node_table(title: str, nodes: list[dict], launcher: bool) -> Table:
    columns = [c for c in NODE_COLUMNS if launcher or not c.launcher_only]
    table = Table(title=title)
    for col in columns:
        table.add_column(col.title, justify=col.justify)
    for row in nodes:
        table.add_row(*(col.cell(row) for col in columns))
    return table


def node_row(node_id: int, answer: Optional[dict], top: Optional[int]) -> dict[str, Any]:
    """What ``pbft.status`` said, as a row; health is judged by the caller."""
    row: dict[str, Any] = {"id": node_id, "answered": answer is not None, "height": None,
                           "view": None, "head": None, "lag": None}
    if answer is not None:
        row.update(height=answer["height"], view=answer["view"], head=answer["head"],
                   lag=top - answer["height"], config_version=answer.get("config_version"),
                   rejected=sum(answer.get("rejected", {}).values()))
    return row


def flag_config_versions(rows: list[dict]) -> None:
    """Mark the rows whose membership configuration version is not the newest any node
    reported (docs/operations/membership.md): a node behind, or one that missed a change."""
    versions = [r["config_version"] for r in rows if r.get("config_version") is not None]
    for r in rows:
        r["config_differs"] = bool(versions) and r.get("config_version") not in (None, max(versions))


def report(cfg: MeshConfig, timeout: float = 3.0, max_lag: int = DEFAULT_MAX_LAG,
           nodes: Iterable[int] = (), followers: Iterable[str] = (),
           app: Any = None, trace: bool = False) -> dict:
    """Ask every node and follower of ``cfg`` over its broker; the verdict covers
    ``nodes`` and ``followers`` when either is given, else everything.  ``trace``: also
    every node's recent stimuli (``pbft.trace``), in ``report["trace"]``."""
    nodes, followers = list(nodes), list(followers)
    known = {n.id for n in cfg.nodes}
    unknown = [i for i in nodes if i not in known]
    unknown += [f for f in followers if f not in {x.name for x in cfg.followers}]
    if unknown:
        from ..clikit import BadInput
        raise BadInput(f"not in {cfg.path}: {', '.join(map(str, unknown))} (nodes "
                       f"{sorted(known)}, followers {[f.name for f in cfg.followers]})")
    app = app if app is not None else mesh_app(cfg)
    broker_error = None
    try:
        answers = poll_statuses(app, cfg, timeout=timeout)
    except Exception as exc:  # the broker is unreachable: nobody can answer
        answers, broker_error = {}, f"{type(exc).__name__}: {exc}"
    heights = [s["height"] for s in answers.values() if s is not None]
    top = max(heights) if heights else None
    rows = []
    for info in cfg.nodes:
        row = node_row(info.id, answers.get(info.id), top)
        if broker_error is not None:
            reason = "broker unreachable"
        elif not row["answered"]:
            reason = f"no pbft.status answer within {timeout:g}s"
        elif row["lag"] > max_lag:
            reason = f"{row['lag']} blocks behind (more than {max_lag})"
        else:
            reason = ""
        rows.append(dict(row, healthy=not reason, reason=reason))
    flag_config_versions(rows)
    follower_answers: dict = {}
    if cfg.followers and broker_error is None:
        try:
            follower_answers = follower_ops.ask(cfg, app.connection_for_write(), timeout=timeout)
        except Exception as exc:  # the broker went away meanwhile
            broker_error = f"{type(exc).__name__}: {exc}"
    follower_rows = follower_ops.rows(cfg, None, top, max_lag, follower_answers)
    traces = ask_traces(app, cfg, timeout) if trace and broker_error is None else None
    judged = ([r for r in rows if r["id"] in nodes] + [f for f in follower_rows if f["name"] in followers]
              if nodes or followers else rows + follower_rows)
    return {"config": str(cfg.path), "running": True, "healthy": all(r["healthy"] for r in judged),
            "judged": ([f"node {i}" for i in nodes] + [f"follower {f}" for f in followers]
                       or None),
            "broker_error": broker_error, "broker": redact(cfg.broker_url),
            "time": time.time(), "max_height": top, "max_lag": max_lag, "nodes": rows,
            "processes": [], "followers": follower_rows,
            **({"trace": traces} if trace else {})}


def ask_traces(app: Any, cfg: MeshConfig, timeout: float) -> dict[str, Any]:
    """Every node's ``pbft.trace`` answer, by node id (a string, as in JSON); None for a
    node that did not answer."""
    try:
        answers = poll_statuses(app, cfg, timeout=timeout, task="pbft.trace")
    except Exception:  # the broker went away meanwhile
        return {str(n.id): None for n in cfg.nodes}
    return {str(i): a for i, a in answers.items()}


def followed(rep: dict, key: Optional[str]) -> dict[str, list[dict]]:
    """Per node, the stimuli of ``rep["trace"]`` about ``key`` (a request id
    ``client/ts``, a seq ``n<seq>`` or a stimulus id; core/trace.py ``follow``), or all
    of them when ``key`` is None."""
    by_node = {i: (a or {}).get("trace", []) for i, a in (rep.get("trace") or {}).items()}
    return by_node if key is None else follow(key, by_node)


def print_trace(rep: dict, out: Any, key: Optional[str] = None, last: int = 40) -> None:
    """Per node, its newest ``last`` stimuli (or those about ``key``): id, stimulus and
    the actions it caused."""
    for node, entries in followed(rep, key).items():
        answer = (rep.get("trace") or {}).get(node)
        if answer is None:
            out.print(f"node {node}: [red]no pbft.trace answer[/red]")
            continue
        shown = entries if key is not None else entries[-last:]
        table = Table(title=f"node {node}: {len(shown)} of {answer['stimuli']} stimuli"
                            + (f" about {key}" if key else " (newest last)"))
        for col in ("id", "stimulus", "caused"):
            table.add_column(col, justify="left")
        for e in shown:
            table.add_row(escape(e["id"]), escape(e["stimulus"]),
                          escape("\n".join(e["actions"]) or "-"))
        out.print(table)


def print_report(rep: dict, out: Any) -> None:
    out.print(f"mesh {rep['config']}, broker {rep['broker']}", soft_wrap=True, markup=False)
    if rep["broker_error"]:
        out.print(f"[red]broker unreachable:[/red] {escape(rep['broker_error'])}", soft_wrap=True)
    out.print(node_table(f"nodes: max height {rep['max_height']}", rep["nodes"], launcher=False))
    follower_ops.print_table(rep, out)
    scope = "" if not rep["judged"] else f" ({', '.join(rep['judged'])})"
    out.print(f"all healthy{scope}" if rep["healthy"] else f"[red]not all healthy{scope}[/red]")


__all__ = ["Column", "NODE_COLUMNS", "node_table", "node_row", "report", "print_report",
           "flag_config_versions", "print_trace", "followed", "ask_traces", "DEFAULT_MAX_LAG"]
