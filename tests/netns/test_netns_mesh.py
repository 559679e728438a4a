"""Validators and followers on hosts of their own (network namespaces), talking only
over their links.

Set up: 4 validators and 4 followers, each in its own namespace, plus the broker host:
9 namespaces on one bridge; RabbitMQ and Redis reachable at one address only.
Step/check 1: cut a follower's link mid-load and restore it: it catches up to the
validators' head.  Step/check 2: cut a validator's link while the others commit far
past its log window (its queued backlog lost meanwhile): back on the link it catches up
by state transfer (its ``installed`` count grows) to the same head.
"""
from __future__ import annotations

import pytest

from ledger.reader import LedgerReader
from mesh.bench.consensus import drive
from mesh.client import BrokerClientTransport, MeshClient
from mesh.ops.netns_mesh import NetnsMesh
from pbft_tasks.topology import DEFAULT_RESULT_BACKEND, client_keys, load_client_identity, node_keys
from pbft_tasks.signing import Verifier
from tests.meshkit import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
def netns_mesh(tmp_path, broker_url, netns_ok):
    meshes = []

    def make(followers=4, **settings):
        m = NetnsMesh(tmp_path / f"mesh{len(meshes)}", 4, followers, broker_url,
                      DEFAULT_RESULT_BACKEND, prefix="hfol", **settings)
        meshes.append(m)
        return m.up()
    yield make
    for m in meshes:
        m.down()


def client_of(m: NetnsMesh) -> MeshClient:
    c = MeshClient("admin", load_client_identity(m.cfg, "admin"), m.cfg.n,
                   Verifier(node_keys(m.cfg), client_keys(m.cfg)), timeout=2.0)
    c.transport = BrokerClientTransport(m.app, c)
    return c


def tips(m: NetnsMesh) -> dict[int, tuple[int, str]]:
    out = {}
    for node in m.cfg.nodes:
        with LedgerReader(m.cfg.node_data_dir(node.id) / "ledger.sqlite") as r:
            out[node.id] = (r.height(), r.head())
    return out


def converged(m: NetnsMesh, timeout: float = 120.0) -> tuple[int, str]:
    def same():
        t = set(tips(m).values())
        return next(iter(t)) if len(t) == 1 else None
    return wait_until(same, timeout, lambda: f"one head on every validator; now {tips(m)}",
                      interval=0.2)


def followers_at(m: NetnsMesh, tip: tuple[int, str], timeout: float = 120.0) -> None:
    def at():
        return all((st := m.followers.status(n)) is not None and (st["height"], st["head"]) == tip
                   for n in m.names)
    wait_until(at, timeout, lambda: f"followers at {tip[0]}; now "
               f"{[(n, (m.followers.status(n) or {}).get('height')) for n in m.names]}",
               interval=0.2)


def test_nine_namespaces_a_follower_cut_mid_load_catches_up(netns_mesh):
    m = netns_mesh(followers=4)
    assert len(m.topo.namespaces()) >= 9
    client = client_of(m)
    try:
        drive(client, 200, window=20, chunk=10, key_prefix="a", every=True, timeout=180)
        m.topo.cut("f2")
        drive(client, 300, window=20, chunk=10, key_prefix="b", every=True, timeout=180)
        behind = m.followers.status("f2")["height"]
        m.topo.restore("f2")
        drive(client, 100, window=20, chunk=10, key_prefix="c", every=True, timeout=180)
    finally:
        client.transport.close()
    tip = converged(m)
    assert behind < tip[0], "the cut follower was not behind at all"
    followers_at(m, tip)
    for name in m.names:
        assert not m.followers.status(name)["rejected"]


def test_a_validator_cut_off_past_its_window_catches_up_by_state_transfer(netns_mesh):
    m = netns_mesh(followers=0, checkpoint_interval=4, log_window=8)
    client = client_of(m)
    try:
        drive(client, 40, window=4, chunk=2, key_prefix="a", every=True, timeout=180)
        m.topo.cut("v3")
        # f = 1: the other three commit without it, many blocks past its window of 8.
        drive(client, 120, window=4, chunk=2, key_prefix="b", every=False, timeout=180)
        with m.app.connection_for_write() as conn:   # its backlog lost while it was away
            conn.default_channel.queue_purge("node.3")
        m.topo.restore("v3")
        drive(client, 40, window=4, chunk=2, key_prefix="c", every=False, timeout=180)
    finally:
        client.transport.close()
    tip = converged(m, timeout=180)
    st = m.local.status(3, timeout=30)
    assert st["installed"] > 0, f"node 3 caught up without state transfer: {st}"
    assert (st["height"], st["head"]) == tip
