"""Broker settings by queue type: one RabbitMQ, or a RabbitMQ cluster with quorum queues.

Owns: the Celery/kombu settings and queue arguments that differ between mesh.json's
``queue_type = "classic"`` (the default: one broker, classic durable node queues) and
``"quorum"`` (a RabbitMQ cluster, node queues replicated by Raft on every cluster node),
and re-publishing a message the broker did not confirm.  The failover design these
serve is written down in README.md, section "Broker cluster: quorum queues and failover".

Rules and why:
- A broker URL list (``amqp://a;amqp://b;...``, mesh/topology.py) is kombu's failover
  form: a connection that fails moves to the next URL (round robin) and every
  ``retry=True`` publish is re-sent on the new connection.  Nothing here parses it.
- Quorum node queues: ``x-queue-type: quorum`` wherever a node queue is declared
  (``declare_mesh``, the worker's own ``-Q`` queue through Celery's
  ``task_default_queue_type``/``task_create_missing_queue_type``, every client's
  ``send_task``), or RabbitMQ refuses the second declaration (PRECONDITION_FAILED).
- Publisher confirms (``confirm_publish``) with quorum queues: a publish returns only
  once a majority of the cluster holds the message, so a message that survived the
  publish survives a node's death; one not confirmed (the connection dropped while
  waiting, or a nack) is published again -- duplicates are harmless, the core drops
  them by (view, seq, sender) and the client table by (client, timestamp).
- Celery's native delayed delivery (declared on every worker connect when it sees a
  quorum queue) is left out (celery_app.NodeConsumer): the mesh sends no ETA or
  countdown tasks, and its set-up retries each *dead* cluster URL for seconds on every
  reconnect, which is exactly when a node has failed over.
- Reply queues of clients stay classic, exclusive to their connection and auto-deleted:
  a quorum queue cannot be either, and a reply lost with its node is re-requested by
  the client's own retransmission (mesh/client.py).
"""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("hdpbf.brokers")

QUEUE_TYPES = ("classic", "quorum")
# How often a publish the broker nacked is tried again before it counts as our failure.
NACK_RETRIES = 5


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


def publish_confirmed(producer: Any, body: Any, **kw: Any) -> None:
    """``producer.publish(body, retry=True, **kw)``, re-published when the broker nacks
    it.  A lost connection is kombu's to handle (``retry=True`` reconnects, to the next
    cluster node if need be, and publishes again); a nack arrives on a live connection
    (e.g. the queue lost its leader) and is ours to retry."""
    from amqp.exceptions import MessageNacked

    for attempt in range(NACK_RETRIES + 1):
        try:
            producer.publish(body, retry=True, **kw)
            return
        except MessageNacked:
            if attempt == NACK_RETRIES:
                raise
            log.warning("broker nacked a publish to %s/%s; publishing it again",
                        kw.get("exchange", ""), kw.get("routing_key", ""))
            time.sleep(0.05 * (attempt + 1))
