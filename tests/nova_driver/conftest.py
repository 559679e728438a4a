"""Fixtures for the ``hdpbf`` driver on oslo.messaging's in-process ``fake`` driver with
an embedded mesh (driverkit.py); nova itself is imported only in subprocesses."""
from __future__ import annotations

import pytest

from .driverkit import DriverKit


@pytest.fixture
def kit(tmp_path):
    k = DriverKit(tmp_path)
    yield k
    k.close()
