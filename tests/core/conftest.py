"""Shared fixtures of the core tests."""
from __future__ import annotations

import pytest

from pbft_tasks.core.collector import VOTE_ROUTINGS


@pytest.fixture(params=VOTE_ROUTINGS)
def votes(request) -> str:
    """Vote routing (core/collector.py): a safety test that takes this runs in both modes."""
    return request.param
