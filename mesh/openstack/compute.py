"""nova-compute's side of ``get_vnc_console``: an oslo.messaging RPC server (paper Fig. 8,
steps 3-5).

Owns: serving nova's compute RPC method ``get_vnc_console(ctxt, instance, console_type)``
on topic ``compute`` with one server per compute host, minting a fresh console token per
call, and handing each answer to the recorder (step 5a) without delaying the reply (5b).

Rules of this file:
- nova's wire: the method signature is ComputeManager's (``context, console_type,
  instance``), ``instance`` a NovaObject primitive (its ``uuid`` is the instance) or,
  from older callers, the uuid itself; exchange ``nova`` (rpc.py).
- ``connect_info`` has nova's keys (``host``, ``port``, ``internal_access_path``,
  ``token``, ``access_url``) and nova's novnc URL shape
  ``<base_url>?path=%3Ftoken%3D<token>``; the token is ``secrets.token_urlsafe()``
  (256 random bits), valid ``token_ttl`` seconds (nova's ``[consoleauth] token_ttl``,
  default 600).
- ``service_ms`` sleeps before answering, standing in for the hypervisor's own work.
- ``recorder.record`` only queues: sealing and consensus happen on the recorder's
  thread, after the reply is on its way.
- A compute with a recorder adds the token's expiry to its reply
  (``rpc.EXPIRES_AT_FIELD``) so the API node can serve the answer itself until the
  ledger has it (reader.py, "own answers"); ``served`` and the ledger keep nova's keys
  only.  A compute without one is nova-compute as shipped: nova's keys, nothing else.
- ``served`` keeps every answer as returned, so a benchmark can check that no step-1
  answer ever differed from what compute returned for that token's life.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
import warnings
import zlib
from typing import TYPE_CHECKING, Any

from . import nova_wire, rpc

if TYPE_CHECKING:
    from .recorder import ConsoleRecorder

log = logging.getLogger("hdpbf.compute")

CONSOLE_TYPES = ("novnc",)
ENDPOINT_VERSION = "6.4"  # nova 34's ComputeManager: serves any 6.x call up to 6.4
DEFAULT_BASE_URL = "http://127.0.0.1:6080/vnc_auto.html"


class ConsoleTypeInvalid(ValueError):
    """nova.exception.ConsoleTypeInvalid: this compute serves only novnc consoles."""


class _ComputeEndpoint:
    """The RPC endpoint; its method signature is nova's ComputeManager.get_vnc_console."""

    def __init__(self, service: "ComputeService"):
        oslo_messaging = rpc.oslo()
        self.target = oslo_messaging.Target(version=ENDPOINT_VERSION)
        self._service = service

    def get_vnc_console(self, ctxt: Any, console_type: str, instance: Any) -> dict:
        # nova sends the instance as a NovaObject primitive (this server has no nova
        # serializer, so it arrives as one); older stand-in callers send the uuid.
        uuid = instance if type(instance) is str else nova_wire.instance_uuid(instance)
        return self._service.serve(uuid if uuid is not None else instance, console_type)


class ComputeService:
    def __init__(self, host: str, transport_url: str | None,
                 recorder: "ConsoleRecorder | None" = None, service_ms: float = 0.0,
                 token_ttl: float = 600.0, base_url: str = DEFAULT_BASE_URL):
        if not host:
            raise ValueError("a compute service needs a host name")
        if token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        if service_ms < 0:
            raise ValueError("service_ms must be >= 0")
        self.host = host
        self.transport_url = transport_url or rpc.DEFAULT_TRANSPORT_URL
        self.recorder = recorder
        self.service_ms = service_ms
        self.token_ttl = token_ttl
        self.base_url = base_url
        self.served: list[dict] = []
        self._lock = threading.Lock()
        self._transport = None
        self._server = None

    # -- the work -----------------------------------------------------------------------
    def connect_info(self, instance: str) -> tuple[dict, float]:
        """A new console for ``instance``: nova's connect_info and when its token expires."""
        token = secrets.token_urlsafe()
        info = {"host": self.host,
                "port": 5900 + zlib.crc32(instance.encode("utf-8")) % 1000,
                "internal_access_path": None,
                "token": token,
                "access_url": f"{self.base_url}?path=%3Ftoken%3D{token}"}
        return info, time.time() + self.token_ttl

    def serve(self, instance: str, console_type: str) -> dict:
        if type(instance) is not str or not instance:
            raise ValueError(f"instance must be a non-empty string, got {instance!r}")
        if console_type not in CONSOLE_TYPES:
            raise ConsoleTypeInvalid(f"Invalid console type {console_type!r} "
                                     f"(this compute serves {', '.join(CONSOLE_TYPES)})")
        if self.service_ms:
            time.sleep(self.service_ms / 1000.0)
        info, expires_at = self.connect_info(instance)
        with self._lock:
            self.served.append({"instance": instance, "console_type": console_type,
                                "connect_info": dict(info), "expires_at": expires_at,
                                "time": time.time()})
        if self.recorder is None:
            return info
        self.recorder.record(instance, console_type, info, expires_at, host=self.host)
        return {**info, rpc.EXPIRES_AT_FIELD: expires_at}

    # -- lifetime -----------------------------------------------------------------------
    def start(self) -> "ComputeService":
        oslo_messaging = rpc.oslo()
        if self._server is not None:
            return self
        self._transport = rpc.get_transport(self.transport_url)
        with warnings.catch_warnings():  # naming the executor is deprecated; nova still does
            warnings.simplefilter("ignore", DeprecationWarning)
            self._server = oslo_messaging.get_rpc_server(
                self._transport, rpc.compute_target(self.host), [_ComputeEndpoint(self)],
                executor="threading")
        self._server.start()
        log.info("compute %s serving get_vnc_console on %s", self.host,
                 "the fake bus" if rpc.is_fake(self.transport_url) else "RabbitMQ")
        return self

    def stop(self) -> None:
        """Stop serving (the recorder is the caller's: flush and close it after)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            server.wait()
        rpc.release_transport(self._transport, self.transport_url)
        self._transport = None

    def __enter__(self) -> "ComputeService":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
