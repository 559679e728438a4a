"""Fixtures for the operations tests: the stack of stack.py, running for this folder
(package scope) on a RabbitMQ vhost of its own (``vhosts``, tests/conftest.py), and
stopped when the folder is done, so no later test shares its node queues or its CPU.
"""
from __future__ import annotations

import pytest

from tests.services import wait_not_quiet

from .stack import UPDATES, Stack, send_bad_messages


@pytest.fixture(scope="package")
def stack(tmp_path_factory, vhosts):
    """A 4-node mesh of real workers (metrics on a free port run), Flower, an API
    reader's counters, nova's hdpbf driver's counters and Prometheus scraping them with
    compose's jobs (and one for the driver)."""
    wait_not_quiet("starting the ops stack")
    broker = vhosts.new()
    s = Stack(tmp_path_factory.mktemp("ops"), broker)
    try:
        s.mesh.start()
        s.start_flower()
        s.start_reader()
        s.start_driver()
        s.start_prometheus()
        yield s
    finally:
        try:
            s.stop()
        finally:
            vhosts.delete(broker)


@pytest.fixture(scope="package")
def loaded_stack(stack):
    """The stack after UPDATES committed updates (one a console record that the API
    reader answers in step 1), one step-2 failure, and the bad messages."""
    from mesh.openstack.reader import ConsoleUnavailable
    from mesh.openstack.sealing import instance_key, seal_console
    mesh = stack.mesh
    client = mesh.client(timeout=5.0)
    batch = client.submit(client.put_request(f"ops-{i}", {"i": i}) for i in range(UPDATES - 1))
    mesh.wait_replies(client, batch, timeout=60)
    info = {"host": "10.0.0.5", "port": 5900, "token": "t0k3n", "internal_access_path": None,
            "access_url": "http://vnc/?token=t0k3n"}
    client.put(instance_key("vm1"), seal_console("vm1", "novnc", "cmp1", info, None), timeout=10)
    mesh.wait_converged(timeout=60, at_least=1)
    stack.reader.hosts["vm1"] = "cmp1"
    assert stack.reader.get_vnc_console("vm1") == (
        {k: info[k] for k in ("host", "port", "internal_access_path", "token", "access_url")}, 1)
    with pytest.raises(ConsoleUnavailable):
        stack.reader.get_vnc_console("vm-with-no-host")  # step 2, fails at once
    send_bad_messages(mesh)
    return stack
