"""The ``hdpbf`` command line: one click group, one command per operator task.

Owns: argument parsing, turning our errors into one-line messages, and printing.  It
makes no decisions of its own: each command calls into the module that owns the work
(``init`` -> ``pbft_tasks.topology.init_mesh``).

Rules of this file:
- Bad input exits 2: a ConfigError with one line ``Error: ...`` (``BadInput``), a
  malformed option with click's own usage message.  A failure of the machine (disk,
  permissions) exits 1 through click.ClickException.  Never a traceback.
- Commands live in the group ``main``.  To add one, write it in its own module as a plain
  ``@click.command()`` that does not import ``mesh.cli`` (shared helpers are in
  ``mesh.clikit``), and add it at the bottom of this file with ``main.add_command``.
  Nothing imports this package back: no import circle (tests/test_layers.py).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.table import Table

from mesh.clikit import BadInput, console, redact
from pbft_tasks import topology
from pbft_tasks.topology import ConfigError


@click.group(name="hdpbf", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hdpbf-mesh", prog_name="hdpbf")
def main() -> None:
    """HdPBF mesh: a PBFT-replicated key/value ledger beside OpenStack's RabbitMQ."""


@main.command()
@click.option("--nodes", "-n", type=int, default=4, show_default=True,
              help="Number of replicas (n >= 4 = 3f+1).")
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for mesh.json and keys/.")
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="A client identity to create (repeatable; default: admin).")
@click.option("--broker", default=topology.DEFAULT_BROKER_URL, show_default=True,
              help="Celery broker URL (RabbitMQ); a cluster's node URLs joined by ';'.")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), default="classic",
              show_default=True, help="Node queues: classic (one broker) or quorum (a cluster).")
@click.option("--backend", default=topology.DEFAULT_RESULT_BACKEND, show_default=True,
              help="Celery result backend URL (Redis).")
@click.option("--force", is_flag=True, help="Replace an existing mesh and all its keys.")
@click.option("--reader", "readers", multiple=True, metavar="NAME",
              help="An API reader allowed to open sealed console tokens (repeatable; default none).")
@click.option("--votes", type=click.Choice(["all-to-all", "collector"]), default=None,
              help="Vote routing  [default: collector from "
                   f"{topology.COLLECTOR_FROM_N} nodes, all-to-all below]")
@click.option("--admin", "admins", multiple=True, metavar="NAME",
              help="An admin who may sign membership changes (repeatable; default none: "
                   "membership stays as created).")
@click.option("--admin-threshold", type=int, default=None, metavar="K",
              help="Admin signatures a change needs  [default: a majority of the admins]")
@click.option("--keep-existing", is_flag=True,
              help="If DIR/mesh.json exists: keep it and its keys when it is the mesh these "
                   "options make (nodes, broker, backend, queue type, clients, readers), else "
                   "exit 2 naming what differs.")
