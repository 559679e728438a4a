"""One Celery task per protocol message type: thin adapters around NodeRuntime.handle.

Each task receives the message's wire object (docs/PROTOCOL.md), hands it to this
worker's node runtime, and returns nothing: no protocol decision and no exception for a
bad message escapes a task (the runtime logs and counts it).  ``pbft.request`` also
accepts a list of requests, so that a client may pipeline several in one message.
``pbft.status``, ``pbft.trace`` and ``pbft.hops`` are the tasks with a result (through
the Redis backend), for monitoring.
"""
from __future__ import annotations

from .celery_app import app, runtime

# Protocol tasks run through a lean execution strategy (pbft_tasks/strategy.py: no
# Request object, pool or tracer; one monitoring event instead of three).
_PROTOCOL = {"ignore_result": True, "acks_late": True, "Strategy": "pbft_tasks.strategy:protocol"}


_NONE = object()


def _one(args: tuple, name: str, kwargs: dict | None = None):
    """Exactly one positional argument, the wire object, and no keyword arguments;
    anything else is malformed (counted, never a TypeError out of Celery).  A ``null``
    wire object is one argument: NodeRuntime.handle counts it as malformed."""
    if len(args) != 1 or kwargs:
        runtime().reject("malformed", f"{name} takes one wire object, got {len(args)} arguments"
                         f"{' and keyword arguments' if kwargs else ''}", {"type": name})
        return _NONE
    return args[0]


def _handle(args: tuple, kwargs: dict, expected: str) -> None:
    wire = _one(args, expected, kwargs)
    if wire is not _NONE:
        runtime().handle(wire, expected)


@app.task(name="pbft.request", **_PROTOCOL)
def request(*args, **kwargs) -> None:
    rt = runtime()
    wire = _one(args, "Request", kwargs)
    if wire is _NONE:
        return
    if isinstance(wire, list):
        if len(wire) > 4096:
            rt.reject("oversize", f"{len(wire)} requests in one message", {"type": "Request"})
            return
        rt.handle_requests(wire)
    else:
        rt.handle(wire, "Request")


@app.task(name="pbft.preprepare", **_PROTOCOL)
def preprepare(*args, **kwargs) -> None:
    _handle(args, kwargs, "PrePrepare")


@app.task(name="pbft.prepare", **_PROTOCOL)
def prepare(*args, **kwargs) -> None:
    _handle(args, kwargs, "Prepare")


@app.task(name="pbft.commit", **_PROTOCOL)
def commit(*args, **kwargs) -> None:
    _handle(args, kwargs, "Commit")


@app.task(name="pbft.certificate", **_PROTOCOL)
def certificate(*args, **kwargs) -> None:
    """Collector vote routing (core/collector.py): 2f prepares or 2f+1 commits in one."""
    _handle(args, kwargs, "Certificate")


@app.task(name="pbft.checkpoint", **_PROTOCOL)
def checkpoint(*args, **kwargs) -> None:
    _handle(args, kwargs, "Checkpoint")


@app.task(name="pbft.viewchange", **_PROTOCOL)
def viewchange(*args, **kwargs) -> None:
    _handle(args, kwargs, "ViewChange")


@app.task(name="pbft.newview", **_PROTOCOL)
def newview(*args, **kwargs) -> None:
    _handle(args, kwargs, "NewView")


@app.task(name="pbft.peer_status", **_PROTOCOL)
def peer_status(*args, **kwargs) -> None:
    """A peer's STATUS (core/status.py): how far it is, for catching up without traffic."""
    _handle(args, kwargs, "Status")


@app.task(name="pbft.fetch", **_PROTOCOL)
def fetch(*args, **kwargs) -> None:
    """State transfer: a peer asks for committed blocks (adapter-level, see node.py)."""
    _handle(args, kwargs, "Fetch")


@app.task(name="pbft.blocks", **_PROTOCOL)
def blocks(*args, **kwargs) -> None:
    """State transfer: committed blocks with their certificates, checked then installed."""
    _handle(args, kwargs, "Blocks")


@app.task(name="pbft.status", ignore_result=False, acks_late=False)
def status() -> dict:
    return runtime().status()


@app.task(name="pbft.trace", ignore_result=False, acks_late=False)
def trace() -> dict:
    """The node's recent stimuli and what each caused (core/trace.py)."""
    return runtime().trace_status()


@app.task(name="pbft.hops", ignore_result=False, acks_late=False)
def hops() -> list:
    """The timing records of this node's last task runs (stages.py), for the bench."""
    return list(runtime().stages.hops)
