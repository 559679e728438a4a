"""What every ``hdpbf`` command shares: the one-line error, the console, ``--config``.

Owns: ``BadInput`` (input the operator must fix: one ``Error:`` line, exit code 2),
``console()``, ``redact`` (a URL without its password), the ``--config`` option and its resolution (``config_path``), and the
signed client a command talks to the mesh with (``broker_client``).

It lives outside the ``mesh.cli`` package on purpose: ``mesh/cli/__init__.py`` imports
every command module, so a command module that imported ``mesh.cli.<anything>`` would
run that ``__init__`` in the middle of its own import (an import circle,
tests/test_layers.py).
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import click
from rich.console import Console

from pbft_tasks.topology import CONFIG_NAME, ConfigError, MeshConfig


class BadInput(click.ClickException):
    """One-line error for input the operator must fix; exit code 2 like a usage error."""
    exit_code = 2


def console(stderr: bool = False) -> Console:
    """A rich console on the current stdout (so click's CliRunner captures it)."""
    return Console(highlight=False, stderr=stderr)


config_option = click.option("--config", "config", metavar="PATH",
                             help="mesh.json (default: $HDPBF_CONFIG, then ./mesh.json)")


def redact(url: str) -> str:
    """A broker or backend URL as shown to the operator: its password replaced by ***."""
    if ";" in url:  # a cluster's failover list (mesh.json broker_url as a list)
        return ";".join(redact(u) for u in url.split(";"))
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def config_path(config: str | None) -> str:
    """The mesh.json a command uses, checked: ``--config``, else $HDPBF_CONFIG, else
    ./mesh.json; a directory means its mesh.json.  BadInput if missing or invalid."""
    path = config or os.environ.get("HDPBF_CONFIG") or CONFIG_NAME
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(path):
        raise BadInput(f"no mesh configuration at {path}: run 'hdpbf init --dir DIR' and pass "
                       f"--config DIR/mesh.json (or set HDPBF_CONFIG)")
    try:
        MeshConfig.load(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    return path


def broker_client(path: str, name: str, timeout: float, key_file: str | None = None):
    """A MeshClient for client identity NAME of mesh PATH, over the real broker
    (``key_file``: its private key, default keys/client-NAME.key beside mesh.json)."""
    from pbft_tasks.brokers import celery_queue_settings
    from pbft_tasks.celery_app import app
    from pbft_tasks.signing import Verifier
    from pbft_tasks.topology import client_keys, load_client_identity, node_keys

    from .client import BrokerClientTransport, MeshClient
    cfg = MeshConfig.load(path)
    app.conf.update(broker_url=cfg.broker_url, result_backend=cfg.result_backend,
                    **celery_queue_settings(cfg.queue_type))
    try:
        key = load_client_identity(cfg, name, key_file)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    client = MeshClient(name, key, cfg.n, Verifier(node_keys(cfg), client_keys(cfg)), timeout=timeout)
    client.transport = BrokerClientTransport(app, client)
    return client
