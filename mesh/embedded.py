"""Embedded mode: a whole mesh in one process, for a first run and for fast tests.

The nodes are the same ``NodeRuntime``s with the same SQLite ledgers, signatures and
JSON parsing as the Celery workers; only the transport differs: an in-process FIFO
(``LocalTransport``) instead of RabbitMQ queues.  Time advances one tick per poll.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ledger.store import LedgerStore
from pbft_tasks.node import NodeRuntime
from pbft_tasks.signing import Signer, Verifier
from pbft_tasks.transport import LocalTransport

from .client import MeshClient
from pbft_tasks.topology import MeshConfig, client_keys, load_client_identity, load_node_identity, node_keys


class EmbeddedMesh:
    def __init__(self, config_path: str):
        self.config_path = config_path
        self.cfg = MeshConfig.load(config_path)
        self.transport = LocalTransport()
        self.verifier = Verifier(node_keys(self.cfg), client_keys(self.cfg))
        self.nodes: list[NodeRuntime] = []
        for info in self.cfg.nodes:
            data_dir = self.cfg.node_data_dir(info.id)
            os.makedirs(data_dir, exist_ok=True)
            ledger = LedgerStore(os.path.join(data_dir, "ledger.sqlite"), durability=self.cfg.durability)
            rt = NodeRuntime(info.id, self.cfg.replica_config(), ledger,
                             Signer(info.id, load_node_identity(self.cfg, info.id)),
                             self.verifier, self.transport)
            self.transport.nodes[info.id] = rt.handle
            self.nodes.append(rt)
        for rt in self.nodes:
            rt.start()

    def client(self, name: str = "admin", **kw: Any) -> MeshClient:
        c = MeshClient(name, load_client_identity(self.cfg, name), self.cfg.n, self.verifier, **kw)
        c.transport = _LocalClientTransport(self, c)
        self.transport.clients[c.client_id] = c.on_reply
        return c

    def step(self) -> int:
        """Deliver everything in flight, then advance time one tick on every node."""
        done = self.transport.pump()
        for rt in self.nodes:
            rt.tick()
        return done + self.transport.pump()

    def close(self) -> None:
        for rt in self.nodes:
            rt.ledger.close()

    def __enter__(self) -> "EmbeddedMesh":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _LocalClientTransport:
    def __init__(self, mesh: EmbeddedMesh, client: MeshClient):
        self.mesh = mesh
        self.client = client

    def send_requests(self, to: int, wires: list[dict]) -> None:
        for w in wires:
            self.mesh.transport.queue.append(("node", to, json.dumps(w).encode()))

    def poll(self, timeout: float) -> None:
        self.mesh.step()
