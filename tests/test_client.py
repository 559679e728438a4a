"""The client's side of Castro-Liskov sec. 4.1 on the embedded mesh (no broker): f+1
matching replies, and retransmission to every replica until a request is answered."""
from __future__ import annotations

import pytest

from mesh.client import SubmitTimeout
from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import init_mesh


@pytest.fixture
def mesh(tmp_path):
    init_mesh(tmp_path, nodes=4)
    with EmbeddedMesh(str(tmp_path / "mesh.json")) as m:
        yield m


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
    batch = client.submit([client.put_request("k", 1)])
    # step / check
    with pytest.raises(SubmitTimeout, match="f\\+1 matching replies"):
        client.wait(batch, timeout=0.5)
    rounds = (len(net.sends) - 1) // mesh.cfg.n
    # 0.5 s at 0.01 s doubling up to 0.08 s: about 8 rounds, never one per poll (~10 ms)
    assert 3 <= rounds <= 12 and batch[0].resends == rounds
