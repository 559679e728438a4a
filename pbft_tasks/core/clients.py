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


_MISSING = object()


class ClientTable:
    def __init__(self, window: int = 1024):
        self.window = window
        self._floor: dict[str, int] = {}
        self._done: dict[str, dict[int, Any]] = {}
        self._changed: set[str] = set()  # clients whose record this step changed

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
        done = self._done.setdefault(client, {})
        floor = self._floor.get(client, -1)
        old = done.get(ts, _MISSING)
        done[ts] = result
        if len(done) > self.window:
            oldest = min(done)
            del done[oldest]
            self._floor[client] = max(floor, oldest)
        # Derived from the change itself, not from a copy of the record taken before it
        # (up to ``window`` results, copied and compared on every execution): the record
        # changed if a result came in or changed, or the floor moved.
        if old is _MISSING or old != result or self._floor.get(client, -1) != floor:
            self._changed.add(client)

    def changes(self) -> dict:
        """The ``client/`` records whose content changed since the last call (what a
        step must persist)."""
        out = {f"client/{c}": self.to_record(c) for c in sorted(self._changed)}
        self._changed = set()
        return out

    def to_record(self, client: str) -> dict:
        return {"floor": self._floor.get(client, -1),
                "done": [[ts, r] for ts, r in sorted(self._done.get(client, {}).items())]}

    def load_record(self, client: str, rec: dict) -> None:
        self._floor[client] = rec["floor"]
        self._done[client] = {ts: r for ts, r in rec["done"]}
