"""Log lines about peers' bad messages, rate-limited per (sender, reason).

Owns: ``EvidenceLog``, used by the node runtime (node.py) for evidence from the core and
for messages the adapter rejects.  Rules:
- Counting is not this module's: the runtime counts every bad message exactly
  (``rejected[reason]``, the metrics); only the *log line* is rate-limited.
- Per (sender, reason), the first ``burst`` messages of every ``every`` seconds are
  logged, the rest only counted; the next line after a quiet spell says how many were
  not logged.  Occasional bad messages are all logged; a flood (a faulty
  peer's, or a view change under load when every peer's old-view votes arrive as
  ``wrong_view``) would otherwise write one WARNING line per message: a synchronous file write
  per task run, slowing the node exactly when it was behind.
- Bounded: at most ``max_keys`` (sender, reason) pairs are remembered; past that the
  table is cleared (a line may then come early; nothing is lost but log lines).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable


class EvidenceLog:
    def __init__(self, logger: logging.Logger, every: float = 10.0, burst: int = 20,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        self.log = logger
        self.every = every
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        # key -> [start of its current period, lines logged in it, messages not logged]
        self._periods: dict[tuple, list] = {}

    def warning(self, key: tuple, fmt: str, *args: Any) -> bool:
        """Log ``fmt % args`` unless ``burst`` lines for ``key`` were already written in
        its current period of ``every`` seconds; True if it was written."""
        now = self.clock()
        period = self._periods.get(key)
        if period is None or now - period[0] >= self.every:
            if period is None and len(self._periods) >= self.max_keys:
                self._periods.clear()
            skipped = period[2] if period is not None else 0
            if skipped:
                fmt += " (and %d more like it not logged before this, in %gs)"
                args = (*args, skipped, round(now - period[0], 1))
            period = self._periods[key] = [now, 0, 0]
        if period[1] >= self.burst:
            period[2] += 1
            return False
        period[1] += 1
        self.log.warning(fmt, *args)
        return True
