"""A worker cut off from RabbitMQ (cut_off_backup.toml on the real mesh) must not tick:
its request timer would expire on its own silence and it would move alone to view 1,
then 2, 3, 4.  Back on the broker it would ignore the others' view-0 messages for good
(PBFT gives a replica alone in a higher view no way back): its ledger would keep up by
state transfer, but it would never vote again, so one more fault would stop the mesh.
The tick thread ticks only while the worker's consumer holds a broker connection
(pbft_tasks/celery_app.py, ``_broker_up``)."""
from __future__ import annotations

from celery.worker.consumer.consumer import Consumer

from pbft_tasks import celery_app


class FakeRuntime:
    def __init__(self):
        self.ticks = 0

    def tick(self, busy: bool = False):
        self.ticks += 1


def test_a_worker_that_lost_the_broker_does_not_tick_until_it_reconnects(monkeypatch):
    # set up: a node runtime, a consumer whose connection comes and goes (Celery's own
    # connect / connection-loss handling replaced by fakes)
    rt = FakeRuntime()
    monkeypatch.setattr(celery_app, "_runtime", rt)
    monkeypatch.setattr(Consumer, "connect", lambda self: "connection")
    monkeypatch.setattr(Consumer, "on_connection_error_after_connected", lambda self, exc: None)
    consumer = object.__new__(celery_app.NodeConsumer)
    celery_app._broker_up.clear()
    try:
        # step / check: connected -> ticks; lost -> none; reconnected -> ticks again
        assert consumer.connect() == "connection"
        celery_app._tick_once()
        assert rt.ticks == 1
        consumer.on_connection_error_after_connected(ConnectionResetError())
        for _ in range(1000):
            celery_app._tick_once()
        assert rt.ticks == 1, "a cut-off worker's timers must not run"
        consumer.connect()
        celery_app._tick_once()
        assert rt.ticks == 2
    finally:
        celery_app._broker_up.clear()
