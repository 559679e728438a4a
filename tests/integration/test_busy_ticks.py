"""A worker's busy ticks (core/stimuli.py ``Tick.busy``) come from what RabbitMQ says of
its queue: the backlog thread of pbft_tasks/celery_app.py marks the node busy while
messages are ready in its queue (beyond what the worker has prefetched), and not busy
once the queue is empty, or when the broker cannot say."""
from __future__ import annotations

import threading
import uuid

import pytest
from kombu import Connection, Producer

from pbft_tasks import celery_app
from pbft_tasks.brokers import QueueDepth

from tests.meshkit import wait_until

pytestmark = pytest.mark.broker


def test_the_backlog_thread_marks_busy_while_the_queue_holds_messages(broker_url):
    # set up: a queue of our own, and the probe loop reading it as a worker's would
    queue = f"test.busy.{uuid.uuid4().hex[:8]}"
    with Connection(broker_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=False, auto_delete=False)
        celery_app._stop.clear()
        celery_app._busy.clear()
        celery_app._broker_up.set()
        probe = threading.Thread(target=celery_app._probe_loop,
                                 args=(QueueDepth(broker_url, queue),), daemon=True)
        probe.start()
        try:
            # an empty queue: not busy
            wait_until(lambda: probe.is_alive(), 5, "the probe thread to run")
            assert not celery_app._busy.wait(3 * celery_app.PROBE_S)
            # step: messages wait in it
            producer = Producer(ch, auto_declare=False)
            for i in range(3):
                producer.publish({"i": i}, routing_key=queue, serializer="json")
            # check: busy, and no longer once the queue is drained
            wait_until(celery_app._busy.is_set, 5, "the node to be marked busy")
            ch.queue_purge(queue)
            wait_until(lambda: not celery_app._busy.is_set(), 5, "busy to clear")
            # the broker cannot say (no such queue): not busy
            producer.publish({"i": 9}, routing_key=queue, serializer="json")
            wait_until(celery_app._busy.is_set, 5, "busy again")
            ch.queue_delete(queue)
            wait_until(lambda: not celery_app._busy.is_set(), 5, "busy to clear without a queue")
        finally:
            celery_app._stop.set()
            probe.join(timeout=5)
            celery_app._stop.clear()
            celery_app._broker_up.clear()
            celery_app._busy.clear()
            try:
                ch.queue_delete(queue)
            except Exception:
                pass
    assert not probe.is_alive()


def test_a_busy_tick_reaches_the_replica_through_the_runtime(tmp_path):
    """NodeRuntime.tick(busy=True) hands the core a busy Tick: the running request timer
    counts it as busy (the core's own tests count what that does to the timeout)."""
    from pbft_tasks.topology import init_mesh
    from pbft_tasks.transport import LocalTransport
    from pbft_tasks.wiring import build_node

    cfg = init_mesh(tmp_path / "m", nodes=4)
    rt = build_node(cfg, 1, LocalTransport())  # a backup: it waits for requests it knows
    try:
        rt.replica.awaiting[("c", 1)] = None  # a request the replica waits for
        rt.tick()  # starts the request timer
        for _ in range(3):
            rt.tick(busy=True)
        rt.tick()
        assert rt.replica.vc.waiting_since is not None and rt.replica.vc.busy_ticks == 3
    finally:
        rt.ledger.close()
