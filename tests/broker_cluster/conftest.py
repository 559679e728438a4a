"""A real 3-node RabbitMQ cluster for the broker-failover tests.

One cluster for this whole folder (``cluster``, package-scoped): three nodes take ~15 s
to start, and the tests leave it whole (three members) when they finish, each killing and restarting
nodes itself.  The nodes have names of this session's own (``t<pid><rand>c1@localhost``)
and free ports, so two test sessions never meet; the finalizer kills them by their pid
files and removes their data.  The machine's own RabbitMQ (5672) is never touched.
These tests need root or the rabbitmq user (as CI runs) and never skip.
"""
from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from mesh.ops.broker_cluster import BrokerCluster
from tests.services import wait_not_quiet


@pytest.fixture(scope="package")
def cluster():
    wait_not_quiet("starting a RabbitMQ cluster")
    d = tempfile.mkdtemp(prefix="hdpbf-cluster-")
    c = BrokerCluster.plan_free(d, 3, prefix=f"t{os.getpid()}{uuid.uuid4().hex[:4]}c")
    try:
        c.up()
        yield c
    finally:
        c.down()
        try:
            os.rmdir(d)
        except OSError:
            pass


@pytest.fixture
def whole(cluster):
    """The module's cluster with all three nodes running and joined (restarting any a
    failed test left down), so every test starts from a whole cluster."""
    for node in cluster.nodes:
        if cluster.pid(node) is None:
            cluster.restart_node(node.name)
    cluster.wait_members(len(cluster.nodes))
    return cluster
