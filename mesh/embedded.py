"""Embedded mode: a whole mesh in one process, for a first run and for fast tests.

The nodes are the same ``NodeRuntime``s with the same SQLite ledgers, signatures and
JSON parsing as the Celery workers, built by the same ``pbft_tasks.wiring.build_node``;
only the transport differs: an in-process FIFO (``LocalTransport``) instead of RabbitMQ
queues.  Time advances one tick per poll.
"""
from __future__ import annotations

import json
from typing import Any

from pbft_tasks.node import NodeRuntime
from pbft_tasks.topology import MeshConfig, load_client_identity
from pbft_tasks.transport import LocalTransport
from pbft_tasks.wiring import build_node, mesh_verifier

from .client import MeshClient


class EmbeddedMesh:
    def __init__(self, config_path: str):
        self.config_path = config_path
        self.cfg = MeshConfig.load(config_path)
        self.transport = LocalTransport()
        self.verifier = mesh_verifier(self.cfg)
        self.nodes: list[NodeRuntime] = []
        for info in self.cfg.nodes:
            rt = build_node(self.cfg, info.id, self.transport, verifier=self.verifier)
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
