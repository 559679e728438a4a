"""Whom compute seals console tokens for, following the ledger (no restart of compute).

Owns: ``ReaderKeys``, which reads the configuration history through consensus (a get of
``_hdpbf/config``, answered by f+1 matching replicas, docs/PROTOCOL.md sec. 12) and sets
a ``Sealer``'s recipients to the API readers of the newest accepted configuration; and
``follow_readers``, a daemon thread doing that every ``period`` seconds.

Rules:
- The newest *accepted* configuration, not the one in force: a reader being added is
  sealed for as soon as its change commits (its API host can open tokens sealed from
  then on), and a removed reader's key is no longer sealed for from its change's commit.
- A mesh whose ledger holds no change keeps the readers of mesh.json; a read that fails
  (a timeout) keeps the current set and is tried again next period.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from nacl.public import PublicKey

from pbft_tasks.core.config import ConfigHistory
from pbft_tasks.core.messages import CONFIG_KEY

from .sealing import Sealer

log = logging.getLogger("hdpbf.readers")


class ReaderKeys:
    def __init__(self, sealer: Sealer, client: Any, timeout: float = 10.0):
        self.sealer, self.client, self.timeout = sealer, client, timeout
        self.version: Optional[int] = None
        self.refreshes = 0

    def refresh(self) -> bool:
        """Read the history once; True if the sealer's readers were set from it."""
        c = self.client
        done = c.wait(c.submit([c.get_request(CONFIG_KEY)]), timeout=self.timeout)
        c.forget(done)
        result = done[0].result
        self.refreshes += 1
        if result.get("deleted"):
            return False  # no change ever: mesh.json's readers stand
        latest = ConfigHistory.from_record(result["value"]).latest
        if self.version == latest.version:
            return False
        self.version = latest.version
        self.sealer.set_recipients({name: PublicKey(bytes.fromhex(key)) for name, key in latest.readers})
        log.info("hdpbf: sealing for readers %s (configuration version %s)",
                 ", ".join(n for n, _ in latest.readers) or "none", latest.version)
        return True


def follow_readers(keys: ReaderKeys, period: float = 30.0) -> threading.Event:
    """Refresh ``keys`` every ``period`` seconds in a daemon thread; set the returned
    event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            try:
                keys.refresh()
            except Exception as exc:  # the mesh is unreachable now: keep the current set
                log.warning("hdpbf: could not read the readers from the ledger: %s", exc)

    threading.Thread(target=loop, name="hdpbf-reader-keys", daemon=True).start()
    return stop
