"""The mesh client: submit key/value updates and wait for f+1 matching replies.

Owns: the client's side of Castro and Liskov sec. 4.1.  A client signs each request
with its Ed25519 key, sends it to the primary it believes in, and accepts a result once
f+1 distinct replicas (at least one honest) sent the same one.  If that takes longer
than ``timeout`` it sends the request to every replica, as the paper's client does
(backups forward it to the primary; replicas that executed it answer again from their
client table), and again after each further wait, doubling up to 8 x ``timeout``.

A client with many requests outstanding waits, before its first re-send of one, also
for the requests it sent before it, at the rate the mesh is completing its requests
(``patience``, at most 8 x ``timeout``): the mesh orders them first, so a request in
the middle of a 2,000-request window is not late after ``timeout``, only queued.  Sent
to every replica, it would start the backups' request timers (sec. 4.4) on requests the
primary cannot reach within them, and a healthy, merely busy primary would be voted
out (the n = 10 benchmark: views 0 to 3, then no commits).  A request none of whose
predecessors is pending (the head of the line, or a client's only request) keeps the
plain ``timeout``, so a crashed primary or a censored request is noticed as before.

Identity: ``client`` on the wire is ``<name>/<session>``.  ``name`` selects the public
key in mesh.json; ``session`` (random per process) keeps two processes of one client
apart, each with its own reply queue.  Timestamps start at the wall clock in
nanoseconds, so they keep growing across restarts.

Transports: ``BrokerClientTransport`` (Celery task messages to ``node.<i>``, replies
consumed with kombu from ``hdpbf.reply.<client>``) and the embedded mesh's local one.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from pbft_tasks.core.messages import (CONFIG_KEY, MalformedMessage, Reply, Request, from_wire, request_digest,
                                      to_wire)
from pbft_tasks.core.quorum import primary, weak_quorum
from pbft_tasks.signing import Rejected, Signer, Verifier


class SubmitTimeout(TimeoutError):
    pass


class ClientTransport(Protocol):
    def send_requests(self, to: int, wires: list[dict]) -> None: ...
    def poll(self, timeout: float) -> None: ...


@dataclass
class Pending:
    request: Request
    sent_at: float
    digest: str = ""                                   # request_digest: what replies must name
    votes: dict = field(default_factory=dict)        # sender -> result
    result: Any = None
    done_at: float | None = None                       # f+1 matching replies
    all_at: float | None = None                        # every replica replied
    retried: bool = False                              # sent to every replica at least once
    resent_at: float | None = None                     # when last sent to every replica
    resends: int = 0

    @property
    def done(self) -> bool:
        return self.done_at is not None


class MeshClient:
    def __init__(self, name: str, signing_key: Any, n: int, verifier: Verifier,
                 transport: ClientTransport | None = None, session: str | None = None,
                 timeout: float = 2.0, bundle: int = 64):
        self.name = name
        self.client_id = f"{name}/{session or os.urandom(4).hex()}"
        self.signer = Signer(self.client_id, signing_key)
        self.n = n
        self.need = weak_quorum(n)
        self.verifier = verifier
        self.transport = transport
        self.timeout = timeout
        self.bundle = bundle
        self.view = 0
        self._ts = time.time_ns()
        self.pending: dict[int, Pending] = {}
        self.rejected = 0
        self.completed: deque[float] = deque(maxlen=512)  # when recent requests got f+1
        # the wall clock expiry is set and judged by (tests give a fake one)
        self.clock: Callable[[], float] = time.time

    # -- building requests ---------------------------------------------------------
    def next_ts(self) -> int:
        self._ts += 1
        return self._ts

    def put_request(self, key: str, value: Any, ttl: float | None = None) -> Request:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive")
        expires = None if ttl is None else self.clock() + ttl
        return self._signed({"op": "put", "key": key, "value": value, "expires_at": expires})

    def delete_request(self, key: str) -> Request:
        return self._signed({"op": "delete", "key": key})

    def get_request(self, key: str) -> Request:
        return self._signed({"op": "get", "key": key})

    def config_request(self, change: dict) -> Request:
        """A request ordering a signed configuration change (pbft_tasks/core/config.py)."""
        return self._signed({"op": "config", "key": CONFIG_KEY, "change": change})

    def _signed(self, op: dict) -> Request:
        """A signed request, checked first by the nodes' own parser: a request every node
        would refuse (a value over MAX_VALUE_BYTES or nested deeper than MAX_VALUE_DEPTH,
        a key too long, NaN) is a ValueError here, not a submit that times out."""
        req = Request(self.client_id, self._ts + 1, op)
        try:
            from_wire(to_wire(req))
        except MalformedMessage as exc:
            raise ValueError(f"request refused before sending: {exc}") from None
        self.next_ts()
        return self.signer.sign(req)

    # -- submitting ----------------------------------------------------------------
    def submit(self, requests: Iterable[Request]) -> list[Pending]:
        """Send requests to the primary (bundled) without waiting."""
        now = time.perf_counter()
        batch = [Pending(r, now, request_digest(r)) for r in requests]
        for p in batch:
            self.pending[p.request.timestamp] = p
        wires = [to_wire(p.request) for p in batch]
        target = primary(self.view, self.n)
        for i in range(0, len(wires), self.bundle):
            self.transport.send_requests(target, wires[i:i + self.bundle])
        return batch

    def wait(self, batch: list[Pending], timeout: float | None = None, every: bool = False) -> list[Pending]:
        """Wait until each request has f+1 matching replies (``every``: all n replies).
        A request not done after ``self.timeout`` is sent to every replica (sec. 4.1), and
        again after each further wait, doubling up to 8 x ``self.timeout``: a copy lost
        with a broker restart or a crashed primary must not leave it unanswered."""
        deadline = time.perf_counter() + (timeout if timeout is not None else 5 * self.timeout)
        while True:
            waiting = [p for p in batch if (p.all_at if every else p.done_at) is None]
            if not waiting:
                return batch
            now = time.perf_counter()
            if now >= deadline:
                raise SubmitTimeout(f"{len(waiting)} of {len(batch)} requests got no "
                                    f"{'reply from every replica' if every else 'f+1 matching replies'} "
                                    f"in time (is the mesh running?)")
            stale = self.due(waiting, now)
            if stale:
                self.send_to_all(stale, now)
            self.transport.poll(min(0.05, max(0.0, deadline - now)))

    def due(self, waiting: list[Pending], now: float) -> list[Pending]:
        """Which of ``waiting`` to send to every replica at ``now``: re-sent ones after
        ``timeout`` doubled per copy (up to 8 x), the others after ``timeout`` plus their
        ``patience``."""
        due = [p for p in waiting
               if now - (p.resent_at or p.sent_at) > self.timeout * (1 << min(p.resends, 3))]
        if due and any(not p.resends for p in due):
            extra = self.patience(now)
            due = [p for p in due if p.resends
                   or now - p.sent_at > self.timeout + extra.get(p.request.timestamp, 0.0)]
        return due

    def rate(self, now: float) -> float | None:
        """Requests of this client completed per second, over the last 4 x ``timeout``
        (None with fewer than two completions there)."""
        recent = [t for t in self.completed if now - t <= 4 * self.timeout]
        if len(recent) < 2 or now - recent[0] <= 0:
            return None
        return len(recent) / (now - recent[0])

    def patience(self, now: float) -> dict[int, float]:
        """Seconds each pending request may wait beyond ``timeout`` before its first
        re-send: its unfinished predecessors over the completion rate, at most 7 x
        ``timeout`` (8 x in all).  Empty when no rate is known (nothing completes:
        re-send on the plain timeout)."""
        rate = self.rate(now)
        if not rate:
            return {}
        cap, ahead, out = 7 * self.timeout, 0, {}
        for ts, p in self.pending.items():  # in submit (timestamp) order
            if p.done_at is None:
                out[ts] = min(cap, ahead / rate)
                ahead += 1
        return out

    def send_to_all(self, batch: list[Pending], now: float | None = None) -> None:
        """Send these requests to every replica (the same signed requests: replicas
        deduplicate by (client, timestamp))."""
        now = time.perf_counter() if now is None else now
        for p in batch:
            p.retried, p.resent_at, p.resends = True, now, p.resends + 1
        wires = [to_wire(p.request) for p in batch]
        for node in range(self.n):
            for i in range(0, len(wires), self.bundle):
                self.transport.send_requests(node, wires[i:i + self.bundle])

    def put(self, key: str, value: Any, ttl: float | None = None, timeout: float | None = None) -> dict:
        return self.wait(self.submit([self.put_request(key, value, ttl)]), timeout)[0].result

    def reconfigure(self, change: dict, timeout: float | None = None) -> dict:
        """Order ``change`` and return its outcome, agreed by f+1 replicas:
        ``{"config": "accepted", "version", "hash", "executed", "effective"}`` or
        ``{"config": "refused", "reason", "detail", "version"}`` (plus seq and index)."""
        return self.wait(self.submit([self.config_request(change)]), timeout)[0].result

    def delete(self, key: str, timeout: float | None = None) -> dict:
        return self.wait(self.submit([self.delete_request(key)]), timeout)[0].result

    def read(self, key: str, timeout: float | None = None) -> Any:
        """The value of ``key`` read through consensus: a get, ordered like any request,
        answered by f+1 matching replies, so no single faulty replica can make it up.
        None if the key is missing, deleted, or expired by this client's clock."""
        result = self.wait(self.submit([self.get_request(key)]), timeout)[0].result
        if result.get("deleted"):
            return None
        expires = result.get("expires_at")
        return None if expires is not None and self.clock() >= expires else result["value"]

    # -- replies ---------------------------------------------------------------------
    def on_reply(self, wire: Any) -> None:
        try:
            msg = from_wire(wire)
            if not isinstance(msg, Reply) or msg.client != self.client_id:
                raise MalformedMessage("not a reply for this client")
            self.verifier.check(msg)
        except (MalformedMessage, Rejected):
            self.rejected += 1
            return
        now = time.perf_counter()
        self.view = max(self.view, msg.view)
        for r in msg.results:
            p = self.pending.get(r["timestamp"])
            if p is None or msg.sender in p.votes:
                continue
            result = r["result"]
            if type(result) is not dict or result.get("request") != p.digest:
                self.rejected += 1  # a reply to another request with this timestamp
                continue
            p.votes[msg.sender] = r["result"]
            if p.done_at is None:
                same = sum(1 for v in p.votes.values() if v == r["result"])
                if same >= self.need:
                    p.result, p.done_at = r["result"], now
                    self.completed.append(now)
            if len(p.votes) == self.n and p.all_at is None:
                p.all_at = now

    def forget(self, batch: list[Pending]) -> None:
        for p in batch:
            self.pending.pop(p.request.timestamp, None)


