"""Blocks and the hash chain: what a replica appends when it executes a sequence number.

Owns: the block layout, the block hash, and the state digest used by checkpoints.

Rules:
- Every sequence number that executes yields exactly one block, even an empty batch
  (a null request), so height == last executed seq and hash links have no gaps.
- The block hash covers the header only: seq, batch digest, previous hash and which
  requests execution skipped as duplicates.  The batch is bound through its digest.
  The view is stored but not hashed: a batch prepared in view v may commit at one
  replica in v and, re-proposed after a view change (sec. 4.4), at another in v+1 --
  the same seq and digest, so the same block (the view-change hypothesis test produces it).
  The commit certificate is *not* hashed: replicas hold different (equally valid) sets
  of 2f+1 signed commits, yet must agree on the hash.
- The state digest a checkpoint carries (Castro-Liskov sec. 4.3) is the head hash after
  executing that seq.  The key/value state is a deterministic function of the chain, so
  agreeing on the head hash is agreeing on the state.
"""
from __future__ import annotations

from .messages import request_wire, sha256_hex

GENESIS = "0" * 64


def block_header(seq: int, view: int, digest: str, prev: str, skip: list[int]) -> dict:
    return {"seq": seq, "view": view, "digest": digest, "prev": prev, "skip": list(skip)}


def block_hash(header: dict) -> str:
    return sha256_hex({k: header[k] for k in ("seq", "digest", "prev", "skip")})


def make_block(seq: int, view: int, digest: str, prev: str, batch: tuple,
               skip: list[int]) -> dict:
    """The block as stored (without its certificate, which the adapter attaches)."""
    header = block_header(seq, view, digest, prev, skip)
    header["hash"] = block_hash(header)
    header["requests"] = [request_wire(r) for r in batch]
    return header
