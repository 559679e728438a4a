"""The mesh client: submit key/value updates and wait for f+1 matching replies.

Owns: the client's side of Castro and Liskov sec. 4.1.  A client signs each request
with its Ed25519 key, sends it to the primary it believes in, and accepts a result once
f+1 distinct replicas (at least one honest) sent the same one.  If that takes longer
than ``timeout`` it sends the request to every replica, as the paper's client does
(backups forward it to the primary; replicas that executed it answer again from their
client table), and again after each further wait, doubling up to 8 x ``timeout``.

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
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from pbft_tasks.core.messages import MalformedMessage, Reply, Request, from_wire, to_wire
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

    # -- building requests ---------------------------------------------------------
    def next_ts(self) -> int:
        self._ts += 1
        return self._ts

    def put_request(self, key: str, value: Any, ttl: float | None = None) -> Request:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive")
        expires = None if ttl is None else time.time() + ttl
        return self.signer.sign(Request(self.client_id, self.next_ts(),
                                        {"op": "put", "key": key, "value": value, "expires_at": expires}))

    def delete_request(self, key: str) -> Request:
        return self.signer.sign(Request(self.client_id, self.next_ts(), {"op": "delete", "key": key}))

    def get_request(self, key: str) -> Request:
        return self.signer.sign(Request(self.client_id, self.next_ts(), {"op": "get", "key": key}))

    # -- submitting ----------------------------------------------------------------
    def submit(self, requests: Iterable[Request]) -> list[Pending]:
        """Send requests to the primary (bundled) without waiting."""
        now = time.perf_counter()
        batch = [Pending(r, now) for r in requests]
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
            stale = [p for p in waiting
                     if now - (p.resent_at or p.sent_at) > self.timeout * (1 << min(p.resends, 3))]
            if stale:
                self.send_to_all(stale, now)
            self.transport.poll(min(0.05, max(0.0, deadline - now)))

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
        return None if expires is not None and time.time() >= expires else result["value"]

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
            p.votes[msg.sender] = r["result"]
            if p.done_at is None:
                same = sum(1 for v in p.votes.values() if v == r["result"])
                if same >= self.need:
                    p.result, p.done_at = r["result"], now
            if len(p.votes) == self.n and p.all_at is None:
                p.all_at = now

    def forget(self, batch: list[Pending]) -> None:
        for p in batch:
            self.pending.pop(p.request.timestamp, None)


class BrokerClientTransport:
    """Requests as Celery task messages; replies from a kombu queue of our own."""

    def __init__(self, app: Any, client: MeshClient):
        from kombu import Consumer, Queue

        from pbft_tasks.transport import reply_queue_name
        self.app = app
        self.conn = app.connection_for_write()
        self.conn.ensure_connection(max_retries=3)
        self.queue = Queue(reply_queue_name(client.client_id), exchange="", durable=False,
                           auto_delete=True, routing_key=reply_queue_name(client.client_id))
        self.consumer = Consumer(self.conn.channel(), queues=[self.queue], accept=["json"],
                                 callbacks=[self._on_message], no_ack=True)
        self.consumer.consume()
        self.client = client
        self.producer = app.amqp.Producer(self.conn.channel(), auto_declare=False)

    def _on_message(self, body: Any, message: Any) -> None:
        self.client.on_reply(body)

    def send_requests(self, to: int, wires: list[dict]) -> None:
        self.app.send_task("pbft.request", args=[wires], queue=f"node.{to}",
                           ignore_result=True, producer=self.producer,
                           argsrepr=f"[{len(wires)} requests from {self.client.name}]", kwargsrepr="{}")

    def poll(self, timeout: float) -> None:
        try:
            self.conn.drain_events(timeout=timeout)
        except TimeoutError:
            pass
        except OSError:  # socket.timeout is an OSError subclass
            pass

    def close(self) -> None:
        try:
            self.consumer.cancel()
        finally:
            self.conn.release()
