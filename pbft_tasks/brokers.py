"""Broker settings by queue type: one RabbitMQ, or a RabbitMQ cluster with quorum queues.

Owns: the Celery/kombu settings and queue arguments that differ between mesh.json's
``queue_type = "classic"`` (the default: one broker, classic durable node queues) and
``"quorum"`` (a RabbitMQ cluster, node queues replicated by Raft on every cluster node),
and re-publishing a message the broker did not confirm.  The failover design these
serve is written down in docs/operations/broker-cluster.md.

Rules and why:
- A broker URL list (``amqp://a;amqp://b;...``, pbft_tasks/topology.py) is kombu's failover
  form: a connection that fails moves to the next URL (round robin) and every
  ``retry=True`` publish is re-sent on the new connection.  Nothing here parses it.
- Quorum node queues: ``x-queue-type: quorum`` wherever a node queue is declared
  (``declare_mesh``, the worker's own ``-Q`` queue through Celery's
  ``task_default_queue_type``/``task_create_missing_queue_type``, every client's
  ``send_task``), or RabbitMQ refuses the second declaration (PRECONDITION_FAILED).
- Publisher confirms (``confirm_publish``) with quorum queues: a publish returns only
  once a majority of the cluster holds the message, so a message that survived the
  publish survives a node's death; one not confirmed (the connection dropped while
  waiting, or a nack) is published again, on the next node if need be -- duplicates are harmless, the core drops
  them by (view, seq, sender) and the client table by (client, timestamp).
- Celery's native delayed delivery (declared on every worker connect when it sees a
  quorum queue) is left out (celery_app.NodeConsumer): the mesh sends no ETA or
  countdown tasks, and its set-up retries each *dead* cluster URL for seconds on every
  reconnect, which is exactly when a node has failed over.
- ``QueueDepth`` reads how many messages are ready in one queue (a passive declare on a
  connection of its own; None when the broker does not answer): the worker's backlog,
  for its metrics and its busy ticks (celery_app.py).
- Reply queues of clients stay classic, exclusive to their connection and auto-deleted:
  a quorum queue cannot be either, and a reply lost with its node is re-requested by
  the client's own retransmission (mesh/client.py).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("hdpbf.brokers")

QUEUE_TYPES = ("classic", "quorum")


def check_queue_type(queue_type: str) -> str:
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue_type must be one of {list(QUEUE_TYPES)}, got {queue_type!r}")
    return queue_type


def queue_arguments(queue_type: str) -> dict | None:
    """``arguments`` for ``queue_declare`` of a node queue."""
    return {"x-queue-type": "quorum"} if check_queue_type(queue_type) == "quorum" else None


def celery_queue_settings(queue_type: str) -> dict:
    """Celery settings that depend on the queue type (merged into celery_settings)."""
    if check_queue_type(queue_type) == "classic":
        return {}
    return {
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        # Per-consumer prefetch (quorum queues refuse a global QoS; Celery detects them).
        "worker_detect_quorum_queues": True,
        "broker_transport_options": {"confirm_publish": True},
    }


# kombu's retry for a protocol publish: forever (PBFT has no message it may drop on its
# own: retransmission would recover it, but only after a timer), with no pause before
# the first retry (the next cluster node is tried at once) and at most 1 s between.
PUBLISH_RETRY = {"max_retries": None, "interval_start": 0, "interval_step": 0.2,
                 "interval_max": 1}


class QueueDepth:
    """Messages ready in ``queue`` (delivered to no consumer yet), asked of the broker.

    One connection of its own, opened on first use and again after any error (the
    worker's connections belong to its consumer thread); callers from several threads
    take turns.  ``ready()`` is None when the broker or the queue does not answer."""

    def __init__(self, broker_url: str, queue: str, connect_timeout: float = 2.0):
        self.url, self.queue, self.connect_timeout = broker_url, queue, connect_timeout
        self.lock = threading.Lock()
        self.conn: Any = None

    def ready(self) -> int | None:
        from kombu import Connection
        with self.lock:
            try:
                if self.conn is None:
                    self.conn = Connection(self.url, connect_timeout=self.connect_timeout)
                    self.conn.ensure_connection(max_retries=1)
                ok = self.conn.default_channel.queue_declare(queue=self.queue, passive=True)
                return int(ok.message_count)
            except Exception as exc:  # the broker down, or the queue not declared yet
                log.info("queue depth of %s not read: %s", self.queue, exc)
                self.close_locked()
                return None

    def close_locked(self) -> None:
        if self.conn is not None:
            try:
                self.conn.release()
            except Exception:
                pass
        self.conn = None

    def close(self) -> None:
        with self.lock:
            self.close_locked()


def publish_confirmed(producer: Any, body: Any, **kw: Any) -> None:
    """``producer.publish(body, retry=True, **kw)`` with ``PUBLISH_RETRY``.

    With ``confirm_publish`` on, py-amqp raises ``MessageNacked`` for a nack and a
    connection error when the connection drops before the confirm; both are
    "recoverable connection errors" to kombu, whose ``ensure`` then reconnects (to the
    next broker URL once this one fails) and publishes again.  So a publish returns only
    once some cluster node confirmed the message, and blocks while no node can."""
    producer.publish(body, retry=True, retry_policy=PUBLISH_RETRY, **kw)


# A solo worker with a small prefetch stalls under backlog (plain Celery at prefetch 1:
# 5-10 tasks/s); 64 does not (docs/benchmarks/broker-cluster.md, "Draining a backlog").
PREFETCH = 64


def celery_settings(broker_url: str, result_backend: str, queue_type: str = "classic") -> dict:
    return {**celery_queue_settings(queue_type),
        "broker_url": broker_url,
        "result_backend": result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": PREFETCH,
        "worker_consumer": "pbft_tasks.celery_app:NodeConsumer",
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": "hdpbf.default",
        # task events only while someone watches: Flower turns them on (enable_events)
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "result_expires": 600,
        # Not exclusive: a worker whose link was cut reconnects before RabbitMQ has
        # noticed (heartbeat) that its old connection is dead; an exclusive remote-control
        # queue of that old connection then makes the new one fail "RESOURCE_LOCKED" and
        # the worker exit (tests/netns cuts a validator's link for a few s).
        "control_queue_exclusive": False,
    }
