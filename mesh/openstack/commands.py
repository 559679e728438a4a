"""``hdpbf compute``, ``console``, ``delete-instance``, ``move-instance``, ``add-reader``:
thin shells over mesh/openstack (see mesh/cli/__init__.py for the rules: bad input exits 2
with one ``Error:`` line, a missing answer exits 1, no tracebacks).  ``hdpbf api`` (the
HTTP front) is in api.py; ``init --reader`` is an option of ``init`` (mesh/cli).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time

import click

from pbft_tasks import topology
from pbft_tasks.topology import ConfigError, MeshConfig

from ..clikit import BadInput, broker_client, config_option, config_path, console
from . import rpc

transport_option = click.option(
    "--transport-url", default=None, metavar="URL",
    help="oslo.messaging URL (default: the mesh's RabbitMQ as rabbit://; fake: = in-process)")


def _transport_url(cfg: MeshConfig, url: str | None) -> str:
    if url:
        return url
    try:
        return rpc.transport_url_from_broker(cfg.broker_url)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _load(config: str | None) -> tuple[str, MeshConfig]:
    path = config_path(config)
    return path, MeshConfig.load(path)


# -- compute -----------------------------------------------------------------------------
@click.command()
@click.option("--host", required=True, help="this compute host's name (the RPC server)")
@config_option
@click.option("--service-ms", type=click.FloatRange(0, 60_000), default=0.0, show_default=True,
              help="sleep per call, emulating the hypervisor's own work")
@click.option("--token-ttl", type=click.FloatRange(0.001, None), default=600.0, show_default=True,
              help="console token lifetime in seconds (nova's [consoleauth] token_ttl)")
@transport_option
@click.option("--client", "name", default=None,
              help="mesh client identity that signs the records (default: the one named "
                   "like --host; it must speak for --host in mesh.json)")
@click.option("--no-seal", is_flag=True,
              help="store tokens in clear in the ledger (experiments only)")
def compute(host: str, config: str | None, service_ms: float, token_ttl: float,
            transport_url: str | None, name: str, no_seal: bool) -> None:
    """Run a nova-compute stand-in serving get_vnc_console; records answers in the ledger."""
    from .compute import ComputeService
    from .recorder import ConsoleRecorder
    from .sealing import Sealer
    path, cfg = _load(config)
    url = _transport_url(cfg, transport_url)
    sealer = None
    if not no_seal:
        if not cfg.readers:
            raise BadInput(f"{path} names no readers, so there is nobody to seal console tokens "
                           f"for: add one with 'hdpbf add-reader api --config {path}' "
                           f"(or pass --no-seal to store tokens in clear)")
        sealer = Sealer(topology.reader_keys(cfg))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    name = name or host
    if host not in topology.console_writers(cfg).get(name, ()):
        raise BadInput(f"client {name!r} does not speak for host {host!r} in {path}: the "
                       f"mesh would refuse its console records (give the client "
                       f'"hosts": ["{host}"] in mesh.json, or run with --client {host})')
    client = broker_client(path, name, timeout=2.0)
    recorder = ConsoleRecorder(client, sealer)
    service = ComputeService(host, url, recorder=recorder, service_ms=service_ms,
                             token_ttl=token_ttl)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    sealed = "sealed for " + ", ".join(r.name for r in cfg.readers) if sealer else "IN CLEAR"
    console().print(f"compute [bold]{host}[/bold] serving get_vnc_console on "
                    f"{url.split('@')[-1]} (topic compute, server {host}); tokens {sealed}, "
                    f"ttl {token_ttl:g}s. Ctrl-C to stop.", soft_wrap=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
        recorder.close(timeout=10.0)
        console().print(f"served {len(service.served)}, committed {recorder.committed}, "
                        f"re-sent {recorder.retries}, not committed {recorder.pending}")


# -- console -----------------------------------------------------------------------------
@click.command("console")
@click.argument("instance")
@click.option("--host", required=True, help="the compute host the instance runs on")
@click.option("--node", "node_id", type=int, required=True,
              help="this API node's mesh node (whose local ledger step 1 reads)")
@click.option("--reader", "reader", default=None,
              help="reader identity whose key opens sealed tokens (default: none)")
@click.option("--console-type", default="novnc", show_default=True)
@click.option("--timeout", type=click.FloatRange(0.01, None), default=5.0, show_default=True,
              help="step-2 RPC timeout in seconds")
@transport_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="print {step, connect_info, ms} as JSON")
@click.option("--own-answers/--no-own-answers", default=True, show_default=True,
              help="serve this reader's own step-2 answers until the ledger has them "
                   "(one call per process here, so it only matters in the Python API)")
def console_cmd(instance: str, host: str, node_id: int, reader: str | None, console_type: str,
                timeout: float, transport_url: str | None, config: str | None,
                as_json: bool, own_answers: bool) -> None:
    """nova-api's two-step get_vnc_console: local ledger first, RPC on a miss."""
    from .reader import ComputeRefused, ConsoleReader, ConsoleUnavailable
    from .sealing import Opener
    path, cfg = _load(config)
    try:
        data_dir = cfg.node_data_dir(node_id)
        opener = None
        if reader is not None:
            opener = Opener(reader, topology.load_reader_identity(cfg, reader))
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    url = _transport_url(cfg, transport_url)
    with ConsoleReader(os.path.join(data_dir, topology.LEDGER_FILE), url, {instance: host},
                       opener, rpc_timeout=timeout, own_answers=own_answers,
                       writers=topology.console_writers(cfg)) as api:
        t0 = time.perf_counter()
        try:
            info, step = api.get_vnc_console(instance, console_type)
        except ConsoleUnavailable as exc:
            what = ("compute refused step 2" if isinstance(exc, ComputeRefused)
                    else "step 2 failed")
            console(stderr=True).print(f"[red]step 1 missed and {what}:[/red] {exc}",
                                       soft_wrap=True)
            sys.exit(1)
        ms = (time.perf_counter() - t0) * 1000
        unreadable = api.unreadable
    if as_json:
        click.echo(json.dumps({"step": step, "ms": round(ms, 3), "connect_info": info},
                              sort_keys=True))
        return
    how = {1: f"step 1: node {node_id}'s local ledger",
           2: f"step 2: RPC to compute {host} through RabbitMQ"}.get(
        step, "this API process's own earlier step-2 answer (not yet in the ledger)")
    out = console()
    out.print(f"answered by {how} in {ms:.2f} ms", soft_wrap=True)
    if unreadable:
        out.print(f"[yellow]the ledger holds a console for {instance} that reader "
                  f"{reader or '(none)'} cannot open[/yellow]", soft_wrap=True)
    for k in ("host", "port", "internal_access_path", "token", "access_url"):
        out.print(f"  {k}: {info.get(k)}", soft_wrap=True, markup=False)


