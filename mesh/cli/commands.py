"""The operator's commands beyond ``init``: worker, demo, put, get.

Each command is a thin shell over the Python API (``mesh.client``, ``mesh.embedded``,
``mesh.ops.launcher``, ``mesh.bench``): parse and check arguments, call, print with rich.
Bad input is one ``Error:`` line and exit code 2; a missing answer is exit code 1.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pbft_tasks.topology import LEDGER_FILE, ConfigError, MeshConfig

from ..clikit import BadInput, broker_client, config_option, config_path, console


def _parse_value(text: str):
    """VALUE is JSON when it parses as JSON, else taken as a plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- worker ----------------------------------------------------------------------------
@click.command()
@click.option("--node", "node_id", type=int, required=True, help="this worker's node id")
@config_option
@click.option("--loglevel", default="INFO", show_default=True)
def worker(node_id: int, config: str | None, loglevel: str) -> None:
    """Run node ID's Celery worker (execs the exact `celery -A pbft_tasks worker` line)."""
    from ..ops.launcher import node_env, worker_command
    path = config_path(config)
    cfg = MeshConfig.load(path)
    if node_id not in [n.id for n in cfg.nodes]:
        raise BadInput(f"node {node_id} is not in {path} (nodes: {[n.id for n in cfg.nodes]})")
    cmd = worker_command(node_id, loglevel)
    console().print(f"[dim]{' '.join(cmd)}[/dim]")
    os.execvpe(cmd[0], cmd, node_env(path, node_id))


# -- put / get ---------------------------------------------------------------------------
@click.command()
@click.argument("key")
@click.argument("value")
@click.option("--ttl", type=float, default=None, help="seconds until the entry expires")
@click.option("--client", "name", default="admin", show_default=True)
@click.option("--key-file", default=None, type=click.Path(dir_okay=False),
              help="the client's private key (default: keys/client-NAME.key beside mesh.json); "
                   "a client added with hdpbf config needs it")
@click.option("--timeout", type=float, default=10.0, show_default=True)
@config_option
def put(key: str, value: str, ttl: float | None, name: str, timeout: float, config: str | None,
        key_file: str | None = None) -> None:
    """Submit KEY=VALUE to consensus; waits for f+1 matching replies."""
    from pbft_tasks.core.messages import MAX_KEY_LEN, MalformedMessage, from_wire, to_wire
    from ..client import SubmitTimeout
    if ttl is not None and ttl <= 0:
        raise BadInput("--ttl must be a positive number of seconds")
    if not key or len(key) > MAX_KEY_LEN:
        raise BadInput(f"KEY must be 1..{MAX_KEY_LEN} characters")
    client = broker_client(config_path(config), name, timeout=min(2.0, timeout), key_file=key_file)
    req = client.put_request(key, _parse_value(value), ttl)
    try:
        from_wire(to_wire(req))
    except MalformedMessage as exc:
        raise BadInput(str(exc)) from None
    t0 = time.perf_counter()
    try:
        result = client.wait(client.submit([req]), timeout=timeout)[0].result
    except SubmitTimeout as exc:
        console().print(f"[red]{exc}[/red]")
        sys.exit(1)
    console().print(f"committed {key!r} at block {result['seq']} "
                    f"in {(time.perf_counter() - t0) * 1000:.1f} ms (f+1 matching replies)")


@click.command()
@click.argument("key")
@click.option("--node", "node_id", type=int, default=None,
              help="read this node's local ledger (default: $HDPBF_NODE_ID, then 0)")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the record as JSON")
def get(key: str, node_id: int | None, config: str | None, as_json: bool) -> None:
    """Read KEY from a node's local ledger copy (no broker involved). Exit 1 if absent."""
    from ledger import LedgerError, LedgerReader
    cfg = MeshConfig.load(config_path(config))
    if node_id is None:
        node_id = int(os.environ.get("HDPBF_NODE_ID", "0"))
    try:
        data_dir = cfg.node_data_dir(node_id)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    try:
        with LedgerReader(os.path.join(data_dir, LEDGER_FILE)) as reader:
            record = reader.get(key)
    except LedgerError as exc:
        raise BadInput(f"node {node_id}: {exc}") from None
    if record is None:
        console().print(f"{key!r} not found on node {node_id} (missing, deleted or expired)")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(record, sort_keys=True))
    else:
        exp = record.get("expires_at")
        console().print(f"{json.dumps(record['value'])}  [dim](version {record['version']}, block "
                        f"{record['block']}{', expires ' + time.strftime('%H:%M:%S', time.localtime(exp)) if exp else ''})[/dim]")


