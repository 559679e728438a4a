"""The validators' half of followers: pushing blocks, and whom to push to.

Owns:
- ``BlockPusher``: a validator's ``NodeRuntime.on_execute`` hook, attached by the
  composition root (wiring.build_node) when mesh.json lists followers, that publishes
  every block the node executes, with its certificate, once on the ``hdpbf.blocks``
  exchange (transport.publish_block).  With ``HDPBF_BYZANTINE=alter_push`` it publishes
  altered blocks instead (fault tests only).
- ``attach_pusher``: also makes the runtime answer those followers' fetches.
- ``sources_for``: the f+1 validators a follower listens to.

A mesh.json without followers gets nothing attached: no cost.  A push that cannot be
published is logged; the follower fetches what it misses.
"""
from __future__ import annotations

import logging
import time
import zlib
from typing import Any, Optional

from .core import chain
from .core.messages import sha256_hex

log = logging.getLogger("hdpbf.follower")


def altered_block(block: dict) -> dict:
    """What ``alter_push`` publishes instead of ``block``, three ways by seq: a request
    changed with digest and hash recomputed (its commits no longer match), a certificate
    cut to 2f commits, or a header linked elsewhere with its hash recomputed."""
    b = dict(block)
    kind = b["seq"] % 3
    if kind == 0:
        reqs = [dict(r) for r in b["requests"]]
        if reqs:
            op = dict(reqs[0]["op"])
            op["key"] = "altered-" + str(op.get("key"))
            reqs[0]["op"] = op
        b["requests"] = reqs
        b["digest"] = sha256_hex(reqs) if reqs else sha256_hex(["altered", b["digest"]])
    elif kind == 1:
        b["certificate"] = list(b["certificate"])[: max(0, len(b["certificate"]) - 1)]
        return b
    else:
        b["prev"] = sha256_hex(["altered", b["prev"]])
    b["hash"] = chain.block_hash(b)
    return b


class BlockPusher:
    """``NodeRuntime.on_execute`` hook: publish each executed block for followers."""

    def __init__(self, runtime: Any, transport: Any) -> None:
        self.runtime = runtime
        self.transport = transport
        byz = runtime.byzantine
        self.alter = byz is not None and "alter_push" in byz.behaviours
        self.pushed = 0

    def __call__(self, block: dict, results: Any) -> None:
        if self.alter:
            block = altered_block(block)
            self.runtime.byzantine.counts["alter_push"] += 1
        wire = {"type": "Block", "sender": self.runtime.id, "executed_at": time.time(),
                "block": block}
        try:
            self.transport.publish_block(self.runtime.id, wire)
            self.pushed += 1
        except (OSError, ConnectionError) as exc:  # followers fetch what they miss
            log.warning("node %s could not push block %s to followers: %s",
                        self.runtime.id, block.get("seq"), exc)


def attach_pusher(runtime: Any, cfg: Any, transport: Any) -> Optional[BlockPusher]:
    """Make ``runtime`` answer the followers of ``cfg`` and push blocks to them (nothing
    when mesh.json lists none: no cost to a mesh without followers).  A runtime whose
    membership follows the ledger (membership.py) and has none yet gets ``LatePusher``
    instead, which starts pushing once a configuration lists a follower."""
    runtime.followers = frozenset(f.name for f in cfg.followers)
    if not cfg.followers:
        membership = getattr(runtime, "membership", None)
        if membership is not None:
            runtime.on_execute.append(LatePusher(runtime, transport, membership))
        return None
    pusher = BlockPusher(runtime, transport)
    runtime.on_execute.append(pusher)
    return pusher


class LatePusher:
    """``on_execute`` hook of a validator with no follower in mesh.json: a set lookup per
    block until the ledger's configuration lists a follower, then a ``BlockPusher``
    (the follower fetches what came before)."""

    def __init__(self, runtime: Any, transport: Any, membership: Any) -> None:
        self.runtime, self.transport, self.membership = runtime, transport, membership
        self.pusher: Optional[BlockPusher] = None

    def __call__(self, block: dict, results: Any) -> None:
        if self.pusher is None:
            if not self.membership.any_follower():
                return
            self.pusher = BlockPusher(self.runtime, self.transport)
        self.pusher(block, results)


def sources_for(n: int, f: int, name: str, count: Optional[int] = None) -> list[int]:
    """The validators follower ``name`` listens to: ``count`` (default f+1, so at least
    one is correct) consecutive ids from a start derived from its name, so that many
    followers spread over the validators."""
    count = f + 1 if count is None else max(1, min(n, count))
    start = zlib.crc32(name.encode()) % n
    return sorted((start + j) % n for j in range(count))


__all__ = ["BlockPusher", "LatePusher", "attach_pusher", "sources_for", "altered_block"]
