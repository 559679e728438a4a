"""Fixtures for the ledger tests: a file-backed store, the fake, and a factory that
opens either, so behaviour tests run against both backends."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# When the whole suite runs, a test package elsewhere (tests/core/__init__.py) puts
# tests/ on sys.path, where this folder would be found as a namespace package "ledger"
# before setuptools' editable finder is asked.  A regular package anywhere on sys.path
# wins over a namespace portion, so putting the project root there resolves "ledger"
# to the real package.  (``pythonpath = ["."]`` in pyproject's pytest options would do
# the same for every folder.)
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from ledger import LedgerStore, MemoryLedger  # noqa: E402


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
