"""Safety and liveness with one Byzantine worker of four, on real RabbitMQ.

Each faulty node runs the honest core with its output perverted
(pbft_tasks/core/byzantine.py), switched on only by its worker's environment
(``HDPBF_BYZANTINE``, set through ``mesh.local.extra_env`` before the worker starts).

Set up: a 4-worker mesh, one of them faulty.  Step: ~100 updates through the client
(f+1 matching replies each), then reads through consensus.  Check: every update
committed, all four ledgers converge to one head and audit (2f+1 signed commits per
block; the faulty node's own ledger is honest, its core is), every value reads back
from every ledger and through consensus, and what the behaviour should leave behind:
a view change, rejected signatures counted on the honest nodes, a silent node that sent
nothing, a client that was lied to and not fooled, replays that executed nothing twice.

One mesh serves the behaviours of a faulty *backup* (node 3), restarted with each in
turn; the equivocating primary and the refusal of a bad name get meshes of their own.
"""
from __future__ import annotations

import time

import pytest

from mesh.bench.consensus import drive

from tests.meshkit import Mesh, assert_values, audit_node

pytestmark = pytest.mark.broker

UPDATES = 100
BACKUP = 3


def faulty_env(spec: str) -> dict[str, str]:
    return {"HDPBF_BYZANTINE": spec}


def check_ledgers(mesh: Mesh, expected: dict) -> None:
    """All four ledgers converge, audit, hold every value, and executed each request
    once and each update exactly once (replays and retransmissions notwithstanding)."""
    height, _ = mesh.wait_converged(timeout=60)
    for i in range(mesh.n):
        assert audit_node(mesh, i) == height
    assert_values(mesh, expected)
    with mesh.reader(0) as r:
        ran = [req for b in r.iter_blocks() for k, req in enumerate(b["requests"]) if k not in b["skip"]]
    named = [(req["client"], req["timestamp"]) for req in ran]
    assert len(named) == len(set(named)), "a request executed twice"
    assert sorted(req["op"]["key"] for req in ran if req["op"]["op"] == "put") == sorted(expected)


