"""A node's view of the membership in force, read from its own ledger (no restarts).

Owns: ``Membership``, which answers "which key does client NAME have at seq s" from the
configuration history the node's ledger holds (pbft_tasks/core/config.py, ledger/state.py),
and follows it as blocks execute: after a block that executed a config change it
reloads the history; after every block it knows the node's next seq.

Rules of this file:
- The answer for a seq inside the node's log window never depends on timing: a change
  executed at s is in force from the first checkpoint after s + log window, so every
  seq a correct replica can be asked to order already has its configuration in that
  replica's executed history (docs/PROTOCOL.md, "Membership").
- A request on its own is checked at the node's next seq; a request inside a
  PRE-PREPARE or a fetched block at that message's seq.  A client not in the
  configuration in force there is ``unknown_client`` (``batch_unknown_client`` in a
  batch): counted evidence, dropped, on every correct replica alike.
- The core asks ``admits`` before proposing a batch and after each checkpoint, and
  forgets requests of clients not admitted there: a primary never proposes a request
  its backups would refuse, and no request timer waits for one.
- Followers: a follower the configuration in force lists is answered like one of
  mesh.json's (fetches), and blocks are pushed from the first block after any
  configuration lists one (follower_push.py).
- A ledger bound to no genesis (an old one opened without ``bind_genesis``) falls back
  to the fixed keys of mesh.json.
- Reloads happen on the node's stepping thread (the ``on_execute`` hook); readers on
  other threads see either the old or the new history object, never a half-built one.
"""
from __future__ import annotations

from typing import Any, Optional

from nacl.signing import VerifyKey

from .signing import verify_key_from_hex


class Membership:
    def __init__(self, ledger: Any, fallback_clients: dict[str, VerifyKey]):
        self.ledger = ledger
        self.fallback = dict(fallback_clients)
        self.history = ledger.config_history()
        self.next_seq = ledger.height + 1
        self.reloads = 0
        self._keys: dict[str, VerifyKey] = {}

    def on_execute(self, block: dict, results: list) -> None:
        """The node's ``on_execute`` hook: follow the ledger."""
        self.next_seq = block["seq"] + 1
        if any(isinstance(r, dict) and "config" in r for r in results):
            self.history = self.ledger.config_history()
            self.reloads += 1

    @property
    def version(self) -> Optional[int]:
        """The version of the configuration in force at the next seq (None: no genesis)."""
        h = self.history
        return None if h is None else h.at(self.next_seq).version

    def is_follower(self, name: str) -> bool:
        """Whether the configuration in force at the next seq lists follower ``name``."""
        h = self.history
        return h is not None and name in h.at(self.next_seq).followers

    def any_follower(self) -> bool:
        """Whether any accepted configuration (in force or pending) lists a follower."""
        h = self.history
        return h is not None and any(c.followers for _, _, c in h.entries())

    def admits(self, client: str, seq: int) -> bool:
        """The core's hook (core/replica.py ``admits``): whether a request of ``client``
        (``name/session``), accepted under the key in force at the next seq, may be
        ordered at ``seq``: its client still has that same key there."""
        if self.history is None or self.history.single:
            return True  # one configuration for every seq: whoever was accepted stays so
        name = client.partition("/")[0]
        key = self.client_key(name, seq)
        return key is not None and key == self.client_key(name)

    def client_key(self, name: str, seq: Optional[int] = None) -> Optional[VerifyKey]:
        h = self.history
        if h is None:
            return self.fallback.get(name)
        hexkey = h.at(self.next_seq if seq is None else seq).client_key(name)
        if hexkey is None:
            return None
        key = self._keys.get(hexkey)
        if key is None:
            key = self._keys[hexkey] = verify_key_from_hex(hexkey)
        return key
