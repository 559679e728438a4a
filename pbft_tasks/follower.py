"""A follower: a verified, non-validating copy of the ledger (the paper's
non-validating peers; Fabric 0.6; CometBFT's blocksync checks).

Owns: deciding whether a block offered by anyone may be appended to this follower's
ledger, appending it, and counting what it refused and why.  No broker, no clock of its
own (callers pass ``now``): the wire side is pbft_tasks/follower_node.py, and the unit
tests drive this class with an in-memory ledger (tests/test_follower.py).

Rules of this file:
- Trust no single validator.  A block is installed only when
    1. it is well formed and self-consistent (``ledger.audit.check_block_contents``:
       fields, header hash, batch digest of the stored requests);
    2. its certificate holds commits for exactly its (view, seq, digest) with valid
       signatures from at least 2f+1 DISTINCT validators of mesh.json;
    3. it extends this ledger: ``seq == height + 1`` and ``prev == head``;
    4. its skip list is the one this follower computes from its own client table (the
       commits sign the batch digest, not the header, so a validator could otherwise
       hand out a self-consistent header with a made-up skip list).
  Checks 1-2 need nothing but the block; 3-4 need the blocks before it.  A block that
  passes 1-2 but lies ahead of the head waits in a bounded buffer (``MAX_AHEAD``) until
  the gap is filled, and nothing past a gap is ever installed.
- A refused block is evidence: counted in ``rejected[reason]`` and dropped, never
  raised.  Reasons: ``malformed``, ``bad_block`` (hash or digest), ``too_few_commits``,
  ``commit_mismatch`` (a commit for another view/seq/digest), ``duplicate_signer``,
  ``unknown_signer``, ``bad_signature`` (or ``missing_signature`` /
  ``malformed_signature``), ``bad_prev``, ``bad_skip``, ``too_far_ahead``,
  ``conflicting_block`` (a block for an installed seq whose header hash differs from
  the installed block's; one with the same hash is a ``duplicate``, counted apart).  When a
  certificate fails for several reasons, the first in that order is counted.  Extra
  entries beside 2f+1 good ones are tolerated only if they are good too: an honest
  validator never sends a bad one, so a certificate with any bad entry is refused.
- Signatures of many blocks are checked in one batch (``BatchVerifier``: inline for a
  few, threads for a catch-up, Ray when given a cluster address).
- Restart-safe: the ledger file is the only state.  The client table (which requests
  already executed, for check 4) is stored as the same ``client/<name>`` protocol
  records a replica writes, in the same transaction as the blocks.  A follower never
  opens a validator's file.
- Client request signatures are not checked again: 2f+1 validators committed this
  digest, so at least f+1 honest ones checked every request (``hdpbf verify`` still
  checks them when auditing the file).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ledger.audit import check_block_contents
from ledger.format import LedgerError
from ledger.state import refused_writes
from pbft_tasks.core.clients import ClientTable
from pbft_tasks.core.messages import Commit, MalformedMessage, Request, from_wire
from pbft_tasks.core.quorum import quorum

from .batch_verify import BatchVerifier
from .evidence_log import EvidenceLog

log = logging.getLogger("hdpbf.follower")

MAX_AHEAD = 4096          # blocks buffered beyond a gap; anything further is refused
CLIENT_PREFIX = "client/"
CERT_REASONS = ("commit_mismatch", "duplicate_signer", "unknown_signer", "missing_signature",
                "malformed_signature", "bad_signature", "too_few_commits")
REASONS = ("malformed", "bad_block", *CERT_REASONS, "bad_prev", "bad_skip", "too_far_ahead")


@dataclass
class Offer:
    """What one call to ``Follower.offer`` did."""
    installed: int = 0
    duplicates: int = 0
    buffered: int = 0
    rejected: Counter = field(default_factory=Counter)


class Follower:
    """Checks and installs certified blocks into ``ledger`` (a ``LedgerBase``)."""

    def __init__(self, n: int, ledger: Any, verifier: BatchVerifier,
                 client_window: int = 1024) -> None:
        self.n = n
        self.quorum = quorum(n)
        self.ledger = ledger
        self.verifier = verifier
        self.clients = ClientTable(client_window)
        for name, rec in ledger.protocol_records().items():
            if name.startswith(CLIENT_PREFIX):
                self.clients.load_record(name[len(CLIENT_PREFIX):], rec)
        self.ahead: dict[int, dict] = {}    # seq -> certified block waiting for its gap
        self.rejected: Counter[str] = Counter()
        self.evidence_log = EvidenceLog(log)  # every refusal counted, lines rate-limited
        self.installed = 0
        self.duplicates = 0
        self.seen_top = ledger.height       # highest certified seq seen from anyone
        self.on_install: list = []          # hooks: fn(block) after it is durable

    @property
    def height(self) -> int:
        return self.ledger.height

    @property
    def head(self) -> str:
        return self.ledger.head

    @property
    def gap(self) -> Optional[tuple[int, int]]:
        """(first missing seq, highest certified seq seen) when behind, else None."""
        if self.seen_top > self.height:
            return self.height + 1, self.seen_top
        return None

    # -- the one entry point ------------------------------------------------------------
    def offer(self, blocks: Iterable[Any], source: Any = None) -> Offer:
        """Check ``blocks`` (untrusted, from ``source``, for the log) and install what
        can be installed now, in order.  Never raises for a bad block."""
        out = Offer()
        fresh: list[dict] = []
        for block in blocks:
            reason = self._precheck(block)
            if reason == "duplicate":
                out.duplicates += 1
                continue
            if reason is not None:
                self._refuse(out, reason, block, source)
                continue
            fresh.append(block)
        for block, reason in zip(fresh, self._check_certificates(fresh)):
            if reason is not None:
                self._refuse(out, reason, block, source)
                continue
            self.seen_top = max(self.seen_top, block["seq"])
            if block["seq"] not in self.ahead:
                self.ahead[block["seq"]] = block
                out.buffered += 1
        self._install_ready(out, source)
        self.duplicates += out.duplicates
        return out

    # -- checks ---------------------------------------------------------------------------
    def _precheck(self, block: Any) -> Optional[str]:
        if not isinstance(block, dict):
            return "malformed"
        seq = block.get("seq")
        if type(seq) is int and 0 < seq <= self.height:
            return self._against_installed(block, seq)
        if type(seq) is int and seq in self.ahead:
            return "duplicate"
        try:
            check_block_contents(block)
        except LedgerError:
            return "bad_block"
        if not isinstance(block.get("certificate"), list):
            return "malformed"
        if seq > self.height + MAX_AHEAD:
            return "too_far_ahead"
        return None

    def _against_installed(self, block: dict, seq: int) -> str:
        """A block for a seq already installed: ``duplicate`` if it is the installed one
        (same header hash, and contents that hash to it), ``conflicting_block`` if not.
        Two certified blocks for one seq prove that validators signed both (more than f
        of them), and an uncertified one is a forgery: either is evidence."""
        installed = self.ledger.block(seq)
        if installed is not None and block.get("hash") == installed.get("hash"):
            return "duplicate"
        if installed is None:   # below the head but not stored: our bug, not the peer's
            raise LedgerError(f"follower ledger has height {self.height} but no block {seq}")
        return "conflicting_block"

    def _check_certificates(self, blocks: list[dict]) -> list[Optional[str]]:
        """The reason each block's certificate fails, or None; every signature of every
        block in one ``BatchVerifier`` call."""
        items: list[Commit] = []
        owners: list[tuple[int, int]] = []      # (block index, sender) per item
        reasons: list[Optional[str]] = [None] * len(blocks)
        for b, block in enumerate(blocks):
            seen: set[int] = set()
            problems: set[str] = set()
            for w in block["certificate"]:
                try:
                    c = from_wire(w)
                except MalformedMessage:
                    problems.add("commit_mismatch")
                    continue
                if (not isinstance(c, Commit) or c.view != block["view"] or c.seq != block["seq"]
                        or c.digest != block["digest"]):
                    problems.add("commit_mismatch")
                elif type(c.sender) is not int or not 0 <= c.sender < self.n:
                    problems.add("unknown_signer")
                elif c.sender in seen:
                    problems.add("duplicate_signer")
                else:
                    seen.add(c.sender)
                    items.append(c)
                    owners.append((b, c.sender))
            if problems:
                reasons[b] = next(r for r in CERT_REASONS if r in problems)
            elif len(seen) < self.quorum:
                reasons[b] = "too_few_commits"
        if items:
            for i, reason in self.verifier.verify(items):
                b = owners[i][0]
                if reasons[b] is None or CERT_REASONS.index(reason) < CERT_REASONS.index(reasons[b]):
                    reasons[b] = reason if reason in CERT_REASONS else "bad_signature"
        return reasons

    # -- installing -----------------------------------------------------------------------
    def _install_ready(self, out: Offer, source: Any) -> None:
        """Install the buffered blocks that extend the head, one transaction per run."""
        while True:
            run: list[dict] = []
            height, head = self.height, self.head
            dirty: set[str] = set()
            staged = _Staged(self.clients)
            while height + 1 in self.ahead:
                block = self.ahead.pop(height + 1)
                if block["prev"] != head:
                    self._refuse(out, "bad_prev", block, source)
                    break
                skip = staged.skip_of(block)
                if skip is None or skip != block["skip"]:
                    self._refuse(out, "bad_skip", block, source)
                    break
                dirty |= staged.record(block)
                run.append(block)
                height, head = block["seq"], block["hash"]
            if not run:
                return
            records = {CLIENT_PREFIX + c: staged.table.to_record(c) for c in dirty}
            results = self.ledger.apply(records, [_stored(b) for b in run])  # raises only on our bug
            for block, res in zip(run, results):
                for client, key, reason in refused_writes(block, res):
                    self.rejected[reason] += 1   # the client's evidence, as on the replicas
                    out.rejected[reason] += 1
                    self.evidence_log.warning((repr(client), reason),
                                              "follower refused client %r's write of %s in "
                                              "block %s: %s", client, key, block["seq"], reason)
            self.clients = staged.table
            self.installed += len(run)
            out.installed += len(run)
            for block in run:
                for hook in self.on_install:
                    hook(block)

    def _refuse(self, out: Offer, reason: str, block: Any, source: Any) -> None:
        self.rejected[reason] += 1
        out.rejected[reason] += 1
        seq = block.get("seq") if isinstance(block, dict) else None
        self.evidence_log.warning((repr(source), reason), "follower refused block %r from %r: %s",
                                  seq, source, reason)


class _Staged:
    """A copy of the client table that a run of blocks updates before it is durable."""

    def __init__(self, table: ClientTable) -> None:
        self.table = ClientTable(table.window)
        self.table._floor = dict(table._floor)
        self.table._done = {c: dict(d) for c, d in table._done.items()}

    def skip_of(self, block: dict) -> Optional[list[int]]:
        """The skip list this follower computes for ``block`` (None: a request is malformed)."""
        requests = []
        for w in block["requests"]:
            try:
                r = from_wire(w)
            except MalformedMessage:
                return None
            if not isinstance(r, Request):
                return None
            requests.append(r)
        return self.table.skip_list(requests)

    def record(self, block: dict) -> set[str]:
        """Record the requests ``block`` executes, as ``Replica._execute`` does."""
        dirty = set()
        skip = set(block["skip"])
        for i, w in enumerate(block["requests"]):
            if i in skip:
                continue
            r = from_wire(w)
            result: dict[str, Any] = {"seq": block["seq"], "index": i}
            if r.op.get("op") in ("get", "config"):
                result["read"] = r.op["key"]
            self.table.record(r.client, r.timestamp, result)
            dirty.add(r.client)
        return dirty


def _stored(block: dict) -> dict:
    """The block as a validator stores it: header, requests and certificate only."""
    return {k: block[k] for k in ("seq", "view", "digest", "prev", "skip", "hash", "requests",
                                  "certificate")}


__all__ = ["Follower", "Offer", "REASONS", "MAX_AHEAD"]
