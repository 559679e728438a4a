"""Step 5a: compute records each console it served in the ledger, through consensus.

Owns: getting every recorded console (and every invalidation) committed by the mesh,
f+1 matching replies, without ever holding up the RPC reply and without losing an update
when the broker blips.

Rules of this file:
- ``record`` only appends to a queue and returns; one background thread seals (X25519
  per reader, ~0.1 ms each) and submits.  The RPC answer never waits for either.
- A request is signed once.  A retry re-sends the very same signed request, so it is
  idempotent: replicas deduplicate by (client, timestamp) (pbft_tasks/core/clients.py)
  and answer a re-sent request from their client table instead of executing it again.
- Per key, in order: an operation on a key is submitted only after the previous one on
  that key committed, so a retried put can never land after the delete that followed
  it.  Operations on different keys travel together in one bundle.
- Retry on anything the broker or the mesh can do to us (connection errors, no f+1
  replies in time): rebuild the broker connection, back off (0.05 s doubling to 2 s),
  re-send.  Pending updates stay queued for as long as that takes, in memory (a compute
  restart forgets them: the next call for that instance is simply a step-2 call again).
- A put whose token expired before it committed is dropped: it could only be a miss.
- A queued put that a newer put on the same key overtakes before it was ever sent is
  dropped (``superseded``): the newer value replaces it anyway.  Back-to-back calls for
  one instance would otherwise queue one consensus round per call, and that load is
  what delays the commit that ends the run of step-2 calls.  Deletes are never
  coalesced, so ``invalidate`` keeps its order and its result.
- Anything else raised on the thread is our bug: it is logged, stops the recorder, and
  is raised again from ``flush``/``invalidate``/``record``.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from pbft_tasks.core.messages import Request

from ..client import MeshClient, SubmitTimeout
from .sealing import Sealer, instance_key, seal_console

log = logging.getLogger("hdpbf.recorder")


def _retryable() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [SubmitTimeout, OSError, ConnectionError]
    try:
        from kombu.exceptions import KombuError
        errors.append(KombuError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from amqp.exceptions import AMQPError
        errors.append(AMQPError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


RETRYABLE = _retryable()


class _Op:
    __slots__ = ("key", "kind", "args", "expires_at", "request", "sent", "done", "result",
                 "skipped")

    def __init__(self, key: str, kind: str, args: tuple = (), expires_at: float | None = None):
        self.key = key
        self.kind = kind
        self.args = args
        self.expires_at = expires_at
        self.request: Request | None = None
        self.sent = False
        self.done = threading.Event()
        self.result: Any = None
        self.skipped = False


class ConsoleRecorder:
    def __init__(self, client: MeshClient, seal: Sealer | None,
                 attempt_timeout: float = 5.0, max_backoff: float = 2.0):
        self.client = client
        self.seal = seal
        self.attempt_timeout = attempt_timeout
        self.max_backoff = max_backoff
        self.committed = 0      # requests committed (f+1 matching replies)
        self.retries = 0        # requests sent again after a failed attempt
        self.expired = 0        # puts dropped because their token expired first
        self.superseded = 0     # queued puts replaced by a newer put on the same key
        # The same events by kind of update ("queued.put", "committed.delete",
        # "resent.put", "expired.put", "superseded.put" ...): the driver's metrics.
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.failure: BaseException | None = None
        self._cond = threading.Condition()
        self._queue: list[_Op] = []
        self._inflight: dict[str, _Op] = {}
        self._closing = False
        self._broken = False
        self._thread = threading.Thread(target=self._run, name="hdpbf-recorder", daemon=True)
        self._thread.start()

    # -- API ------------------------------------------------------------------------------
    def record(self, instance: str, console_type: str, connect_info: dict, expires_at: float,
               host: str | None = None) -> None:
        """Queue ``connect_info`` for the ledger until ``expires_at``; returns at once.
        ``host`` is the compute host that served it (readers treat an entry from another
        host than the instance's current one as a miss)."""
        op = _Op(instance_key(instance, console_type), "put",
                 (instance, console_type, host or connect_info.get("host") or "",
                  dict(connect_info)), expires_at)
        self._enqueue(op)

    def invalidate(self, instance: str, console_type: str = "novnc",
                   timeout: float = 30.0) -> dict:
        """Commit a delete of the instance's console entry (after anything recorded for
        it before); returns the mesh's result.  TimeoutError if not committed in time."""
        op = _Op(instance_key(instance, console_type), "delete")
        self._enqueue(op)
        if not op.done.wait(timeout):
            self._raise_failure()
            raise TimeoutError(f"the delete of {op.key!r} was not committed within {timeout}s "
                               f"(is the mesh running and the broker up?); it stays queued")
        self._raise_failure()
        return op.result

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything recorded so far is committed (or dropped as expired)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.failure is not None or (not self._queue and not self._inflight),
                timeout)
            left = len(self._queue) + len(self._inflight)
        self._raise_failure()
        if not ok:
            raise TimeoutError(f"{left} console record(s) not committed within {timeout}s "
                               f"(is the mesh running and the broker up?); "
                               f"{self.retries} re-sends so far")

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._inflight)

    @property
    def sending(self) -> int:
        """Updates the recorder's thread has taken up (being sent to consensus, or sent
        again after a failure) and that are not committed yet."""
        with self._cond:
            return len(self._inflight)

    def close(self, timeout: float = 10.0) -> None:
        """Flush for up to ``timeout`` s, then stop the thread (what is left is lost)."""
        try:
            if self.failure is None and self._thread.is_alive():
                self.flush(timeout)
        except TimeoutError as exc:
            log.warning("closing the recorder with updates not committed: %s", exc)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout=max(1.0, self.attempt_timeout + 1))
            close = getattr(self.client.transport, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # the connection may already be gone
                    pass

    def __enter__(self) -> "ConsoleRecorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the console recorder stopped on a bug: "
                               f"{self.failure!r}") from self.failure

    def _enqueue(self, op: _Op) -> None:
        self._raise_failure()
        with self._cond:
            if self._closing:
                raise RuntimeError("the console recorder is closed")
            older = next((q for q in reversed(self._queue) if q.key == op.key), None)
            if op.kind == "put" and older is not None and older.kind == "put" and not older.sent:
                self._queue.remove(older)
                self.superseded += 1
                self.by_kind["superseded.put"] += 1
                older.skipped = True
                older.done.set()
            self._queue.append(op)
            self.by_kind[f"queued.{op.kind}"] += 1
            self._cond.notify_all()

    def _finish(self, op: _Op, result: Any = None, skipped: bool = False) -> None:
        with self._cond:
            if self._inflight.get(op.key) is op:
                del self._inflight[op.key]
            if skipped:
                self.expired += 1
            else:
                self.committed += 1
            self.by_kind[f"{'expired' if skipped else 'committed'}.{op.kind}"] += 1
            self._cond.notify_all()
        op.result, op.skipped = result, skipped
        op.done.set()

    def _next_batch(self) -> list[_Op] | None:
        with self._cond:
            while not self._closing and not self._queue and not self._inflight:
                self._cond.wait()
            if self._closing:
                return None
            waiting = []
            for op in self._queue:
                if op.key in self._inflight:
                    waiting.append(op)  # after the op on this key that is in flight
                else:
                    self._inflight[op.key] = op
            self._queue = waiting
            return list(self._inflight.values())

    def _build(self, op: _Op) -> Request:
        c = self.client
        if op.kind == "put":
            instance, console_type, host, info = op.args
            value = seal_console(instance, console_type, host, info, self.seal)
            body = {"op": "put", "key": op.key, "value": value, "expires_at": op.expires_at}
        else:
            body = {"op": "delete", "key": op.key}
        # The token's own expiry, exactly (put_request would re-derive it from a ttl).
        return c.signer.sign(Request(c.client_id, c.next_ts(), body))

    def _reconnect(self) -> None:
        from ..client import BrokerClientTransport
        old = self.client.transport
        if not isinstance(old, BrokerClientTransport):
            return
        try:
            old.close()
        except Exception:
            pass
        # Raises while the broker is down; the caller counts it as a failed attempt.
        self.client.transport = BrokerClientTransport(old.app, self.client)

    def _run(self) -> None:
        backoff = 0.05
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                live = []
                now = time.time()
                for op in batch:
                    if op.kind == "put" and op.expires_at <= now:
                        self._finish(op, skipped=True)
                        continue
                    if op.request is None:
                        op.request = self._build(op)
                    live.append(op)
                if not live:
                    continue
                pending = []
                try:
                    if self._broken:
                        self._reconnect()
                        self._broken = False
                    resent = [op for op in live if op.sent]
                    for op in live:
                        op.sent = True
                    with self._cond:
                        self.retries += len(resent)
                        self.by_kind.update(f"resent.{op.kind}" for op in resent)
                    pending = self.client.submit([op.request for op in live])
                    self.client.wait(pending, timeout=self.attempt_timeout)
                except RETRYABLE as exc:
                    self._broken = True
                    for op, p in zip(live, pending):
                        if p.done:
                            self._finish(op, p.result)
                    log.warning("recording %d update(s) failed (%s: %s); retrying the same "
                                "signed requests in %.2fs", len(live), type(exc).__name__,
                                exc, backoff)
                    with self._cond:
                        self._cond.wait_for(lambda: self._closing, backoff)
                    backoff = min(self.max_backoff, backoff * 2)
                    continue
                finally:
                    self.client.forget(pending)
                backoff = 0.05
                for op, p in zip(live, pending):
                    self._finish(op, p.result)
        except BaseException as exc:  # our bug: loud, and visible to every caller
            log.exception("the console recorder stopped")
            with self._cond:
                self.failure = exc
                self._cond.notify_all()
