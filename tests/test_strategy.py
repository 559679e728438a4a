"""The lean execution strategy of the protocol tasks (pbft_tasks/strategy.py), with a
fake consumer and fake messages: what runs, when the message is acknowledged, and what
Flower gets to see."""
from __future__ import annotations

import json

import pytest

from pbft_tasks import celery_app, strategy, tasks  # noqa: F401  (registers the tasks)
from pbft_tasks.celery_app import app
from pbft_tasks.node import ALL_TASKS


class FakeEventer:
    enabled = True
    groups = None  # every group; Celery's {"worker"} when only heartbeats are on

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def send(self, type_, **fields):
        self.sent.append((type_, fields))


class FakeConsumer:
    def __init__(self, events: bool = True):
        self.event_dispatcher = FakeEventer() if events else None


class FakeMessage:
    def __init__(self, body, task_id="id-1"):
        self.body = body
        self.headers = {"id": task_id}
        self.acked = 0
        self.log: list[str] = []

    def decode(self):
        return json.loads(self.body)

    def ack(self):
        self.acked += 1
        self.log.append("ack")


class FakeTask:
    name = "pbft.fake"
    send_events = True

    def __init__(self, fail: bool = False, message: FakeMessage | None = None):
        self.calls: list[tuple] = []
        self.fail = fail
        self.message = message

    def run(self, *args, **kwargs):
        if self.message is not None:
            self.message.log.append("run")
        self.calls.append((args, kwargs))
        if self.fail:
            raise RuntimeError("our bug")


def handler_for(task, consumer):
    return strategy.protocol(task, app, consumer)


def test_every_protocol_task_uses_the_lean_strategy_and_status_does_not():
    for name in ALL_TASKS.values():
        assert app.tasks[name].Strategy == "pbft_tasks.strategy:protocol", name
        assert app.tasks[name].ignore_result and app.tasks[name].acks_late, name
    assert app.tasks["pbft.status"].Strategy == "celery.worker.strategy:default"


def test_runs_the_task_with_its_wire_object_then_acknowledges():
    msg = FakeMessage(json.dumps([[{"type": "Prepare"}], {}, {}]))
    task = FakeTask(message=msg)
    consumer = FakeConsumer()
    handler_for(task, consumer)(msg, None, None, None, [])
    assert task.calls == [(({"type": "Prepare"},), {})]
    assert msg.log == ["run", "ack"]  # late: only after the effects
    [(kind, fields)] = consumer.event_dispatcher.sent
    assert kind == "task-succeeded" and fields["name"] == "pbft.fake" and fields["uuid"] == "id-1"


def test_a_failing_task_is_acknowledged_and_reported_as_failed():
    msg = FakeMessage(json.dumps([[1], {}, {}]))
    task = FakeTask(fail=True)
    consumer = FakeConsumer()
    handler_for(task, consumer)(msg, None, None, None, [])
    assert msg.acked == 1
    [(kind, fields)] = consumer.event_dispatcher.sent
    assert kind == "task-failed" and "our bug" in fields["exception"]


@pytest.mark.parametrize("body", ["not json", json.dumps({"args": 1}), json.dumps([1, 2, 3]),
                                  json.dumps([[1], [], {}])])
def test_an_undecodable_body_is_counted_dropped_and_never_run(body, monkeypatch):
    counted: list[str] = []
    monkeypatch.setattr(celery_app, "count_rejected", counted.append)
    msg = FakeMessage(body)
    task = FakeTask()
    handler_for(task, FakeConsumer())(msg, None, None, None, [])
    assert task.calls == [] and msg.acked == 1 and counted == ["undecodable"]


def test_no_events_without_an_enabled_dispatcher():
    msg = FakeMessage(json.dumps([[1], {}, {}]))
    task = FakeTask()
    handler_for(task, FakeConsumer(events=False))(msg, None, None, None, [])
    assert task.calls and msg.acked == 1


def test_events_follow_the_dispatcher_switched_on_and_off_while_running():
    consumer = FakeConsumer()
    consumer.event_dispatcher.enabled = False
    handler = handler_for(FakeTask(), consumer)
    handler(FakeMessage(json.dumps([[1], {}, {}])), None, None, None, [])
    # a worker started without -E: the dispatcher is on for its heartbeats only
    consumer.event_dispatcher.enabled, consumer.event_dispatcher.groups = True, {"worker"}
    handler(FakeMessage(json.dumps([[1], {}, {}])), None, None, None, [])
    assert consumer.event_dispatcher.sent == []
    consumer.event_dispatcher.groups.add("task")  # Flower's enable_events
    handler(FakeMessage(json.dumps([[1], {}, {}])), None, None, None, [])
    assert [kind for kind, _ in consumer.event_dispatcher.sent] == ["task-succeeded"]
