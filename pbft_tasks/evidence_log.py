"""Log lines about peers' bad messages, rate-limited per (sender, reason).

Owns: ``EvidenceLog``, used by the node runtime (node.py) for evidence from the core and
for messages the adapter rejects.  Rules:
- Counting is not this module's: the runtime counts every bad message exactly
  (``rejected[reason]``, the metrics); only the *log line* is rate-limited.
- The first message of a (sender, reason) is logged at once; after it at most one line
  every ``every`` seconds, saying how many like it were not logged meanwhile.  A flood
  (issue 10's attacker, or a view change under load when every peer's old-view votes
  arrive as ``wrong_view``) used to write one WARNING line per message: a synchronous
  file write per task run, slowing the node exactly when it was behind.
- Bounded: at most ``max_keys`` (sender, reason) pairs are remembered; past that the
  table is cleared (a line may then come early; nothing is lost but log lines).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable


class EvidenceLog:
    def __init__(self, logger: logging.Logger, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        self.log = logger
        self.every = every
        self.clock = clock
        self.max_keys = max_keys
        self._last: dict[tuple, float] = {}      # key -> when its last line was written
        self._quiet: dict[tuple, int] = {}       # key -> messages not logged since then

    def warning(self, key: tuple, fmt: str, *args: Any) -> bool:
        """Log ``fmt % args`` unless a line for ``key`` was written less than ``every``
        seconds ago; True if it was written."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._last.clear()
            self._quiet.clear()
        skipped = self._quiet.pop(key, 0)
        self._last[key] = now
        if skipped:
            fmt += " (and %d more like it not logged in the last %gs)"
            args = (*args, skipped, round(now - last, 1))
        self.log.warning(fmt, *args)
        return True