# -- invalidation ------------------------------------------------------------------------
def _commit_deletes(config: str | None, instance: str, console_types: tuple[str, ...],
                    name: str, timeout: float) -> None:
    from ..client import SubmitTimeout
    from .sealing import instance_key
    path, _ = _load(config)
    client = broker_client(path, name, timeout=min(2.0, timeout))
    try:
        batch = client.submit([client.delete_request(instance_key(instance, t))
                               for t in console_types])
        client.wait(batch, timeout=timeout)
    except SubmitTimeout as exc:
        console(stderr=True).print(f"[red]{exc}[/red]")
        sys.exit(1)
    finally:
        client.transport.close()
    seqs = sorted({p.result["seq"] for p in batch})
    console().print(f"committed the delete of {instance}'s {', '.join(console_types)} console "
                    f"entr{'y' if len(console_types) == 1 else 'ies'} at block "
                    f"{', '.join(map(str, seqs))}: no node's step 1 returns it any more")


_types_option = click.option("--console-type", "console_types", multiple=True,
                             default=("novnc",), show_default=True)
_client_option = click.option("--client", "name", default="admin", show_default=True)
_timeout_option = click.option("--timeout", type=float, default=10.0, show_default=True)


@click.command("delete-instance")
@click.argument("instance")
@_types_option
@_client_option
@_timeout_option
@config_option
def delete_instance(instance: str, console_types: tuple[str, ...], name: str, timeout: float,
                    config: str | None) -> None:
    """Commit a delete of INSTANCE's console entries (the instance is gone)."""
    _commit_deletes(config, instance, console_types, name, timeout)


@click.command("move-instance")
@click.argument("instance")
@click.option("--to", "to_host", required=True, help="the compute host it now runs on")
@_types_option
@_client_option
@_timeout_option
@config_option
def move_instance(instance: str, to_host: str, console_types: tuple[str, ...], name: str,
                  timeout: float, config: str | None) -> None:
    """Commit a delete of INSTANCE's console entries so the new host serves the next call."""
    _commit_deletes(config, instance, console_types, name, timeout)
    console().print(f"next call: hdpbf console {instance} --host {to_host} ... "
                    f"(step 2 to {to_host}, which records the new console)", soft_wrap=True)


# -- reader keys -------------------------------------------------------------------------
@click.command("add-reader")
@click.argument("names", nargs=-1, required=True)
@config_option
def add_reader(names: tuple[str, ...], config: str | None) -> None:
    """Give API reader(s) NAMES an X25519 key to open sealed console tokens."""
    path = config_path(config)
    try:
        cfg = topology.add_readers(path, names)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    for r in cfg.readers:
        console().print(f"reader {r.name}: {topology.reader_key_path(cfg.base_dir, r.name)}",
                        soft_wrap=True)
    console().print("restart compute services so they seal for the new readers")


__all__ = ["compute", "console_cmd", "delete_instance", "move_instance", "add_reader"]
