"""A lean Celery execution strategy for the protocol tasks (``pbft.*`` but status).

Owns: how a node's worker runs a protocol message once Celery's consumer has taken it
off the node queue.  Celery turns each incoming task message into work through the
task's *strategy* (``Task.Strategy``).  The default one builds a ``Request``, passes it
through the pool to the tracer (task states, signals, result bookkeeping) and sends
three monitoring events.  A protocol message needs none of it: its task returns nothing,
its result is ignored, and a bad message is the runtime's business, never an exception.
On the 2-core machine that machinery was about a quarter of a worker's CPU, and one
PBFT request costs ~25 task executions across a 4-node mesh (PBFT's n^2 votes).

Rules:
- The message is still a Celery task message (protocol 2, JSON) on ``node.<id>``, run
  by the task's own function in the worker's consumer thread, as the solo pool does.
- Acknowledged late, after the function returned (its effects are in the ledger).  A
  ``kill -9`` mid-task leaves it unacknowledged, so RabbitMQ redelivers it and the core
  drops the duplicate.
- Our own bug fails hard: when the node runtime stops (``NodeFailed``, node.py) the
  process exits at once with ``EX_SOFTWARE`` (70), without acknowledging the message,
  and its supervisor (compose's restart policy, ``hdpbf up``'s respawn) restarts it from
  its durable records; RabbitMQ redelivers what it had not acknowledged.  Any other
  exception out of a task (not from the runtime: nothing was stepped) is logged and the
  message acknowledged, as before.
- A body that does not decode to (args, kwargs, embed) is counted as ``undecodable``
  and dropped.
- Monitoring: while the worker's events are on, one ``task-succeeded`` (or
  ``task-failed``) event per message, carrying the task name, so Flower still counts
  every protocol task by name.  They are off until someone watches: Flower switches
  them on in every worker when it starts and every few seconds after (its
  ``enable_events``), ``-E`` from the start; checked per message.
- CPU by stage: each run is one ``StageClock`` run of the node (stages.py): decode
  here, the node's stages inside the task, then task, event and ack here.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from .failhard import fail_hard
from .node import NodeFailed

log = logging.getLogger("hdpbf.strategy")


class _NoClock:
    """A worker without a node runtime (a plain worker): nothing to account."""
    def begin(self) -> None: ...
    def lap(self, stage: str) -> None: ...
    def end(self, stage: str) -> None: ...


_NO_CLOCK = _NoClock()


def _task_events_on(eventer: Any) -> bool:
    """Celery keeps its dispatcher enabled for the worker's heartbeats alone (groups
    ``["worker"]``) when task events are off; ``enable_events`` adds ``task``."""
    return eventer.enabled and (not eventer.groups or "task" in eventer.groups)


def protocol(task: Any, app: Any, consumer: Any, **_: Any):
    run = task.run
    name = task.name
    eventer = consumer.event_dispatcher
    # read per message: Flower switches a running worker's events on (enable_events)
    wants_events = eventer is not None and task.send_events

    from . import celery_app

    def task_message_handler(message, body, ack, reject, callbacks, **__):
        rt = celery_app._runtime
        clock = rt.stages if rt is not None else _NO_CLOCK
        clock.begin()
        try:
            args, kwargs, _embed = message.decode()
            if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
                raise ValueError("the body is not [args, kwargs, embed]")
        except Exception as exc:
            from .celery_app import count_rejected
            count_rejected("undecodable")
            log.warning("dropped an undecodable %s message: %s", name, exc)
            message.ack()
            clock.end("ack")
            return
        clock.lap("decode")
        task_id = message.headers.get("id") or str(uuid.uuid4())
        send_event = eventer.send if wants_events and _task_events_on(eventer) else None
        t0 = time.monotonic()
        try:
            run(*args, **kwargs)
            clock.lap("task")
        except NodeFailed:
            fail_hard(f"{name} {task_id}")  # never returns; the message stays unacknowledged
        except Exception as exc:  # outside the runtime (nothing stepped): loud, acknowledged
            log.exception("%s %s failed", name, task_id)
            if send_event is not None:
                send_event("task-failed", uuid=task_id, name=name, exception=repr(exc))
        else:
            if send_event is not None:
                send_event("task-succeeded", uuid=task_id, name=name, result="None",
                           runtime=time.monotonic() - t0)
                clock.lap("event")
        message.ack()
        clock.end("ack")

    return task_message_handler
