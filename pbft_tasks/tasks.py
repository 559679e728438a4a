"""One Celery task per protocol message type: thin adapters around NodeRuntime.handle.

Each task receives the message's wire object (docs/PROTOCOL.md), hands it to this
worker's node runtime, and returns nothing: no protocol decision and no exception for a
bad message escapes a task (the runtime logs and counts it).  ``pbft.request`` also
accepts a list of requests, so that a client may pipeline several in one message.
``pbft.status`` is the one task with a result (through the Redis backend).
"""
from __future__ import annotations

from .celery_app import app, runtime

# Protocol tasks run through a lean execution strategy (pbft_tasks/strategy.py: no
# Request object, pool or tracer; one monitoring event instead of three).
_PROTOCOL = {"ignore_result": True, "acks_late": True, "Strategy": "pbft_tasks.strategy:protocol"}


def _one(args: tuple, name: str):
    """Exactly one positional argument, the wire object; anything else is malformed
    (counted, never a TypeError out of Celery)."""
    if len(args) != 1:
        runtime().reject("malformed", f"{name} takes one wire object, got {len(args)} arguments",
                          {"type": name})
        return None
    return args[0]


def _handle(args: tuple, expected: str) -> None:
    wire = _one(args, expected)
    if wire is not None:
        runtime().handle(wire, expected)


@app.task(name="pbft.request", **_PROTOCOL)
def request(*args, **kwargs) -> None:
    rt = runtime()
    wire = _one(args, "Request") if not kwargs else _one((), "Request")
    if wire is None:
        return
    if isinstance(wire, list):
        if len(wire) > 4096:
            rt.reject("oversize", f"{len(wire)} requests in one message", {"type": "Request"})
            return
        for w in wire:
            rt.handle(w, "Request")
    else:
        rt.handle(wire, "Request")


@app.task(name="pbft.preprepare", **_PROTOCOL)
def preprepare(*args) -> None:
    _handle(args, "PrePrepare")


@app.task(name="pbft.prepare", **_PROTOCOL)
def prepare(*args) -> None:
    _handle(args, "Prepare")


@app.task(name="pbft.commit", **_PROTOCOL)
def commit(*args) -> None:
    _handle(args, "Commit")


@app.task(name="pbft.checkpoint", **_PROTOCOL)
def checkpoint(*args) -> None:
    _handle(args, "Checkpoint")


@app.task(name="pbft.viewchange", **_PROTOCOL)
def viewchange(*args) -> None:
    _handle(args, "ViewChange")


@app.task(name="pbft.newview", **_PROTOCOL)
def newview(*args) -> None:
    _handle(args, "NewView")


@app.task(name="pbft.fetch", **_PROTOCOL)
def fetch(*args) -> None:
    """State transfer: a peer asks for committed blocks (adapter-level, see node.py)."""
    wire = _one(args, "Fetch")
    if wire is not None:
        runtime().handle(wire, "Fetch")


@app.task(name="pbft.blocks", **_PROTOCOL)
def blocks(*args) -> None:
    """State transfer: committed blocks with their certificates, checked then installed."""
    wire = _one(args, "Blocks")
    if wire is not None:
        runtime().handle(wire, "Blocks")


@app.task(name="pbft.status", ignore_result=False, acks_late=False)
def status() -> dict:
    return runtime().status()