class BrokerClientTransport:
    """Requests as Celery task messages; replies from a kombu queue of our own.

    The reply queue is classic, auto-deleted with its connection (a quorum queue cannot
    be).  When the broker node under this connection dies (a cluster, mesh.json's
    broker URL list), ``poll`` reconnects to the next node and declares the queue again;
    a reply sent while it was gone is lost, and ``MeshClient.wait`` sends the request to
    every replica again, which answer it from their client table (docs/operations/broker-cluster.md)."""

    def __init__(self, app: Any, client: MeshClient):
        from kombu import Queue

        from pbft_tasks.transport import reply_queue_name
        self.app = app
        self.client = client
        self.reconnects = 0
        self.unsent = 0  # request messages no broker node confirmed (resent by the timer)
        self.pconn = self.producer = None
        urls = app.conf.broker_url or ""
        self.nurls = len(urls.split(";")) if isinstance(urls, str) else len(urls)
        self.conn = app.connection_for_write()
        self.conn.ensure_connection(max_retries=3)
        self.queue = Queue(reply_queue_name(client.client_id), exchange="", durable=False,
                           auto_delete=True, routing_key=reply_queue_name(client.client_id))
        from kombu.exceptions import OperationalError
        # What a dying broker node raises here: kombu re-raises a connection error it
        # gave up on as OperationalError.
        self._lost = (self.conn.recoverable_connection_errors
                      + self.conn.recoverable_channel_errors + (OperationalError, ConnectionError))
        self._open()

    def _open(self) -> None:
        from kombu import Consumer
        self.consumer = Consumer(self.conn.channel(), queues=[self.queue], accept=["json"],
                                 callbacks=[self._on_message], no_ack=True)
        self.consumer.consume()
        # kombu may replace the connection under us (a publish's ``ensure`` reconnects
        # to the next node): the consumer's channel then belongs to the dead one.
        self._raw = self.conn.connection

    def _producer(self) -> Any:
        # Requests go out on a connection of their own, so that kombu's reconnect on a
        # failed publish never leaves the reply consumer on a dead connection.
        if self.producer is None:
            if self.pconn is None:
                self.pconn = self.conn.clone()
            else:
                self.pconn.collect()
            self.pconn.ensure_connection(max_retries=self.nurls, interval_start=0)
            self.producer = self.app.amqp.Producer(self.pconn.channel(), auto_declare=False)
        return self.producer

    def _reconnect(self) -> None:
        """A new connection (the next broker URL once this one fails), consumer and
        producer.  Gives up after three rounds of the broker URLs (a few seconds) with no
        node answering; ``poll`` tries again on its next call."""
        self.reconnects += 1
        self.conn.collect()
        self.conn.ensure_connection(max_retries=3 * self.nurls, interval_start=0,
                                    interval_step=0.25, interval_max=1)
        self._open()

    def _on_message(self, body: Any, message: Any) -> None:
        self.client.on_reply(body)

    # A request publish waits for the broker's confirm and retries (on the next node)
    # for a few seconds at most: past that the request counts as sent and lost, and the
    # client's own timer sends it again (to every replica), as for any lost message.
    RETRY = {"max_retries": 8, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

    def send_requests(self, to: int, wires: list[dict]) -> None:
        try:
            self.app.send_task("pbft.request", args=[wires], queue=f"node.{to}",
                               ignore_result=True, producer=self._producer(),
                               retry=True, retry_policy=self.RETRY,
                               argsrepr=f"[{len(wires)} requests from {self.client.name}]",
                               kwargsrepr="{}")
        except self._lost:
            self.unsent += 1
            self.producer = None  # a new connection for the next request

    def poll(self, timeout: float) -> None:
        try:
            if self.conn.connection is not self._raw:
                self._reconnect()
            self.conn.drain_events(timeout=timeout)
        except TimeoutError:
            pass
        except self._lost:
            try:
                self._reconnect()
            except self._lost:
                pass  # no broker node reachable now; the caller's wait keeps trying
        except OSError:  # socket.timeout is an OSError subclass
            pass

    def close(self) -> None:
        try:
            self.consumer.cancel()
        except Exception:
            pass
        finally:
            self.conn.release()
            if self.pconn is not None:
                self.pconn.release()