def init(nodes: int, dir_: Path, clients: tuple[str, ...], broker: str, queue_type: str,
         backend: str, force: bool, readers: tuple[str, ...] = (), votes: str | None = None,
         keep_existing: bool = False, admins: tuple[str, ...] = (),
         admin_threshold: int | None = None) -> None:
    """Create a mesh: DIR/mesh.json and a fresh Ed25519 key per node and client."""
    if keep_existing and not force and (dir_ / topology.CONFIG_NAME).exists():
        _keep(dir_, nodes=nodes, clients=clients or ("admin",), broker=broker,
              queue_type=queue_type, backend=backend, readers=readers)
        return
    for name in readers:
        try:
            topology.check_name(name, "reader name")
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
    if len(set(readers)) != len(readers):
        raise BadInput("duplicate reader name")
    try:
        config = topology.init_mesh(dir_, nodes=nodes, clients=clients or ("admin",),
                                    broker_url=broker, result_backend=backend, force=force,
                                    queue_type=queue_type, votes=votes, admins=admins,
                                    admin_threshold=admin_threshold)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the mesh to {dir_}: {exc}") from None

    out = console()
    table = Table(title=f"mesh {config.path}: n={config.n}, f={config.f}, votes {config.votes}")
    table.add_column("node", justify="right")
    table.add_column("queue")
    table.add_column("key file", overflow="fold")
    for node in config.nodes:
        table.add_row(str(node.id), node.queue, str(topology.node_key_path(dir_, node.id)))
    for c in config.clients:
        table.add_row("client", c.name, str(topology.client_key_path(dir_, c.name)))
    for a in config.admins:
        table.add_row("admin", a.name, str(topology.admin_key_path(dir_, a.name)))
    out.print(table)
    cfg = shlex.quote(str(config.path))
    out.print("Next, start one worker per node (node 0 shown; repeat for 1.."
              f"{config.n - 1}):", soft_wrap=True)
    out.print(f"  hdpbf worker --node 0 --config {cfg}    # one per node, or:", soft_wrap=True, markup=False)
    out.print(f"  {topology.ENV_CONFIG}={cfg} {topology.ENV_NODE_ID}=0 celery -A pbft_tasks "
              f"worker -Q {config.nodes[0].queue} -n node0@%h -E -P solo --prefetch-multiplier 64",
              soft_wrap=True, markup=False)
    if readers:  # the mesh is created as before, then its readers set (fresh X25519 keys)
        config = topology.add_readers(dir_, readers, replace=True)
        for r in config.readers:
            out.print(f"reader {r.name}: {topology.reader_key_path(dir_, r.name)}", soft_wrap=True)


def _keep(dir_: Path, **asked) -> None:
    """``init --keep-existing`` on an existing mesh: keep it if it is the one asked for,
    else BadInput naming each difference (URLs without their passwords)."""
    path = dir_ / topology.CONFIG_NAME
    try:
        cfg = topology.MeshConfig.load(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    have = {"nodes": cfg.n, "broker": cfg.broker_url, "backend": cfg.result_backend,
            "queue_type": cfg.queue_type}
    diffs = []
    for name in (n for n in have if have[n] != asked[n]):
        shown = redact(str(have[name])), redact(str(asked[name]))
        diffs.append(f"{name.replace('_', ' ')}: " + ("another password" if shown[0] == shown[1]
                     else f"{shown[0]} in the file, {shown[1]} asked"))
    for kind, listed in (("clients", cfg.clients), ("readers", cfg.readers)):
        missing = sorted(set(asked[kind]) - {x.name for x in listed})
        if missing:
            diffs.append(f"{kind} {', '.join(missing)} are not in the file")
    if diffs:
        raise BadInput(f"{path} is another mesh than the one asked for ({'; '.join(diffs)}): "
                       f"move that directory away to make a new mesh (its keys too), or "
                       f"pass --force to replace it")
    console().print(f"keeping the mesh in {path}: n={cfg.n}, broker {redact(cfg.broker_url)}",
                    soft_wrap=True, markup=False)


# The commands of the other modules; none of them imports this package.
from mesh.audit.verify import verify  # noqa: E402
from mesh.ops.broker_cluster import broker_cluster  # noqa: E402  (hdpbf broker-cluster up/down)
from mesh.bench.commands import bench  # noqa: E402  (consensus, read, paper, verify)
from mesh.cli.commands import demo, get, put, worker  # noqa: E402
from mesh.cli.config import config_group, keygen  # noqa: E402  (membership changes)
from mesh.cli.follow import add_follower, follow  # noqa: E402
from mesh.openstack.api import api  # noqa: E402
from mesh.openstack.commands import add_reader, compute, console_cmd, delete_instance, move_instance  # noqa: E402
from mesh.ops.stack import down, status, up  # noqa: E402

for _command in (worker, demo, put, get, bench, compute, console_cmd, delete_instance, move_instance,
                 add_reader, api, up, status, down, verify, broker_cluster,
                 follow, add_follower, keygen, config_group):
    main.add_command(_command)
