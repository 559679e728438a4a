"""The Celery transport's message shape (no broker needed to build a message)."""
from pbft_tasks.celery_app import app
from pbft_tasks.core.messages import Prepare, to_wire
from pbft_tasks.transport import task_message


def test_protocol_messages_ask_the_worker_not_to_store_results():
    # A request header overrides the task's ignore_result; without it every protocol
    # message's result was written to Redis (~1.6 ms a task, measured by profiling).
    msg = task_message(app, "pbft.prepare", to_wire(Prepare(0, 1, "a" * 64, 1)))
    assert msg.headers["ignore_result"] is True
    assert msg.headers["task"] == "pbft.prepare"
    args, kwargs, _embed = msg.body
    assert args == [to_wire(Prepare(0, 1, "a" * 64, 1))] and kwargs == {}
