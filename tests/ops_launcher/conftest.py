"""Fixtures for the local launcher (launchkit.py): ``hdpbf up`` against real RabbitMQ and
Redis, marked ``broker`` (without them the tests FAIL, never skip).  The shared launch
lives for one module, on a RabbitMQ vhost of its own (``vhosts``, tests/conftest.py).
While /tmp/hdpbf-quiet exists (someone is benchmarking) it waits before starting.
"""
from __future__ import annotations

import pytest

from tests.services import wait_not_quiet

from .launchkit import shared_launch


@pytest.fixture(scope="module")
def launched(tmp_path_factory, vhosts):
    wait_not_quiet()
    with shared_launch(tmp_path_factory, vhosts) as launch:
        yield launch
