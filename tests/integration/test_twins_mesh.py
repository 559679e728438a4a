"""Twins on real RabbitMQ (Bano et al., "Twins: BFT Systems Made Robust", 2020).

A twin is a second worker process for one node id: the same ``HDPBF_NODE_ID`` and key,
its own ledger (``HDPBF_DATA_DIR``, pbft_tasks/celery_app.py), consuming the same queue
``node.<id>``.  RabbitMQ hands each message of that queue to one of the two consumers,
so the twins see different requests and votes and, each following the protocol, sign
conflicting pre-prepares, votes and view changes under one valid identity: one
equivocating Byzantine node, with no attack code at all.

Set up: a 4-worker mesh and a twin of node ``twinned``.  Step: 200 updates through a
client with a 1 s timeout (f+1 matching replies each).  Check: every update is
acknowledged; the three honest ledgers converge to one head and audit (2f+1 signed
commits per block); every acknowledged update reads back on every honest node; and
neither twin's ledger holds a block that differs from the honest chain at its height
(each block it executed carries 2f+1 commits, f+1 of them honest).  Printed: updates
committed, blocks, the honest nodes' views (did a view change happen?), the twins'
heights and the evidence the honest nodes recorded.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ledger.reader import LedgerReader
from mesh.ops.launcher import node_env, stop_groups, worker_command

from tests.meshkit import Mesh, audit_node, wait_until

pytestmark = pytest.mark.broker

UPDATES = 200


class Twin:
    """A second worker process for node ``node_id``, with a ledger of its own."""

    def __init__(self, mesh: Mesh, node_id: int):
        self.node_id = node_id
        self.data_dir = mesh.base / f"twin{node_id}"
        self.log_path = Path(mesh.local.log_dir) / f"node{node_id}-twin.log"
        env = {**node_env(str(mesh.config_path), node_id), **mesh.local.extra_env.get(node_id, {}),
               "HDPBF_DATA_DIR": str(self.data_dir), "HDPBF_METRICS_PORT": "0"}
        # its own Celery node name: two workers called node<i>@host confuse remote control
        cmd = [f"node{node_id}twin@%h" if a == f"node{node_id}@%h" else a
               for a in worker_command(node_id)]
        self.ready_line = re.compile(rf"node{node_id}twin@\S+ ready\.")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"twin of node {self.node_id} exited with {self.proc.returncode}; "
                            f"see {self.log_path}")
            # Celery's "<name> ready." comes once it consumes; before that the first
            # twin would take every message
            return self.ready_line.search(self.log_path.read_text(errors="replace"))
        wait_until(ready, timeout, f"the twin of node {self.node_id} to consume ({self.log_path})")

    def tip(self) -> tuple[int, str]:
        with LedgerReader(self.data_dir / "ledger.sqlite") as r:
            return r.height(), r.head()

    def blocks(self) -> list[dict]:
        with LedgerReader(self.data_dir / "ledger.sqlite") as r:
            return list(r.iter_blocks())

    def stop(self) -> None:
        stop_groups([self.proc], timeout=15)


@pytest.fixture
def twinned_mesh(make_mesh):
    """``twinned_mesh(node)`` -> (mesh, twin): a started 4-node mesh plus a second
    worker for ``node``; the twin is stopped before the mesh."""
    twins: list[Twin] = []

    def make(node_id: int) -> tuple[Mesh, Twin]:
        mesh = make_mesh(4)
        twin = Twin(mesh, node_id)
        twins.append(twin)
        twin.wait_ready()
        return mesh, twin

    yield make
    for t in twins:
        t.stop()


def submit_all(mesh: Mesh, client, count: int, prefix: str, timeout: float) -> dict:
    """Submit ``count`` puts in chunks, wait for f+1 matching replies; returns the
    acknowledged ones as key -> value (what did not make it is reported by the caller)."""
    pending = []
    for start in range(0, count, 50):
        pending += client.submit([client.put_request(f"{prefix}{i}", i)
                                  for i in range(start, min(count, start + 50))])
    try:
        mesh.wait_replies(client, pending, timeout=timeout)
    except TimeoutError:
        pass
    return {p.request.op["key"]: p.request.op["value"] for p in pending if p.done}


def check_twins(mesh: Mesh, twin: Twin, honest: list[int], acked: dict, elapsed: float) -> None:
    # the honest ledgers converge to one head, which holds every acknowledged update
    def converged():
        mesh.check_no_storm()
        tips = {mesh.tip(i) for i in honest}
        return len(tips) == 1 and next(iter(tips))[0] >= 1
    wait_until(converged, 30, lambda: f"honest nodes {honest} to converge: {mesh.describe_tips()}",
               interval=0.2)
    height = mesh.tip(honest[0])[0]
    for i in honest:
        assert audit_node(mesh, i) == height
        with mesh.reader(i) as r:
            wrong = {k: r.get_value(k, default="<missing>") for k, v in acked.items()
                     if r.get_value(k, default="<missing>") != v}
        assert not wrong, f"node {i}: {len(wrong)} acknowledged updates read back wrong, e.g. {list(wrong.items())[:3]}"
    # neither twin holds a block the honest chain does not have at its height
    with mesh.reader(honest[0]) as r:
        chain = {b["seq"]: b["hash"] for b in r.iter_blocks()}
    with mesh.reader(twin.node_id) as r:  # twin A: the mesh's own worker for that node
        twin_a = list(r.iter_blocks())
    for name, blocks in (("A", twin_a), ("B", twin.blocks())):
        forks = [b["seq"] for b in blocks if chain.get(b["seq"], b["hash"]) != b["hash"]]
        assert not forks, f"twin {name} of node {twin.node_id} executed other blocks at {forks}"
    statuses = {i: mesh.local.status(i) for i in honest}
    evidence: dict[str, int] = {}
    for s in statuses.values():
        for reason, n in s["rejected"].items():
            evidence[reason] = evidence.get(reason, 0) + n
    views = {i: s["view"] for i, s in statuses.items()}
    new_views = sum(s["handled"].get("NewView", 0) for s in statuses.values())
    print(f"\ntwinned node {twin.node_id}: {len(acked)}/{UPDATES} updates committed in "
          f"{elapsed:.1f}s, {height} blocks; honest views {views} "
          f"({'a view change' if max(views.values()) > 0 else 'no view change'}, {new_views} "
          f"NEW-VIEWs received); twin "
          f"heights A {len(twin_a)} B {twin.tip()[0]}; evidence on honest nodes {evidence}")


def test_twinned_primary_cannot_split_the_honest_ledgers(twinned_mesh):
    """Node 0, the primary of view 0, is two processes: each proposes the requests it
    took from the queue, so the twins send conflicting pre-prepares for the same seqs."""
    # set up
    mesh, twin = twinned_mesh(0)
    client = mesh.client(timeout=1.0)
    client.bundle = 10  # requests in 20 messages, not 4: both twins get some
    # step
    t0 = time.perf_counter()
    acked = submit_all(mesh, client, UPDATES, "tw", timeout=40)
    elapsed = time.perf_counter() - t0
    # check
    check_twins(mesh, twin, [1, 2, 3], acked, elapsed)
    assert len(acked) == UPDATES, (f"only {len(acked)} of {UPDATES} updates were "
                                   f"acknowledged: the honest nodes are 2f+1 and should commit")


def test_twinned_backup_that_becomes_primary_cannot_split_the_honest_ledgers(twinned_mesh):
    """Node 1, a backup in view 0 and the primary of view 1, is two processes.  Half the
    updates commit in view 0; then the primary is paused (SIGSTOP) until the honest
    backups have moved to view 1, so the twins, each with the VIEW-CHANGEs and requests
    it happened to take from the queue, act as two primaries of view 1.  (In our runs
    the queue split the VIEW-CHANGEs so that neither twin had 2f+1: view 1 never
    started and the honest primary of view 2 took over; tests/core/test_twins.py has
    the case where both twins send a NEW-VIEW.)"""
    # set up
    mesh, twin = twinned_mesh(1)
    client = mesh.client(timeout=1.0)
    client.bundle = 10
    t0 = time.perf_counter()
    acked = submit_all(mesh, client, UPDATES // 2, "v0_", timeout=30)
    assert len(acked) == UPDATES // 2
    # step: the primary stops; the client's retransmissions start the backups' timers
    mesh.local.kill(0, signal.SIGSTOP)
    try:
        pending = []
        for start in range(0, UPDATES // 2, 50):
            pending += client.submit([client.put_request(f"v1_{i}", i)
                                      for i in range(start, start + 50)])

        def moved_on():
            try:  # the client sends what waited over 1 s to every replica
                client.wait(pending, timeout=0.2)
            except TimeoutError:
                pass
            return all(mesh.local.status(i, timeout=5)["view"] >= 1 for i in (2, 3))
        wait_until(moved_on, 30, "the honest backups to leave view 0")
    finally:
        mesh.local.kill(0, signal.SIGCONT)
    try:
        mesh.wait_replies(client, pending, timeout=40)
    except TimeoutError:
        pass
    acked.update({p.request.op["key"]: p.request.op["value"] for p in pending if p.done})
    elapsed = time.perf_counter() - t0
    # check
    check_twins(mesh, twin, [0, 2, 3], acked, elapsed)
    assert len(acked) == UPDATES, (f"only {len(acked)} of {UPDATES} updates were "
                                   f"acknowledged: the honest nodes are 2f+1 and should commit")
