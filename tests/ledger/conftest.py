"""Fixtures for the ledger tests: a file-backed store, the fake, and a factory that
opens either, so behaviour tests run against both backends."""
from __future__ import annotations

import pytest

from ledger import LedgerStore, MemoryLedger


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "node0.sqlite"


@pytest.fixture
def store(db_path):
    with LedgerStore(db_path) as s:
        yield s


@pytest.fixture(params=["store", "memory"])
def ledger(request, tmp_path):
    """A fresh ledger of each kind; behaviour must not depend on which."""
    if request.param == "store":
        led = LedgerStore(tmp_path / "param.sqlite")
    else:
        led = MemoryLedger()
    yield led
    led.close()
