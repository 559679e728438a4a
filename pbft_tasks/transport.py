"""Transports that carry signed wire messages between nodes and to clients.

- ``CeleryTransport``: a message to node i is a Celery task message on queue
  ``node.<i>`` (task name by message type, JSON body), published on the default
  exchange.  A broadcast from node i is published once on the direct exchange
  ``hdpbf.broadcast`` with routing key ``from.<i>``; every other node's queue is bound
  to that key, so RabbitMQ makes the n-1 copies (one publish instead of n-1).  A reply
  to client c is a plain JSON message on queue ``hdpbf.reply.<c>``.
- Followers (pbft_tasks/follower_push.py): a validator publishes each block
  it executes, with its certificate, once on the direct exchange ``hdpbf.blocks`` with
  routing key ``from.<i>``; a follower's queue ``follower.<name>`` binds to the keys of
  the validators it listens to.  Answers to a follower's fetch are plain JSON messages
  on its queue (it is a kombu consumer, not a Celery worker).
- ``LocalTransport``: the same wire objects through an in-process FIFO, for embedded
  mode and tests.  Each message is JSON-encoded and decoded on the way, so embedded mode
  parses exactly what a broker would deliver.
"""
from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from typing import Any, Callable

from celery.utils.nodenames import anon_nodename

from .brokers import PUBLISH_RETRY, publish_confirmed, queue_arguments
from .node import ALL_TASKS, TASK_FOR_TYPE


BROADCAST_EXCHANGE = "hdpbf.broadcast"
BLOCKS_EXCHANGE = "hdpbf.blocks"


def follower_queue_name(name: str) -> str:
    return f"follower.{name}"


def task_message(app: Any, name: str, wire: dict | list) -> Any:
    """A Celery protocol-2 message for task ``name`` with one argument, ``wire``.
    ``ignore_result=True`` travels in the headers: a request's header overrides the
    task's own setting, and the default (False) would store every protocol message's
    result in Redis (measured: ~1.6 ms a task)."""
    return app.amqp.create_task_message(str(uuid.uuid4()), name, [wire], {}, ignore_result=True,
                                        argsrepr=describe_wire(wire), kwargsrepr="{}", origin=_ORIGIN)


# Celery would otherwise put ``saferepr`` of the whole wire object in every message's
# ``argsrepr`` header (what Flower shows): a large string, and measured at ~5 % of a
# worker's CPU.  A short summary names the message instead.
_ORIGIN = anon_nodename()


def describe_wire(wire: Any) -> str:
    if not isinstance(wire, dict):
        return f"[{type(wire).__name__}]"
    parts = [str(wire.get("type", "?"))]
    for field, tag in (("view", "v"), ("seq", "n"), ("sender", "from "), ("client", "client "),
                       ("requester", "for ")):
        if field in wire:
            parts.append(f"{tag}{wire[field]}")
    return "[" + " ".join(parts)[:120] + "]"


def reply_queue_name(client: str) -> str:
    return f"hdpbf.reply.{client}"


def declare_mesh(channel: Any, node_ids: list[int], queue_type: str = "classic") -> None:
    """Declare every node queue (as its worker does) and the broadcast bindings."""
    channel.exchange_declare(BROADCAST_EXCHANGE, "direct", durable=True, auto_delete=False)
    args = queue_arguments(queue_type)
    for j in node_ids:
        channel.queue_declare(f"node.{j}", durable=True, auto_delete=False, arguments=args)
        for i in node_ids:
            if i != j:
                channel.queue_bind(f"node.{j}", BROADCAST_EXCHANGE, routing_key=f"from.{i}")


