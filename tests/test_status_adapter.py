"""The status exchange through the real adapter (NodeRuntime: JSON, signatures, SQLite
ledgers) in an embedded mesh, where time is ticks: a node cut off while blocks commit
reaches the head of an idle mesh; the idle cost is n-1 STATUS messages a node a status
period and nothing else; a STATUS signed by the wrong key is refused."""
from __future__ import annotations

import dataclasses

import pytest

from pbft_tasks.core.messages import Status, to_wire
from pbft_tasks.signing import Signer
from pbft_tasks.topology import STATUS_MS, load_node_identity


def period(mesh) -> int:
    return mesh.cfg.timer_ticks(STATUS_MS)


def commit(mesh, client, keys: list[str]) -> None:
    pending = client.submit([client.put_request(k, 1) for k in keys])
    for _ in range(10_000):
        if all(p.done for p in pending):
            return
        mesh.step()
    raise AssertionError(f"{keys} not committed")


@pytest.mark.parametrize("k", [3, 70], ids=["below-interval", "above-interval"])
def test_a_node_cut_off_while_k_blocks_commit_reaches_the_head_of_an_idle_mesh(embedded_mesh, k):
    # set up: node 3 hears nothing while k blocks commit one by one (checkpoints every 64)
    mesh = embedded_mesh
    client = mesh.client(timeout=0.01)
    commit(mesh, client, ["before"])
    handler = mesh.transport.nodes[3]
    mesh.transport.nodes[3] = lambda wire: None  # its queue loses everything
    for i in range(k):
        commit(mesh, client, [f"dark{i}"])
    mesh.transport.nodes[3] = handler
    head = mesh.nodes[0].ledger.height
    assert head == 1 + k and mesh.nodes[3].ledger.height == 1
    # step: no more requests, only time
    for steps in range(10 * period(mesh)):
        if mesh.nodes[3].ledger.height == head:
            break
        mesh.step()
    # check: at the head, by state transfer, within about two status periods
    assert mesh.nodes[3].ledger.height == head, [rt.ledger.height for rt in mesh.nodes]
    assert mesh.nodes[3].ledger.head == mesh.nodes[0].ledger.head
    assert mesh.nodes[3].installed == k
    assert steps <= 2 * period(mesh) + 5


def test_an_idle_mesh_sends_n_minus_1_statuses_a_node_a_period_and_nothing_else(embedded_mesh):
    mesh = embedded_mesh
    client = mesh.client(timeout=0.01)
    commit(mesh, client, ["x"])
    for _ in range(2 * period(mesh)):  # whatever the commit left to say is said
        mesh.step()
    before = [(rt.sent, rt.sent_status) for rt in mesh.nodes]
    periods = 5
    for _ in range(periods * period(mesh)):
        mesh.step()
    n = mesh.cfg.n
    for rt, (sent, status) in zip(mesh.nodes, before):
        assert rt.sent_status - status == periods * (n - 1)
        assert rt.sent - sent == rt.sent_status - status  # nothing but statuses


def test_a_status_signed_by_another_node_is_refused(embedded_mesh):
    mesh = embedded_mesh
    key2 = load_node_identity(mesh.cfg, 2)
    forged = Signer(2, key2).sign(Status(0, 99, "ab" * 32, 0, 2))
    wire = to_wire(dataclasses.replace(forged, sender=1))  # node 2's signature, node 1's name
    assert mesh.nodes[0].handle(wire, "Status") == "bad_signature"
    assert mesh.nodes[0].handle(to_wire(forged), "Status") is None  # the honest one is taken
    assert mesh.nodes[0].replica.statuses.peers[2].seq == 99
