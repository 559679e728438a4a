"""The ``hdpbf`` command line: one click group, one command per operator task.

Owns: argument parsing, turning our errors into one-line messages, and printing.  It
makes no decisions of its own: each command calls into the module that owns the work
(``init`` -> ``mesh.topology.init_mesh``).

Rules of this file:
- Bad input exits 2: a ConfigError with one line ``Error: ...`` (``BadInput``), a
  malformed option with click's own usage message.  A failure of the machine (disk,
  permissions) exits 1 through click.ClickException.  Never a traceback.
- Commands live in the group ``main``.  To add one, write it in its own module as
  ``@main.command()`` (``from mesh.cli import main``) and import that module at the
  bottom of this file, so the ``hdpbf`` entry point sees it.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mesh import topology
from mesh.topology import ConfigError


class BadInput(click.ClickException):
    """One-line error for input the operator must fix; exit code 2 like a usage error."""
    exit_code = 2


def console(stderr: bool = False) -> Console:
    """A rich console on the current stdout (so click's CliRunner captures it)."""
    return Console(highlight=False, stderr=stderr)


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
              help="Celery broker URL (RabbitMQ).")
@click.option("--backend", default=topology.DEFAULT_RESULT_BACKEND, show_default=True,
              help="Celery result backend URL (Redis).")
@click.option("--force", is_flag=True, help="Replace an existing mesh and all its keys.")
def init(nodes: int, dir_: Path, clients: tuple[str, ...], broker: str, backend: str,
         force: bool) -> None:
    """Create a mesh: DIR/mesh.json and a fresh Ed25519 key per node and client."""
    try:
        config = topology.init_mesh(dir_, nodes=nodes, clients=clients or ("admin",),
                                    broker_url=broker, result_backend=backend, force=force)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the mesh to {dir_}: {exc}") from None

    out = console()
    table = Table(title=f"mesh {config.path}: n={config.n}, f={config.f}")
    table.add_column("node", justify="right")
    table.add_column("queue")
    table.add_column("key file", overflow="fold")
    for node in config.nodes:
        table.add_row(str(node.id), node.queue, str(topology.node_key_path(dir_, node.id)))
    for c in config.clients:
        table.add_row("client", c.name, str(topology.client_key_path(dir_, c.name)))
    out.print(table)
    cfg = shlex.quote(str(config.path))
    out.print("Next, start one worker per node (node 0 shown; repeat for 1.."
              f"{config.n - 1}):", soft_wrap=True)
    out.print(f"  hdpbf worker --node 0 --config {cfg}    # one per node, or:", soft_wrap=True, markup=False)
    out.print(f"  {topology.ENV_CONFIG}={cfg} {topology.ENV_NODE_ID}=0 celery -A pbft_tasks "
              f"worker -Q {config.nodes[0].queue} -n node0@%h -E -P solo --prefetch-multiplier 64",
              soft_wrap=True, markup=False)


# Command modules register themselves on ``main`` when imported; add them here.
from mesh import commands  # noqa: E402,F401  (registers worker, demo, put, get, bench)
from mesh import bench_paper  # noqa: E402,F401  (registers bench paper)
from mesh.openstack import commands as _openstack_commands  # noqa: E402,F401  (compute, console, delete-instance, move-instance, add-reader)
from mesh import ops  # noqa: E402,F401  (registers up, status, down)
from mesh import audit_cmd  # noqa: E402,F401  (registers verify, bench verify)
from mesh.follow_cmd import follow as _follow  # noqa: E402  (issue 12: hdpbf follow)
main.add_command(_follow)
from mesh.follow_cmd import add_follower as _add_follower  # noqa: E402
main.add_command(_add_follower)
