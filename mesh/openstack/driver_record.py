"""Step 5a for the ``hdpbf`` oslo.messaging driver: recording nova's replies and deleting
them, through consensus, from inside nova-compute's process.

Owns: the ``ReplyRecorder`` (recorder.py's queue, order and retry rules, for any sealed
RPC reply rather than the stand-in's connect_info) and the one recorder per process
and mesh identity that every driver instance of the process shares.

Rules of this file:
- ``record_reply`` and ``forget`` only queue (recorder.py: one background thread seals
  and submits; operations on one key keep their order, so a put queued before a delete
  never lands after it).  Neither waits for consensus: nova's reply is already sent.
- One recorder per (mesh.json, client, embedded) in a process: nova's functional
  fixtures run every service on one transport, and an embedded mesh must be pumped by
  one thread only (the recorder's).
- The mesh client: over the mesh's broker (Celery, kombu), or, with ``embedded``, an
  in-process mesh (``mesh.embedded``) kept here per mesh.json, for tests and the demo.
- Configuration problems (no mesh.json, a key that does not match, no reader to seal
  for) raise ``ConfigError`` when the driver is built: nova refuses to start with a
  message that names the setting, instead of running without records.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from pbft_tasks.core.messages import Request

from ..client import MeshClient
from pbft_tasks.topology import ConfigError, MeshConfig, client_keys, load_client_identity, node_keys, reader_keys
from .recorder import ConsoleRecorder, _Op
from .reader_keys import ReaderKeys, follow_readers
from .sealing import Sealer

log = logging.getLogger("hdpbf.driver")

_lock = threading.Lock()
_embedded: dict[str, object] = {}
_recorders: dict[tuple, "ReplyRecorder"] = {}


class ReplyRecorder(ConsoleRecorder):
    """A ConsoleRecorder whose puts carry a value built on its own thread."""

    def record_reply(self, key: str, make_value: Callable[[], dict], expires_at: float) -> None:
        self._enqueue(_Op(key, "put", (make_value,), expires_at))

    def forget(self, key: str) -> None:
        """Queue a delete of ``key`` (after anything queued for it before)."""
        self._enqueue(_Op(key, "delete"))

    def _build(self, op: _Op) -> Request:
        if op.kind == "put" and len(op.args) == 1:
            c = self.client
            body = {"op": "put", "key": op.key, "value": op.args[0](),
                    "expires_at": op.expires_at}
            return c.signer.sign(Request(c.client_id, c.next_ts(), body))
        return super()._build(op)


def use_embedded(config_path: str, mesh) -> None:
    """Make an already running in-process mesh the one drivers use for ``config_path``
    (``hdpbf demo``: one mesh, not two on the same ledger files).  From then on only a
    recorder's thread may step it."""
    with _lock:
        if config_path in _embedded and _embedded[config_path] is not mesh:
            raise RuntimeError(f"another in-process mesh already serves {config_path}")
        _embedded[config_path] = mesh


def embedded_mesh(config_path: str):
    """The process's in-process mesh for ``config_path`` (made on first use)."""
    from ..embedded import EmbeddedMesh
    with _lock:
        mesh = _embedded.get(config_path)
        if mesh is None:
            mesh = _embedded[config_path] = EmbeddedMesh(config_path)
        return mesh


def _broker_client(cfg: MeshConfig, name: str, key_path: str | None) -> MeshClient:
    from pbft_tasks.celery_app import app
    from pbft_tasks.signing import Verifier

    from ..client import BrokerClientTransport
    app.conf.update(broker_url=cfg.broker_url, result_backend=cfg.result_backend)
    key = load_client_identity(cfg, name, key_path)
    client = MeshClient(name, key, cfg.n, Verifier(node_keys(cfg), client_keys(cfg)), timeout=2.0)
    client.transport = BrokerClientTransport(app, client)
    return client


def shared_recorder(mesh_config: str, client: str, client_key: str | None, seal: bool,
                    embedded: bool) -> ReplyRecorder:
    """The recorder of this process for the mesh and client identity."""
    ident = (mesh_config, client, embedded)
    with _lock:
        rec = _recorders.get(ident)
    if rec is not None:
        return rec
    cfg = MeshConfig.load(mesh_config)
    sealer = None
    if seal:
        if not cfg.readers:
            raise ConfigError(f"[hdpbf] seal is on but {mesh_config} names no readers to seal "
                              f"console tokens for: add one with 'hdpbf add-reader api0 "
                              f"--config {mesh_config}' (or set [hdpbf] seal = false)")
        sealer = Sealer(reader_keys(cfg))
    if embedded:
        mesh = embedded_mesh(mesh_config)
        mc = mesh.client(client)
    else:
        mc = _broker_client(cfg, client, client_key)
    with _lock:
        rec = _recorders.get(ident)
        if rec is None:
            rec = _recorders[ident] = ReplyRecorder(mc, sealer)
            if sealer is not None and not embedded:
                # whom to seal for follows the ledger (its own client, so its own queue)
                follow_readers(ReaderKeys(sealer, _broker_client(cfg, client, client_key)))
            log.info("hdpbf: recording console replies through %s as client %r",
                     "an in-process mesh" if embedded else f"the mesh of {mesh_config}", client)
            return rec
    close = getattr(mc.transport, "close", None)  # lost the race: keep the first one
    if close is not None:
        close()
    return rec


def recorders() -> list[ReplyRecorder]:
    with _lock:
        return list(_recorders.values())


def shutdown(timeout: float = 10.0) -> None:
    """Flush and close every recorder, then close the in-process meshes (tests, demo)."""
    with _lock:
        recs = list(_recorders.values())
        meshes = list(_embedded.values())
        _recorders.clear()
        _embedded.clear()
    for rec in recs:
        rec.close(timeout)
    for mesh in meshes:
        mesh.close()