# -- demo --------------------------------------------------------------------------------
@click.command()
@click.option("--nodes", type=click.IntRange(4, 64), default=4, show_default=True)
@click.option("--requests", "count", type=click.IntRange(1, 1_000_000), default=2000, show_default=True)
@click.option("--broker", default=None, metavar="URL",
              help="run against this broker with one worker process per node (default: embedded)")
@click.option("--backend", default="redis://127.0.0.1:6379/0", show_default=True, metavar="URL")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="where the mesh lives (default: a temporary directory, removed afterwards)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def demo(nodes: int, count: int, broker: str | None, backend: str, data_dir: str | None,
         as_json: bool) -> None:
    """Run a whole mesh, submit a stream of updates, show every node's ledger."""
    from pbft_tasks.signing import Verifier

    from ..bench.consensus import drive
    from ..client import MeshClient
    from pbft_tasks.topology import client_keys, init_mesh, load_client_identity, node_keys
    out = console() if not as_json else console(stderr=True)
    base = data_dir or tempfile.mkdtemp(prefix="hdpbf-demo-")
    kw = {"broker_url": broker, "result_backend": backend} if broker else {}
    cfg = init_mesh(base, nodes=nodes, force=True, clients=("admin", "cmp"),
                    readers=("api0", "api1"), **kw)
    path = os.path.join(base, "mesh.json")
    mode = f"broker {broker}, one worker process per node" if broker else "embedded: one process, in-memory transport"
    out.print(f"[bold]HdPBF demo[/bold]: {nodes} nodes (f={cfg.f}), {count} updates; {mode}")
    mesh = None
    try:
        if broker:
            from ..client import BrokerClientTransport
            from ..ops.launcher import LocalMesh
            mesh = LocalMesh(path)
            mesh.purge()
            mesh.start()
            mesh.wait_ready(timeout=90)
            client = MeshClient("admin", load_client_identity(cfg, "admin"), cfg.n,
                                Verifier(node_keys(cfg), client_keys(cfg)))
            client.transport = BrokerClientTransport(mesh.app, client)
        else:
            from ..embedded import EmbeddedMesh
            mesh = EmbeddedMesh(path)
            client = mesh.client()
        with Progress(TextColumn("committing"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=out, transient=as_json) as bar:
            task = bar.add_task("updates", total=count)
            t0 = time.perf_counter()
            drive(client, count, window=1000, chunk=100, key_prefix="demo",
                  progress=lambda k: bar.advance(task, k))
            elapsed = time.perf_counter() - t0
        if broker:
            states = mesh.statuses()
            rows = [{"id": i, "height": s["height"], "head": s["head"]} for i, s in sorted(states.items())]
        else:
            rows = [{"id": rt.id, "height": rt.ledger.height, "head": rt.ledger.head} for rt in mesh.nodes]
        result = {"nodes": rows, "requests": count, "elapsed_s": round(elapsed, 3),
                  "tx_per_s": round(count / elapsed, 1), "mode": "broker" if broker else "embedded",
                  "identical": len({(r["height"], r["head"]) for r in rows}) == 1}
        if not broker:  # act two: nova's console reads through the hdpbf driver
            from ..openstack import driver_demo
            result["console_reads"] = driver_demo.run(path, mesh, cfg)
    finally:
        if mesh is not None:
            (mesh.stop if broker else mesh.close)()
        if data_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        table = Table(title="ledgers after the run")
        for col in ("node", "height", "head hash"):
            table.add_column(col)
        for r in result["nodes"]:
            table.add_row(str(r["id"]), str(r["height"]), r["head"][:32] + "…")
        out.print(table)
        verdict = "[green]identical on every node[/green]" if result["identical"] else "[red]DIFFERENT[/red]"
        out.print(f"{count} updates committed in {elapsed:.2f}s: {result['tx_per_s']} tx/s; ledgers {verdict}")
        if "console_reads" in result:
            from ..openstack import driver_demo
            driver_demo.show(result["console_reads"], out)
    if not result["identical"]:
        sys.exit(1)


__all__ = ["worker", "put", "get", "demo", "Path"]
