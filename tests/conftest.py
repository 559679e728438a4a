"""The fixtures every folder of the suite shares: RabbitMQ and Redis, private vhosts,
meshes of real workers, an embedded mesh, and the check that no worker outlives the
session.  Folder conftests add only what is their own (a RabbitMQ cluster, an ops stack,
an ``hdpbf up`` launch) on top of these; the helpers behind them are modules beside
this file (services.py, processes.py, meshkit.py), imported as ``tests.<module>``.

Rules:
- A broker test FAILS, never skips, when RabbitMQ or Redis is missing, saying how to
  start them.
- ``broker_url`` is the session's own vhost.  Meshes that live for one test
  (``make_mesh``) share it: each purges the node queues before its workers start and
  stops them at teardown, so two never run at once.  A rig that outlives one test
  (module, package or session scope) takes a vhost of its own from ``vhosts``: node
  queues are always ``node.<id>``, and a purge by the next test's mesh would reach into
  it.
- No worker started from this session's temp dirs may outlive the session: any that
  does is killed by pid and the session fails (``no_stray_workers``).
"""
from __future__ import annotations

import time
from typing import Any

import pytest

from tests import processes, services


@pytest.fixture(scope="session")
def vhosts():
    """``vhosts.new()`` -> the URL of a fresh RabbitMQ vhost; all are deleted when the
    session ends (``vhosts.delete(url)`` frees one sooner)."""
    made = services.Vhosts()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="session")
def broker_url(vhosts):
    """The AMQP URL of the session's own vhost, for meshes that live for one test."""
    return vhosts.new()


@pytest.fixture(scope="session")
def backend_url(vhosts):
    """Celery's result backend (Redis), checked to answer."""
    return vhosts.backend


@pytest.fixture
def private_vhost(vhosts):
    """A vhost of this test's own, deleted after it (e.g. for a benchmark that purges
    node queues while the session's rigs run)."""
    url = vhosts.new()
    yield url
    vhosts.delete(url)


@pytest.fixture(scope="session", autouse=True)
def no_stray_workers(tmp_path_factory):
    """Fail the session if a worker started by these tests outlives them."""
    before = processes.worker_pids()
    base = str(tmp_path_factory.getbasetemp().resolve())
    yield
    deadline = time.monotonic() + 10
    while True:
        ours = processes.workers_under(base, processes.worker_pids() - before)
        if not ours or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if ours:
        processes.kill_all(ours)
        pytest.fail(f"worker processes survived the tests (now killed): "
                    f"{sorted(ours.items())}", pytrace=False)


@pytest.fixture
def make_mesh(tmp_path, broker_url):
    """``make_mesh(n=4, start=True, **mesh_settings)`` -> a Mesh of real workers on the
    session's vhost, started unless ``start=False``; every one stops at teardown."""
    # imported here: a nova case run by tests/nova_driver/subproc.py loads this file
    # before nova monkey-patches its process, and needs none of the mesh's modules
    from tests.meshkit import Mesh
    meshes: list[Mesh] = []

    def make(n: int = 4, start: bool = True, **settings: Any) -> "Mesh":
        m = Mesh(tmp_path / f"mesh{len(meshes)}", n, broker_url, **settings)
        meshes.append(m)
        return m.start() if start else m

    yield make
    errors = []
    for m in meshes:
        try:
            m.stop()
        except Exception as exc:  # stop the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def embedded_mesh(tmp_path):
    """A 4-node embedded mesh (one process, in-memory transport, real ledgers and
    signatures) laid out in ``tmp_path``."""
    from mesh.embedded import EmbeddedMesh
    from pbft_tasks.topology import init_mesh
    cfg = init_mesh(tmp_path / "embedded", nodes=4)
    with EmbeddedMesh(str(cfg.path)) as m:
        yield m
