"""Per-node ledger: one SQLite file per node through sqlitedict, JSON codec only.

Holds the blocks with their commit certificates in a hash chain, the replicated
key/value state with versions and expiry, and the replica's persisted protocol records,
all in one table so that one commit is one atomic transaction.  Knows nothing about
Celery or RabbitMQ.

- ``LedgerStore`` (store.py): the node worker's single writer.
- ``LedgerReader`` (reader.py): fast read-only reads for other processes on the node.
- ``MemoryLedger`` (memory.py): in-memory fake with LedgerStore's interface.
- ``apply_block`` (state.py): the pure state transition.
- ``audit_chain`` (audit.py): hash-chain audit naming the first bad block.
"""
from .audit import audit_chain, check_block
from .format import LedgerError, LedgerFormatError, LedgerNotFound
from .memory import MemoryLedger, build_block
from .reader import LedgerReader
from .state import apply_block
from .store import LedgerStore

__all__ = [
    "LedgerError", "LedgerFormatError", "LedgerNotFound", "LedgerStore", "LedgerReader",
    "MemoryLedger", "apply_block", "audit_chain", "check_block", "build_block",
]
