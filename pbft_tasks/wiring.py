"""The composition root: the one place a node runtime is put together.

Owns: from a mesh configuration and a node id, the parts of a ``NodeRuntime`` and their
order: the node's checked identity (its key must match mesh.json), its data directory
and SQLite ledger (``LEDGER_FILE``, with the mesh's durability), its signer, the verifier
of every node key and of the client keys in force (membership.py, following the
ledger's configuration), the transport it is given, fault injection when asked,
and the block pushes and fetch answers for the followers mesh.json lists
(follower_push.py).
The Celery worker (celery_app.py: Celery transport, settings from the environment), the
embedded mesh (mesh/embedded.py: one in-process transport for all nodes) and the tests
build their nodes here, so they run the same wiring.
"""
from __future__ import annotations

import os
from typing import Any

from ledger.store import LedgerStore

from .follower_push import attach_pusher
from .membership import Membership
from .node import NodeRuntime, Transport
from .signing import Signer, Verifier
from .topology import (LEDGER_FILE, MeshConfig, client_keys, console_writers, load_node_identity,
                       node_keys)


def mesh_verifier(cfg: MeshConfig) -> Verifier:
    """Checks the signatures of every node and client of the mesh."""
    return Verifier(node_keys(cfg), client_keys(cfg))


def build_node(cfg: MeshConfig, node_id: int, transport: Transport, *,
               key_file: str | os.PathLike | None = None,
               data_dir: str | os.PathLike | None = None,
               verifier: Verifier | None = None, byzantine: Any = None) -> NodeRuntime:
    """Node ``node_id`` of ``cfg`` on ``transport``, not yet started.

    ``key_file``: its private key (default: keys/ beside mesh.json); refused with a
    ConfigError when it is not this node's.  ``data_dir``: where its ledger lives
    (default ``cfg.node_data_dir(node_id)``; created).  ``verifier``: shared by the
    nodes of one process (default: a new one for the mesh's keys).  ``byzantine``:
    core.byzantine.Byzantine, fault tests only.
    """
    key = load_node_identity(cfg, node_id, key_file)
    data_dir = data_dir or cfg.node_data_dir(node_id)
    os.makedirs(data_dir, exist_ok=True)
    ledger = LedgerStore(os.path.join(data_dir, LEDGER_FILE), durability=cfg.durability,
                         writers=console_writers(cfg))
    ledger.bind_genesis(cfg.config_rules())  # config ops execute against the mesh's genesis
    # client keys follow the ledger's configuration, seq by seq (membership.py)
    membership = Membership(ledger, client_keys(cfg))
    rt = NodeRuntime(node_id, cfg.replica_config(), ledger, Signer(node_id, key),
                     (verifier or mesh_verifier(cfg)).with_membership(membership), transport,
                     byzantine=byzantine)
    rt.on_execute.append(membership.on_execute)
    attach_pusher(rt, cfg, transport)  # mesh.json's followers: answer their fetches, push blocks
    return rt
