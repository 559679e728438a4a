"""Our own bug fails hard, a peer's bad message does not, without a
broker: the node runtime's ERROR state and the worker strategy's exit without an ack.
The real worker process is tests/integration/test_fail_hard.py."""
from types import SimpleNamespace

import pytest

from pbft_tasks import failhard, strategy
from pbft_tasks.node import NodeFailed


@pytest.fixture
def mesh(embedded_mesh):
    return embedded_mesh  # tests/conftest.py


def test_a_bug_while_stepping_stops_the_runtime_for_good(mesh, monkeypatch):
    node = mesh.nodes[1]

    def broken(*_a, **_k):
        raise TypeError("our bug")
    monkeypatch.setattr(node.ledger, "apply", broken)
    client = mesh.client(timeout=5.0)
    client.submit([client.put_request("k", 1)])
    with pytest.raises(NodeFailed, match="our bug"):
        for _ in range(50):
            mesh.step()
    assert isinstance(node.failure, TypeError)
    assert "TypeError" not in node.rejected  # not turned into evidence
    with pytest.raises(NodeFailed, match="stopped after our own bug"):
        node.tick()  # every later stimulus refuses: no half-stepped replica goes on


@pytest.mark.parametrize("wire", [
    {"type": "Blocks", "sender": 2, "blocks": [{"seq": 1, "certificate": 5, "requests": []}]},
    {"type": "Blocks", "sender": 2, "blocks": [{"seq": "1", "certificate": [], "requests": []}]},
    {"type": "Blocks", "sender": 2, "blocks": [{"seq": 1, "view": 0, "digest": "x", "prev": "y",
                                                "skip": ["a"], "hash": "z", "requests": [],
                                                "certificate": []}]},
    {"type": "Prepare", "view": [], "seq": {}, "digest": None, "sender": "x"},
    [1, 2, 3],
])
def test_a_peers_bad_message_is_counted_and_dropped_never_fatal(mesh, wire):
    node = mesh.nodes[0]
    node.handle(wire)  # the adapter's reason, or the core's evidence
    assert sum(node.rejected.values()) == 1 and node.failure is None, node.rejected
    node.tick()  # still running


class _Message:
    def __init__(self):
        self.acked = False
        self.headers = {"id": "t1"}

    def decode(self):
        return [{"type": "Prepare"}], {}, {}

    def ack(self):
        self.acked = True


def _handler(run):
    task = SimpleNamespace(run=run, name="pbft.prepare", send_events=False)
    return strategy.protocol(task, None, SimpleNamespace(event_dispatcher=None))


def test_the_worker_exits_70_without_acknowledging_when_the_runtime_stops(monkeypatch):
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)
    monkeypatch.setattr(failhard.os, "_exit", fake_exit)

    def run(*_a):
        raise NodeFailed("node 0 failed while stepping a Prepare: RuntimeError()")
    msg = _Message()
    with pytest.raises(SystemExit):
        _handler(run)(msg, None, None, None, None)
    assert exits == [70] and msg.acked is False


def test_other_task_errors_are_logged_and_acknowledged(monkeypatch):
    monkeypatch.setattr(failhard.os, "_exit", lambda code: pytest.fail("must not exit"))

    def run(*_a, **_k):
        raise TypeError("unexpected keyword argument")  # e.g. a peer's kwargs
    msg = _Message()
    _handler(run)(msg, None, None, None, None)
    assert msg.acked is True
