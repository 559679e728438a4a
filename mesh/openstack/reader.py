"""nova-api's two-step ``get_vnc_console`` (paper Figs. 8 and 9, steps 2a-2c).

Owns: the read path on an API node.  Step 1 reads the node's own ledger copy (local
SQLite, read-only, no broker); only on a miss does step 2 call the owning compute over
RabbitMQ, exactly as nova-api does (``prepare(server=host).call(ctxt,
"get_vnc_console", instance=..., console_type=...)``).

Rules of this file:
- A step-1 hit is a live record (``LedgerReader.get``: expired and deleted entries read
  as missing) that this reader can open (``sealing.open_console``) and that was served
  by the instance's current compute host (``hosts``): an entry from a host the
  instance has left is a miss, whether or not its delete has committed yet.
- A ledger that does not exist yet (node not started) is a miss, not an error.
- Step 2 fails fast: ``rpc_timeout`` bounds the call and sending is not retried
  (``retry=0``), so with the broker down the caller gets ``ConsoleUnavailable`` after
  at most the timeout instead of hanging in reconnect loops.  That is not enough on its
  own: a client that has never called sets up its reply queue on the first call, and
  with the broker down oslo.messaging retries that connection forever, whatever
  ``retry`` says.  So the call runs on a small pool of helper threads and the caller
  waits at most ``rpc_timeout`` (+0.25 s) for it; a call left hanging there finishes or
  fails on its own later.  The hand-off costs ~0.1 ms on a ~2 ms call.
- ``hosts`` is used by reference: a caller that updates the mapping (an instance moved)
  is seen by the next read.
- One reader per thread (sqlite3 connections belong to their thread).
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from typing import Any

from ledger import LedgerReader
from ledger.format import LedgerNotFound

from . import rpc
from .sealing import Opener, SealError, instance_key, open_console

log = logging.getLogger("hdpbf.api")


class ConsoleUnavailable(RuntimeError):
    """Step 2 could not get a console from compute (broker down, timeout, compute error)."""


class ConsoleReader:
    def __init__(self, ledger_path: str | os.PathLike, transport_url: str | None,
                 hosts: dict[str, str], opener: Opener | None = None,
                 rpc_timeout: float = 5.0):
        if rpc_timeout <= 0:
            raise ValueError("rpc_timeout must be positive")
        self.ledger_path = os.fspath(ledger_path)
        self.transport_url = transport_url or rpc.DEFAULT_TRANSPORT_URL
        self.hosts = hosts
        self.opener = opener
        self.rpc_timeout = rpc_timeout
        self.step1_hits = 0
        self.step2_calls = 0
        self.step2_failures = 0  # step-2 calls that raised ConsoleUnavailable
        self.unreadable = 0  # live entries this reader could not open (not sealed for it)
        self._ledger: LedgerReader | None = None
        self._transport = None
        self._client = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- step 1 ---------------------------------------------------------------------------
    def _open_ledger(self) -> LedgerReader | None:
        if self._ledger is None:
            try:
                self._ledger = LedgerReader(self.ledger_path)
            except LedgerNotFound:
                return None
        return self._ledger

    def step1(self, instance: str, console_type: str = "novnc") -> dict | None:
        """connect_info from the local ledger, or None (missing, expired, deleted, from
        another host, or not readable with this reader's key)."""
        ledger = self._ledger or self._open_ledger()
        if ledger is None:
            return None
        record = ledger.get(instance_key(instance, console_type))
        if record is None:
            return None
        value = record["value"]
        host = self.hosts.get(instance)
        if host is not None and type(value) is dict and value.get("compute_host") != host:
            return None
        try:
            return open_console(value, self.opener)
        except SealError as exc:
            self.unreadable += 1
            log.debug("step 1 cannot use %s: %s", instance, exc)
            return None

    # -- step 2 ---------------------------------------------------------------------------
    def _rpc(self):
        if self._client is None:
            oslo_messaging = rpc.oslo()
            self._transport = rpc.get_transport(self.transport_url)
            self._client = oslo_messaging.get_rpc_client(self._transport, rpc.compute_target())
        return self._client

    def step2(self, instance: str, console_type: str = "novnc") -> dict:
        """The RPC to the instance's compute host; ConsoleUnavailable on any failure."""
        oslo_messaging = rpc.oslo()
        host = self.hosts.get(instance)
        if host is None:
            raise ConsoleUnavailable(f"no compute host is known for instance {instance!r}")
        t0 = time.monotonic()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="hdpbf-rpc")
        try:
            cctxt = self._rpc().prepare(server=host, timeout=self.rpc_timeout, retry=0)
            future = self._pool.submit(cctxt.call, {}, "get_vnc_console", instance=instance,
                                       console_type=console_type)
            return future.result(timeout=self.rpc_timeout + 0.25)
        except (oslo_messaging.MessagingTimeout, concurrent.futures.TimeoutError):
            raise ConsoleUnavailable(
                f"compute {host!r} did not answer get_vnc_console for {instance!r} within "
                f"{self.rpc_timeout:g}s (RabbitMQ down, or compute not running?)") from None
        except oslo_messaging.RemoteError as exc:
            raise ConsoleUnavailable(f"compute {host!r} refused get_vnc_console for "
                                     f"{instance!r}: {exc.exc_type}: {exc.value}") from None
        except Exception as exc:  # delivery failures, connection errors: all "unavailable"
            raise ConsoleUnavailable(
                f"get_vnc_console for {instance!r} via RabbitMQ failed after "
                f"{time.monotonic() - t0:.2f}s: {type(exc).__name__}: {exc}") from None

    # -- both -----------------------------------------------------------------------------
    def get_vnc_console(self, instance: str, console_type: str = "novnc") -> tuple[dict, int]:
        """(connect_info, step): step 1 answered from the local ledger, step 2 by RPC."""
        info = self.step1(instance, console_type)
        if info is not None:
            self.step1_hits += 1
            return info, 1
        self.step2_calls += 1
        try:
            return self.step2(instance, console_type), 2
        except ConsoleUnavailable:
            self.step2_failures += 1
            raise

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        self._client = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        rpc.release_transport(self._transport, self.transport_url)
        self._transport = None

    def __enter__(self) -> "ConsoleReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
