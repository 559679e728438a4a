"""``hdpbf follow``: run a follower, a verified non-validating ledger copy.

A plain click command (added to the group in mesh/cli/__init__.py); the work is in
pbft_tasks/follower_node.py (wire, pulling, status) and pbft_tasks/follower.py (checks).
Bad input is one ``Error:`` line and exit 2, like every hdpbf command.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
from typing import Optional

import click

from pbft_tasks.topology import ConfigError, MeshConfig, add_followers


class _BadInput(click.ClickException):
    exit_code = 2


@click.command("follow")
@click.option("--config", "config", metavar="PATH", default=None,
              help="mesh.json (default: $HDPBF_CONFIG, then ./mesh.json)")
@click.option("--name", required=True,
              help="this follower's name: in mesh.json's followers, or added with "
                   "hdpbf config propose --add-follower")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="where its ledger lives  [default: the mesh's data_dir/follower-NAME]")
@click.option("--add", is_flag=True,
              help="list NAME in mesh.json first if it is not there (validators started "
                   "before answer its fetches only after a restart)")
@click.option("--sources", type=click.IntRange(1, 1024), default=None,
              help="how many validators' pushes to receive  [default: f+1]")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="check catch-up signatures on this Ray cluster (default: threads)")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Prometheus port on 127.0.0.1 (default: $HDPBF_METRICS_PORT; 0 or unset: none)")
@click.option("--loglevel", default="WARNING", show_default=True)
def follow(config: Optional[str], name: str, data_dir: Optional[str], add: bool,
           sources: Optional[int], ray_address: Optional[str], metrics_port: Optional[int],
           loglevel: str) -> None:
    """Keep a verified copy of the ledger without voting: install pushed and fetched
    blocks only with 2f+1 valid commits and a sound hash chain."""
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = config or os.environ.get("HDPBF_CONFIG") or "mesh.json"
    try:
        if add:
            add_followers(path, [name])
        cfg = MeshConfig.load(path)
        cfg.follower_info(name)  # listed in mesh.json, or added through hdpbf config
    except ConfigError as exc:
        raise _BadInput(str(exc)) from None
    from pbft_tasks.follower_node import FollowerNode
    node = FollowerNode(cfg, name, data_dir=data_dir, ray_address=ray_address, sources=sources)
    port = metrics_port
    if port is None and os.environ.get("HDPBF_METRICS_PORT", "").strip():
        try:
            port = int(os.environ["HDPBF_METRICS_PORT"])
        except ValueError:
            raise _BadInput(f"HDPBF_METRICS_PORT must be a port number, got "
                            f"{os.environ['HDPBF_METRICS_PORT']!r}") from None
    if port:
        node.start_metrics(port, os.environ.get("HDPBF_METRICS_ADDR", "127.0.0.1"))

    def _stop(*_):
        node.stop.set()
    if threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1)   # kill -USR1 <pid>: every thread's stack to the log
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    click.echo(f"follower {name}: ledger {node.data_dir / 'ledger.sqlite'} at height "
               f"{node.follower.height}; pushes from nodes {node.sources}", err=True)
    try:
        node.run()
    finally:
        node.close()
        click.echo(f"follower {name}: stopped at height {node.follower.height}", err=True)


@click.command("add-follower")
@click.argument("names", nargs=-1, required=True)
@click.option("--config", "config", metavar="PATH", default=None,
              help="mesh.json (default: $HDPBF_CONFIG, then ./mesh.json)")
def add_follower(names: tuple[str, ...], config: Optional[str]) -> None:
    """List followers NAMES in mesh.json (no keys: a follower never signs).  Restart the
    workers so that they answer the new followers' fetches."""
    path = config or os.environ.get("HDPBF_CONFIG") or "mesh.json"
    try:
        cfg = add_followers(path, names)
    except ConfigError as exc:
        raise _BadInput(str(exc)) from None
    click.echo("followers: " + ", ".join(f.name for f in cfg.followers))


__all__ = ["follow", "add_follower"]
