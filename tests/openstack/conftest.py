"""Fixtures for the OpenStack side in one process (kit.py): an embedded mesh and
oslo.messaging's ``fake:`` driver."""
from __future__ import annotations

import pytest

from .kit import Kit


@pytest.fixture
def kit(tmp_path):
    k = Kit(tmp_path)
    yield k
    k.close()
