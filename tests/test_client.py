"""The client's side of Castro-Liskov sec. 4.1 on the embedded mesh (no broker): f+1
matching replies, and retransmission to every replica until a request is answered."""
from __future__ import annotations

import pytest

from mesh.client import SubmitTimeout


@pytest.fixture
def mesh(embedded_mesh):
    return embedded_mesh  # tests/conftest.py


class LosesFirstSends:
    """A network that loses the first ``n`` request messages the client sends, as a
    broker restart or a crashed primary would."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.sends = inner, n, []

    def send_requests(self, to, wires):
        self.sends.append(to)
        if self.n:
            self.n -= 1
            return
        self.inner.send_requests(to, wires)

    def poll(self, timeout):
        self.inner.poll(timeout)


def test_a_request_whose_copies_are_all_lost_is_sent_to_every_replica_again(mesh):
    # set up: the first send (to the primary) and the whole first send-to-all are lost
    client = mesh.client(timeout=0.02)
    client.transport = net = LosesFirstSends(client.transport, n=1 + mesh.cfg.n)
    # step
    batch = client.wait(client.submit([client.put_request("k", 1)]), timeout=5)
    # check: committed once, after a second round to every replica
    assert batch[0].done and batch[0].resends == 2
    assert net.sends[:1] == [0] and net.sends[1:9] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all(rt.ledger.get("k")["version"] == 1 for rt in mesh.nodes)


def test_resends_back_off_and_the_client_still_gives_up_at_its_deadline(mesh):
    # set up: a network that loses everything
    client = mesh.client(timeout=0.01)
    client.transport = net = LosesFirstSends(client.transport, n=10**9)
    probe = client.submit([client.put_request("probe", 0)])[0]
    # the back-off on the client's own schedule (due() is given the time): 1 x timeout,
    # then doubling per copy up to 8 x
    last = probe.sent_at
    for wait in (0.01, 0.02, 0.04, 0.08, 0.08, 0.08):
        assert not client.due([probe], last + wait - 0.0005)
        assert client.due([probe], last + wait + 0.0005) == [probe]
        last += wait + 0.0005
        client.send_to_all([probe], last)
    client.forget([probe])
    # step / check: in real time, the client gives up at its deadline
    sent_before = len(net.sends)
    batch = client.submit([client.put_request("k", 1)])
    with pytest.raises(SubmitTimeout, match="f\\+1 matching replies"):
        client.wait(batch, timeout=0.5)
    rounds = (len(net.sends) - sent_before - 1) // mesh.cfg.n
    # never more rounds than that schedule allows in 0.5 s (8), never one per poll (~10 ms)
    assert rounds <= 8 and batch[0].resends == rounds


def test_a_queued_request_waits_for_those_before_it_the_head_of_the_line_does_not(mesh):
    """Patience: under a deep window a request is queued behind the client's own earlier
    ones, so its first send to every replica (which starts every backup's request timer)
    waits for them at the measured completion rate; the oldest pending request keeps the
    plain timeout, and no request waits more than 8 x timeout in all."""
    # set up: four requests lost on the way (nothing is answered), sent at t = 0, and
    # ten completions in the 0.9 s before: 5 requests/s seen from t = 1.1
    client = mesh.client(timeout=1.0)
    client.transport = LosesFirstSends(client.transport, n=10**9)
    batch = client.submit([client.put_request(f"k{i}", i) for i in range(4)])
    for p in batch:
        p.sent_at = 0.0
    client.completed.extend(-0.9 + 0.1 * i for i in range(10))  # -0.9 .. 0.0
    # check: the rate, then each request's patience (predecessors / rate)
    assert client.rate(1.1) == pytest.approx(10 / 2.0)
    extra = client.patience(1.1)
    assert [round(extra[p.request.timestamp], 3) for p in batch] == [0.0, 0.2, 0.4, 0.6]
    # step: at 1.1 s only the head is due; at 1.5 s (4.17/s: 0, 0.24, 0.48, 0.72) three
    assert client.due(batch, 1.1) == batch[:1]
    assert client.due(batch, 1.5) == batch[:3]
    # the cap: 500 pending at 5/s would be 100 s; never more than 7 x timeout extra
    more = client.submit([client.put_request(f"m{i}", i) for i in range(496)])
    assert max(client.patience(1.1).values()) == pytest.approx(7.0)
    # a re-sent request backs off as before, whatever its place in line
    more[-1].sent_at, more[-1].resent_at, more[-1].resends = 0.0, 0.0, 1
    assert more[-1] in client.due(more, 2.01) and more[-2] not in client.due(more, 2.01)


def test_with_nothing_completing_every_late_request_is_sent_to_every_replica(mesh):
    """No completion in the last 4 x timeout (a crashed primary): no rate, no patience,
    every request past the plain timeout is sent to every replica at once."""
    client = mesh.client(timeout=1.0)
    client.transport = LosesFirstSends(client.transport, n=10**9)
    batch = client.submit([client.put_request(f"k{i}", i) for i in range(5)])
    for p in batch:
        p.sent_at = 0.0
    client.completed.extend([-10.0, -9.0])  # long ago
    assert client.rate(1.5) is None and client.patience(1.5) == {}
    assert client.due(batch, 1.5) == batch
