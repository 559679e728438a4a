"""The client table: which (client, timestamp) requests have executed, and their results.

Castro and Liskov (sec. 4.1) keep the last reply per client so that a retransmitted
request is answered again, not executed twice.  Our clients pipeline many requests, so a
single "last timestamp" would refuse a request that overtook another.  Instead each
client has a window of the ``window`` most recent executed timestamps with their
results, and a floor: everything at or below the floor counts as already executed.

The table is part of the replicated state: it changes only when a block executes, the
same way on every replica, so duplicate-skipping is deterministic.
"""
from __future__ import annotations

from typing import Any, Iterable


class ClientTable:
    def __init__(self, window: int = 1024):
        self.window = window
        self._floor: dict[str, int] = {}
        self._done: dict[str, dict[int, Any]] = {}
        self._before: dict[str, tuple] = {}  # client -> its record's content before this step

    def executed(self, client: str, ts: int) -> bool:
        return ts <= self._floor.get(client, -1) or ts in self._done.get(client, ())

    def skip_list(self, requests: Iterable[Any]) -> list[int]:
        """Indexes of the requests of a batch that execute as no-ops: already executed, or
        a repeat of an earlier one in the same batch (by client and timestamp)."""
        seen: set = set()
        skip = []
        for i, r in enumerate(requests):
            key = (r.client, r.timestamp)
            if self.executed(*key) or key in seen:
                skip.append(i)
            else:
                seen.add(key)
        return skip

    def result(self, client: str, ts: int) -> Any:
        """The stored result, or None if it fell out of the window (or never ran)."""
        return self._done.get(client, {}).get(ts)

    def record(self, client: str, ts: int, result: Any) -> None:
        if client not in self._before:
            self._before[client] = self._state(client)
        done = self._done.setdefault(client, {})
        done[ts] = result
        if len(done) > self.window:
            oldest = min(done)
            del done[oldest]
            self._floor[client] = max(self._floor.get(client, -1), oldest)

    def _state(self, client: str) -> tuple:
        return self._floor.get(client, -1), dict(self._done.get(client, {}))

    def changes(self) -> dict:
        """The ``client/`` records whose content changed since the last call (what a
        step must persist, derived by comparing with the state before it)."""
        out = {f"client/{c}": self.to_record(c) for c, before in self._before.items()
               if self._state(c) != before}
        self._before = {}
        return out

    def to_record(self, client: str) -> dict:
        return {"floor": self._floor.get(client, -1),
                "done": [[ts, r] for ts, r in sorted(self._done.get(client, {}).items())]}

    def load_record(self, client: str, rec: dict) -> None:
        self._floor[client] = rec["floor"]
        self._done[client] = {ts: r for ts, r in rec["done"]}
