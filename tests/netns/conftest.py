"""Fixtures for the namespace tests: real RabbitMQ and Redis (the session's vhost) and a
topology of network namespaces (mesh/ops/netns.py) built per test and always torn down.

These tests need root (CAP_NET_ADMIN), ``ip`` and ``socat``; CI runs as root and
.ci/run installs socat.  Without them they FAIL saying what is missing; never skip.
"""
from __future__ import annotations

import pytest

from mesh.ops.netns import NetnsError, require


@pytest.fixture
def netns_ok():
    try:
        require()
    except NetnsError as exc:
        pytest.fail(f"the namespace tests cannot run here: {exc}", pytrace=False)