def read_back(mesh: Mesh, client, expected: dict, sample: int = 5) -> None:
    """A few values through consensus (a get answered by f+1 matching replies)."""
    for key in list(expected)[:: max(1, len(expected) // sample)]:
        assert client.read(key, timeout=30) == expected[key], f"read of {key} through consensus"


def commit(mesh: Mesh, client, prefix: str, expected: dict) -> float:
    t0 = time.perf_counter()
    done = drive(client, UPDATES, window=UPDATES, chunk=50, key_prefix=prefix, every=False, timeout=60)
    elapsed = time.perf_counter() - t0
    assert len(done) == UPDATES and all(p.result is not None for p in done)
    expected.update({f"{prefix}{i}": i for i in range(UPDATES)})
    return elapsed


# -- a faulty primary ------------------------------------------------------------------------

def test_equivocating_primary_is_replaced_and_commits_resume(make_mesh):
    # set up: node 0, primary of view 0, sends conflicting pre-prepares to its backups
    mesh = make_mesh(4, start=False)
    mesh.local.extra_env[0] = faulty_env("equivocate")
    mesh.start()
    assert mesh.local.status(0)["byzantine"] == ["equivocate"]
    assert "node 0 is running BYZANTINE behaviours: equivocate" in mesh.log_text(0)
    client = mesh.client(timeout=1.0)
    expected: dict = {}
    # step
    elapsed = commit(mesh, client, "eq", expected)
    # check: the honest nodes moved to a view whose primary is honest, and commit there
    statuses = mesh.local.statuses(timeout=10)
    assert all(statuses[i]["view"] >= 1 for i in (1, 2, 3)), statuses
    assert statuses[0]["byzantine_counts"].get("equivocated", 0) > 0
    print(f"\nequivocating primary: {UPDATES} updates committed in {elapsed:.2f}s, "
          f"views now {[statuses[i]['view'] for i in range(4)]}")
    check_ledgers(mesh, expected)
    read_back(mesh, client, expected)
    with mesh.reader(1) as r:
        views = {b["view"] for b in r.iter_blocks()}
    assert 0 not in views, "nothing may commit in the view of the equivocating primary"


# -- faulty backups, one behaviour at a time on one mesh ------------------------------------------

@pytest.fixture(scope="module")
def backup_mesh(tmp_path_factory, vhosts):
    """One mesh for the module (on a vhost of its own); each test restarts node 3 with
    its behaviour."""
    broker = vhosts.new()
    mesh = Mesh(tmp_path_factory.mktemp("byzantine") / "mesh", 4, broker)
    try:
        mesh.start()
        yield {"mesh": mesh, "client": mesh.client(timeout=1.0), "expected": {}}
    finally:
        mesh.stop()
        vhosts.delete(broker)


def restart_faulty(mesh: Mesh, spec: str) -> dict:
    """Restart node 3 as ``spec``; return the honest nodes' status before it works."""
    mesh.local.kill(BACKUP)
    mesh.local.extra_env[BACKUP] = faulty_env(spec)
    mesh.local.restart(BACKUP)
    mesh.local.wait_ready([BACKUP], timeout=60)
    status = mesh.local.status(BACKUP)
    assert status["byzantine"] == sorted(spec.split(",")), status
    return {i: mesh.local.status(i) for i in range(3)}


def settle(mesh: Mesh) -> dict[int, dict]:
    """Let retransmissions finish, then every node's status."""
    mesh.wait_converged(timeout=60)
    return mesh.local.statuses(timeout=10)


@pytest.mark.parametrize("spec", ["silent", "forge", "nosig", "lie", "replay", "wrong_digest,equivocate"])
def test_one_faulty_backup_cannot_stop_or_split_the_mesh(backup_mesh, spec):
    mesh, client, expected = backup_mesh["mesh"], backup_mesh["client"], backup_mesh["expected"]
    # set up
    before = restart_faulty(mesh, spec)
    # step
    elapsed = commit(mesh, client, f"{spec.replace(',', '_')}_", expected)
    after = settle(mesh)
    print(f"\n{spec} on node {BACKUP}: {UPDATES} updates committed in {elapsed:.2f}s; "
          f"node {BACKUP} did {after[BACKUP]['byzantine_counts']}")
    # check: safety and liveness
    check_ledgers(mesh, expected)
    read_back(mesh, client, expected)
    assert {after[i]["view"] for i in range(4)} == {before[0]["view"]}, "no view change was needed"
    # check: what this behaviour leaves behind
    counts = after[BACKUP]["byzantine_counts"]
    if spec == "silent":
        assert after[BACKUP]["sent"] == 0 and counts["withheld"] > 0
    elif spec in ("forge", "nosig"):
        reason = "bad_signature" if spec == "forge" else "missing_signature"
        for i in range(3):
            grew = after[i]["rejected"].get(reason, 0) - before[i]["rejected"].get(reason, 0)
            assert grew > 0, f"node {i} should have rejected node {BACKUP}'s {reason}s: {after[i]['rejected']}"
        assert counts[spec] > 0
    elif spec == "lie":
        key = f"lie_{UPDATES - 1}"
        [p] = client.wait(client.submit([client.get_request(key)]), timeout=30, every=True)
        assert p.result["value"] == UPDATES - 1
        assert p.votes[BACKUP]["value"] != UPDATES - 1, "node 3 should have lied"
        assert all(p.votes[i] == p.result for i in range(3))
        assert counts["lies"] > 0
    elif spec == "replay":
        assert counts["replayed"] > 0
    else:
        assert counts["wrong_digest"] > 0 and counts["equivocated"] > 0
    for i in range(3):
        assert after[i]["byzantine"] == []


# -- configuration -------------------------------------------------------------------------------

def test_a_bad_behaviour_name_refuses_to_start(make_mesh):
    mesh = make_mesh(4, start=False)
    mesh.local.extra_env[1] = faulty_env("equivocate,evil")
    mesh.local.start([1])
    proc = mesh.local.procs[1]
    code = proc.wait(timeout=60)
    log = mesh.log_text(1)
    assert code == 78, log[-2000:]
    assert "refusing to start" in log and "HDPBF_BYZANTINE='equivocate,evil'" in log
    assert "unknown Byzantine behaviour 'evil'" in log and "valid behaviours:" in log