class CeleryTransport:
    """Builds each task message with Celery's own ``create_task_message`` (protocol 2)
    and publishes it on a long-lived producer per thread: ~150 us a message against
    ~250 us for ``send_task``, which does bookkeeping a fire-and-forget protocol
    message does not need.  Node queues are declared up front (as the worker declares
    them), so a message to a node that has not started yet waits in its queue."""

    def __init__(self, app: Any, node_ids: list[int] | None = None, queue_type: str = "classic"):
        self.app = app
        self._local = threading.local()
        if node_ids:
            with app.connection_for_write() as conn:
                declare_mesh(conn.default_channel, node_ids, queue_type)

    def _producer(self) -> Any:
        producer = getattr(self._local, "producer", None)
        if producer is None:
            conn = self.app.connection_for_write()
            # A thread's first publish may come while no broker node answers (the tick
            # thread's periodic STATUS does, core/status.py): connect with the publish's
            # own patience, to the next URL of the list, instead of raising out of it.
            conn.ensure_connection(**PUBLISH_RETRY)
            producer = self._local.producer = self.app.amqp.Producer(conn.channel(), auto_declare=False)
            self._local.conn = conn
        return producer

    def send(self, to: int, wire: dict) -> None:
        name = ALL_TASKS[wire["type"]]
        msg = task_message(self.app, name, wire)
        publish_confirmed(self._producer(), msg.body, exchange="", routing_key=f"node.{to}",
                          serializer="json", headers=msg.headers, **msg.properties)

    def send_requests(self, to: int, wires: list[dict]) -> None:
        """Requests relayed to node ``to``, as one ``pbft.request`` message (a list, as
        a client's bundle travels)."""
        msg = task_message(self.app, ALL_TASKS["Request"], wires)
        publish_confirmed(self._producer(), msg.body, exchange="", routing_key=f"node.{to}",
                          serializer="json", headers=msg.headers, **msg.properties)

    def broadcast(self, sender: int, peers: list[int], wire: dict) -> None:
        name = TASK_FOR_TYPE[wire["type"]]
        msg = task_message(self.app, name, wire)
        publish_confirmed(self._producer(), msg.body, exchange=BROADCAST_EXCHANGE,
                          routing_key=f"from.{sender}", serializer="json", headers=msg.headers,
                          **msg.properties)

    def send_client(self, client: str, wire: dict) -> None:
        publish_confirmed(self._producer(), wire, exchange="", routing_key=reply_queue_name(client),
                          serializer="json")

    def send_follower(self, name: str, wire: dict) -> None:
        self._producer().publish(wire, exchange="", routing_key=follower_queue_name(name),
                                 serializer="json", retry=True)

    def publish_block(self, sender: int, wire: dict) -> None:
        producer = self._producer()
        if not getattr(self._local, "blocks_declared", False):
            producer.channel.exchange_declare(BLOCKS_EXCHANGE, "direct", durable=True,
                                              auto_delete=False)
            self._local.blocks_declared = True
        producer.publish(wire, exchange=BLOCKS_EXCHANGE, routing_key=f"from.{sender}",
                         serializer="json", retry=True)


class LocalTransport:
    """An in-process network: ``pump`` delivers queued messages in FIFO order."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, Any, bytes]] = deque()
        self.nodes: dict[int, Callable[[Any], Any]] = {}
        self.clients: dict[str, Callable[[Any], Any]] = {}
        self.followers: dict[str, Callable[[Any], Any]] = {}
        self.subscriptions: dict[str, set[int]] = {}  # follower -> validators it hears
        self.delivered = 0

    def send(self, to: int, wire: dict) -> None:
        self.queue.append(("node", to, json.dumps(wire).encode()))

    def send_requests(self, to: int, wires: list[dict]) -> None:
        for w in wires:
            self.send(to, w)

    def broadcast(self, sender: int, peers: list[int], wire: dict) -> None:
        raw = json.dumps(wire).encode()
        self.queue.extend(("node", p, raw) for p in peers)

    def send_client(self, client: str, wire: dict) -> None:
        self.queue.append(("client", client, json.dumps(wire).encode()))

    def send_follower(self, name: str, wire: dict) -> None:
        self.queue.append(("follower", name, json.dumps(wire).encode()))

    def publish_block(self, sender: int, wire: dict) -> None:
        raw = json.dumps(wire).encode()
        self.queue.extend(("follower", f, raw) for f, srcs in self.subscriptions.items()
                          if sender in srcs)

    def pump(self, limit: int | None = None) -> int:
        done = 0
        while self.queue and (limit is None or done < limit):
            kind, dest, raw = self.queue.popleft()
            target = {"node": self.nodes, "client": self.clients,
                      "follower": self.followers}[kind].get(dest)
            if target is not None:
                target(json.loads(raw))
            done += 1
        self.delivered += done
        return done
