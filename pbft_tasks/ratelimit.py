"""Token buckets: how often one requester may make this process do work for it.

Owns: ``TokenBuckets``, used by the node runtime for fetches (node.py, per requester)
and by a follower for status answers (follower_node.py, one key).  Rules: a key starts
with ``burst`` tokens, gains ``rate`` a second up to ``burst``, and each allowed call
takes one; a refused call takes none.  The clock is the caller's (tests fake it).
"""
from __future__ import annotations

import time
from typing import Callable, Hashable


class TokenBuckets:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, key: Hashable = None) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True
