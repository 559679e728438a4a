"""Chain integrity: the checks a block must pass to extend a chain, and the chain audit.

Owns: ``check_block`` (used by every ledger backend before it appends a block) and
``audit_chain`` (an offline walk over stored blocks that names the first bad one).

Rules of this file:
- A block extends ``(height, head)`` only if ``seq == height + 1``, ``prev == head``,
  ``hash == chain.block_hash(block)`` and ``digest`` is the batch digest of the stored
  requests (``pbft_tasks.core.messages.batch_digest``: SHA-256 of the canonical list of
  request wire dicts).  The hash covers the header only; the digest check is what binds
  the stored requests to the hash, so an edited request is caught too.
- The commit certificate is not hashed (replicas hold different valid sets of 2f+1
  commits).  Its signatures are checked by the caller's ``verify_certificate`` hook,
  because keys and PyNaCl live in the adapter, not here.
- Every failure raises ``LedgerError`` whose message starts with ``"block <seq>: "``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from pbft_tasks.core import chain
from pbft_tasks.core.messages import sha256_hex

from .format import LedgerError

HEADER_FIELDS = ("seq", "view", "digest", "prev", "skip", "hash", "requests")


def _label(block: Any) -> str:
    seq = block.get("seq", "?") if isinstance(block, dict) else "?"
    return f"block {seq}"


def check_block_contents(block: Any) -> None:
    """Self-consistency of one block: fields present, hash and batch digest right."""
    if not isinstance(block, dict):
        raise LedgerError(f"block ?: not a dict but {type(block).__name__}")
    missing = [f for f in HEADER_FIELDS if f not in block]
    if missing:
        raise LedgerError(f"{_label(block)}: missing fields {missing}")
    if type(block["seq"]) is not int or type(block["view"]) is not int:
        raise LedgerError(f"{_label(block)}: seq and view must be integers")
    if not isinstance(block["requests"], list) or not isinstance(block["skip"], list):
        raise LedgerError(f"{_label(block)}: requests and skip must be lists")
    try:
        expected = chain.block_hash(block)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"{_label(block)}: header cannot be hashed: {exc}") from None
    if block["hash"] != expected:
        raise LedgerError(f"{_label(block)}: hash {str(block['hash'])[:16]}... is wrong, "
                          f"header hashes to {expected[:16]}...")
    try:
        digest = sha256_hex(block["requests"])
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"{_label(block)}: requests cannot be encoded: {exc}") from None
    if block["digest"] != digest:
        raise LedgerError(f"{_label(block)}: digest does not match its requests")


def check_link(block: dict, height: int, head: str) -> None:
    """``block`` is the next one after ``(height, head)``."""
    if block.get("seq") != height + 1:
        raise LedgerError(f"{_label(block)}: expected seq {height + 1} after height {height}")
    if block.get("prev") != head:
        raise LedgerError(f"{_label(block)}: prev {str(block.get('prev'))[:16]}... does not "
                          f"link to head {head[:16]}...")


def check_block(block: Any, height: int, head: str) -> None:
    """Everything a ledger checks before appending ``block`` to ``(height, head)``."""
    check_block_contents(block)
    check_link(block, height, head)


def audit_chain(blocks: Iterable[dict],
                verify_certificate: Optional[Callable[[dict], Any]] = None,
                *, height: int = 0, head: str = chain.GENESIS) -> None:
    """Walk ``blocks`` in order from ``(height, head)`` (genesis by default) and raise
    ``LedgerError("block <seq>: ...")`` for the first block whose seq, prev link, hash
    or batch digest is wrong.

    ``verify_certificate(block)``, if given, is called for each block after its chain
    checks and may raise (any exception is re-raised as ``LedgerError`` naming the
    block); that is where the adapter checks 2f+1 commit signatures.  To audit a slice
    of a chain (``store.iter_blocks(start)``), pass the height and head it starts after.
    """
    for block in blocks:
        check_block(block, height, head)
        if verify_certificate is not None:
            try:
                verify_certificate(block)
            except Exception as exc:
                if isinstance(exc, LedgerError) and str(exc).startswith(_label(block) + ":"):
                    raise
                raise LedgerError(f"{_label(block)}: certificate rejected: {exc}") from exc
        height, head = block["seq"], block["hash"]
