"""nova-api's two-step ``get_vnc_console`` (paper Figs. 8 and 9, steps 2a-2c), and the
API node reading its own RPC answers while consensus is still committing them.

Owns: the read path on an API node.  Step 1 reads the node's own ledger copy (local
SQLite, read-only, no broker); only on a miss does step 2 call the owning compute over
RabbitMQ, exactly as nova-api does (``prepare(server=host).call(ctxt,
"get_vnc_console", instance=..., console_type=...)``).

Rules of this file:
- A step-1 hit is a live record (expired and deleted entries read as missing, like
  ``LedgerReader.get``) that this reader can open (``sealing.open_console``) and that was
  served by the instance's current compute host (``hosts``): an entry from a host the
  instance has left is a miss, whether or not its delete has committed yet.  And it was
  committed by a client that speaks for that host (``writers``, mesh.json's clients;
  ``ledger.state.may_serve``): a record another host's client managed to write, or one
  with no writer, is a miss too.
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

Own answers ("read your own RPC", ``own_answers=True``, the default).  A step-2 answer
reaches the ledger only after consensus (tens of ms), while nova-api's calls can come a
few ms apart; without this every call in between would be another RPC.  So the reader
keeps each step-2 answer in a table of its own (LRU, ``own_answers_max`` entries) and
serves it as step ``STEP_OWN`` ("1o"), never counted as a ledger hit (``step1_hits``),
under these rules:
- Kept only when compute says when its token expires (``rpc.EXPIRES_AT_FIELD`` in the
  reply, sent only by a compute that records its answers in the ledger; the field is
  removed before the answer is returned, so callers get nova's keys only).  With it we
  keep the host the call went to and the ledger version of the instance's key read
  *before* the call was sent (``base``; 0 if none).
- Every version of a key after ``base`` was committed after our call left: compute's
  put of our own answer, a delete (tombstone, ``ledger/state.py``), a move's delete, or
  another put.  So once the key's version in the ledger is above ``base``, the own
  answer is dropped for good and the ledger alone decides (rule 1 above): a committed
  delete or move wins, and a committed put of our own answer is served as a ledger hit.
- While the key's version is still ``base``, the own answer is served if its token is
  unexpired (``expires_at`` against this node's clock, as for ledger entries) and the
  instance's current host is the one that served it (same rule as ledger entries);
  otherwise it is dropped.
- Known gap, shared with the ledger: a delete committed by another client while the
  instance holds no live record is a no-op (``state.py``: no tombstone), so a put still
  in flight lands after it.  Readers then serve that put from the ledger; an own answer
  of the same token serves nothing the ledger would not.  ``ConsoleRecorder.invalidate``
  (same queue as the puts) has no such race.
- Own answers live in this process only: other API nodes, and this one after a
  restart, get the answer from the ledger.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import time
from typing import Any, Callable, Union

from ledger import LedgerReader
from ledger import format as fmt
from ledger.format import LedgerNotFound
from ledger.state import Writers, may_serve

from . import nova_wire, rpc
from .sealing import Opener, SealError, instance_key, open_console

log = logging.getLogger("hdpbf.api")

STEP_OWN = "1o"          # answered from this reader's own recent step-2 answer
OWN_ANSWERS_MAX = 4096
Step = Union[int, str]   # 1 (ledger), STEP_OWN, 2 (RPC)


class ConsoleUnavailable(RuntimeError):
    """Step 2 could not get a console from compute (broker down, timeout, compute error)."""


class ComputeRefused(ConsoleUnavailable):
    """Compute answered step 2 with an exception (nova's own error, raised remotely):
    the broker and compute are up; the request was refused."""


class _Own:
    """One step-2 answer kept until the ledger has something at least as new."""
    __slots__ = ("info", "host", "expires_at", "base")

    def __init__(self, info: dict, host: str, expires_at: float, base: int):
        self.info, self.host, self.expires_at, self.base = info, host, expires_at, base


def split_reply(reply: Any) -> tuple[dict, float | None]:
    """(connect_info with nova's keys only, the token's expiry if compute sent it)."""
    info = dict(reply)
    expires_at = info.pop(rpc.EXPIRES_AT_FIELD, None)
    if type(expires_at) not in (int, float):
        expires_at = None
    return info, expires_at


class ConsoleReader:
    def __init__(self, ledger_path: str | os.PathLike, transport_url: str | None,
                 hosts: dict[str, str], opener: Opener | None = None,
                 rpc_timeout: float = 5.0, own_answers: bool = True,
                 own_answers_max: int = OWN_ANSWERS_MAX,
                 clock: Callable[[], float] = time.time, writers: Writers | None = None):
        if rpc_timeout <= 0:
            raise ValueError("rpc_timeout must be positive")
        if own_answers_max < 1:
            raise ValueError("own_answers_max must be at least 1")
        self.ledger_path = os.fspath(ledger_path)
        self.transport_url = transport_url or rpc.DEFAULT_TRANSPORT_URL
        self.hosts = hosts
        self.writers = writers  # client -> hosts it speaks for (None: its own name)
        self.opener = opener
        self.rpc_timeout = rpc_timeout
        self.own_answers = own_answers
        self.own_answers_max = own_answers_max
        # the node's wall clock, which expiry is judged by (tests give a fake one)
        self.clock = clock
        self.step1_hits = 0          # answered from the local ledger
        self.step1_own_answers = 0   # answered from this reader's own step-2 answers
        self.step2_calls = 0
        self.step2_failures = 0  # step-2 calls that raised ConsoleUnavailable
        self.unreadable = 0  # live entries this reader could not open (not sealed for it)
        self.other_writer = 0  # live entries not written by the host's own client
        self._own: collections.OrderedDict[str, _Own] = collections.OrderedDict()
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

    def _record(self, key: str) -> dict | None:
        """The key's raw record (tombstones and expired ones too), None if none/no ledger."""
        ledger = self._ledger or self._open_ledger()
        return None if ledger is None else ledger.get_record(key)

    def _from_ledger(self, instance: str, record: dict | None, now: float) -> dict | None:
        if not fmt.is_live(record, now):
            return None
        value = record["value"]
        host = self.hosts.get(instance)
        if host is not None and type(value) is dict and value.get("compute_host") != host:
            return None
        served_by = host if host is not None else (
            value.get("compute_host") if type(value) is dict else None)
        if type(served_by) is not str or not may_serve(record, served_by, self.writers):
            self.other_writer += 1
            return None
        try:
            return open_console(value, self.opener)
        except SealError as exc:
            self.unreadable += 1
            log.debug("step 1 cannot use %s: %s", instance, exc)
            return None

    def step1(self, instance: str, console_type: str = "novnc") -> dict | None:
        """connect_info from the local ledger, or None (missing, expired, deleted, from
        another host, or not readable with this reader's key).  Own answers are not
        looked at: this is the ledger alone."""
        record = self._record(instance_key(instance, console_type))
        return self._from_ledger(instance, record, self.clock())

    def _local(self, instance: str, console_type: str) -> tuple[dict | None, Step, int]:
        """(answer, step, ledger version of the key): the ledger or an own answer."""
        key = instance_key(instance, console_type)
        record = self._record(key)
        version = record["version"] if record is not None else 0
        now = self.clock()
        own = self._own.get(key)
        if own is not None:
            if version == own.base:
                host = self.hosts.get(instance)
                if own.expires_at > now and (host is None or host == own.host):
                    self._own.move_to_end(key)
                    return dict(own.info), STEP_OWN, version
            del self._own[key]  # the ledger moved past it, or expired, or moved host
        return self._from_ledger(instance, record, now), 1, version

    def own_answer(self, instance: str, console_type: str = "novnc") -> dict | None:
        """The own answer step 1 would serve now, or None (dropping it if it is done)."""
        info, step, _ = self._local(instance, console_type)
        return info if step == STEP_OWN else None

    def has_own(self, instance: str, console_type: str = "novnc") -> bool:
        """Whether an own answer is kept for the instance (judged only when read)."""
        return instance_key(instance, console_type) in self._own

    @property
    def own_size(self) -> int:
        return len(self._own)

    def _keep(self, key: str, info: dict, host: str, expires_at: float, base: int) -> None:
        if expires_at <= self.clock():
            return
        self._own[key] = _Own(dict(info), host, expires_at, base)
        self._own.move_to_end(key)
        while len(self._own) > self.own_answers_max:
            self._own.popitem(last=False)

    # -- step 2 ---------------------------------------------------------------------------
    def _rpc(self):
        if self._client is None:
            oslo_messaging = rpc.oslo()
            self._transport = rpc.get_transport(self.transport_url)
            self._client = oslo_messaging.get_rpc_client(self._transport, rpc.compute_target())
        return self._client

    def step2(self, instance: str, console_type: str = "novnc") -> dict:
        """The RPC to the instance's compute host; ConsoleUnavailable on any failure.
        With own answers on, the answer is kept (see the module's rules)."""
        base = None
        if self.own_answers:
            record = self._record(instance_key(instance, console_type))
            base = record["version"] if record is not None else 0
        return self._step2(instance, console_type, base)

    def _step2(self, instance: str, console_type: str, base: int | None) -> dict:
        oslo_messaging = rpc.oslo()
        host = self.hosts.get(instance)
        if host is None:
            raise ConsoleUnavailable(f"no compute host is known for instance {instance!r}")
        t0 = time.monotonic()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="hdpbf-rpc")
        try:
            cctxt = self._rpc().prepare(server=host, timeout=self.rpc_timeout, retry=0)
            # nova's wire: a serialized RequestContext and the Instance as a NovaObject
            # primitive, so a real nova-compute (nova's serializer) accepts the call.
            future = self._pool.submit(cctxt.call, nova_wire.request_context(),
                                       "get_vnc_console",
                                       instance=nova_wire.instance_primitive(instance, host),
                                       console_type=console_type)
            reply = future.result(timeout=self.rpc_timeout + 0.25)
        except (oslo_messaging.MessagingTimeout, concurrent.futures.TimeoutError):
            raise ConsoleUnavailable(
                f"compute {host!r} did not answer get_vnc_console for {instance!r} within "
                f"{self.rpc_timeout:g}s (RabbitMQ down, or compute not running?)") from None
        except oslo_messaging.RemoteError as exc:
            raise ComputeRefused(f"compute {host!r} refused get_vnc_console for "
                                 f"{instance!r}: {exc.exc_type}: {exc.value}") from None
        except Exception as exc:  # delivery failures, connection errors: all "unavailable"
            if type(exc).__name__.endswith("_Remote"):
                # oslo re-raises a builtin exception from the server as <Name>_Remote
                # (ValueError_Remote ...): compute's error, not the broker's.
                name = type(exc).__name__[:-len("_Remote")]
                raise ComputeRefused(f"compute {host!r} refused get_vnc_console for "
                                     f"{instance!r}: {name}: {exc}") from None
            raise ConsoleUnavailable(
                f"get_vnc_console for {instance!r} via RabbitMQ failed after "
                f"{time.monotonic() - t0:.2f}s: {type(exc).__name__}: {exc}") from None
        info, expires_at = split_reply(reply)
        if base is not None and expires_at is not None:
            self._keep(instance_key(instance, console_type), info, host, expires_at, base)
        return info

    # -- both -----------------------------------------------------------------------------
    def get_vnc_console(self, instance: str, console_type: str = "novnc") -> tuple[dict, Step]:
        """(connect_info, step): step 1 answered from the local ledger, ``STEP_OWN``
        ("1o") from this reader's own step-2 answer not yet in the ledger, 2 by RPC."""
        if self.own_answers:
            info, step, version = self._local(instance, console_type)
        else:
            info, step, version = self.step1(instance, console_type), 1, 0
        if info is not None:
            if step == 1:
                self.step1_hits += 1
            else:
                self.step1_own_answers += 1
            return info, step
        self.step2_calls += 1
        try:
            return self._step2(instance, console_type,
                               version if self.own_answers else None), 2
        except ConsoleUnavailable:
            self.step2_failures += 1
            raise

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        self._own.clear()
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
