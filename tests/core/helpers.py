"""Shared builders for the core tests: hand-made messages and action filters.

Everything here is plain data; no fixtures and no mocks.  A test builds the messages
a replica would receive, feeds them to ``Replica.handle`` and inspects the actions.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

from pbft_tasks.core.actions import Broadcast, Evidence, Execute, Persist, Send, SendClient
from pbft_tasks.core.messages import Checkpoint, Commit, PrePrepare, Prepare, Request, batch_digest
from pbft_tasks.core.replica import Replica, ReplicaConfig
from pbft_tasks.core.sim import Cluster
from pbft_tasks.core import quorum as Q


def config(n: int = 4, **kw: Any) -> ReplicaConfig:
    base = dict(checkpoint_interval=4, log_window=8, max_batch=1, batch_timeout_ticks=1,
                retransmit_ticks=10)
    base.update(kw)
    return ReplicaConfig(n=n, **base)


def req(client: str = "c", ts: int = 1, key: str = "k", value: Any = 1) -> Request:
    return Request(client, ts, {"op": "put", "key": key, "value": value, "expires_at": None})


def fake_digest(word: str) -> str:
    """A well-formed digest that matches no real batch."""
    return hashlib.sha256(word.encode()).hexdigest()


def preprepare(seq: int, batch: Iterable[Request] = None, view: int = 0, n: int = 4,
               sender: int | None = None, digest: str | None = None) -> PrePrepare:
    batch = tuple(batch) if batch is not None else (req(ts=seq),)
    return PrePrepare(view, seq, digest or batch_digest(batch), batch,
                      Q.primary(view, n) if sender is None else sender)


def prepare(pp: PrePrepare, sender: int, digest: str | None = None) -> Prepare:
    return Prepare(pp.view, pp.seq, digest or pp.digest, sender)


def commit(pp: PrePrepare, sender: int, digest: str | None = None) -> Commit:
    return Commit(pp.view, pp.seq, digest or pp.digest, sender)


def feed(replica: Replica, msgs: Iterable[Any]) -> list:
    out: list = []
    for m in msgs:
        out += replica.handle(m)
    return out


def messages(actions: list, kind: type | None = None) -> list:
    """The protocol messages sent to replicas (Send and Broadcast), optionally of one type."""
    out = [a.msg for a in actions if isinstance(a, (Send, Broadcast))]
    return [m for m in out if kind is None or isinstance(m, kind)]


def client_replies(actions: list) -> list:
    return [a.msg for a in actions if isinstance(a, SendClient)]


def executes(actions: list) -> list[Execute]:
    return [a for a in actions if isinstance(a, Execute)]


def reasons(actions: list) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Evidence)]


def persisted(actions: list) -> dict:
    out: dict = {}
    for a in actions:
        if isinstance(a, Persist):
            out.update(a.records)
    return out


def commit_seq(replica: Replica, pp: PrePrepare, voters: Iterable[int] | None = None) -> list:
    """Drive a backup through one sequence number: pre-prepare, the other backups'
    prepares and every other replica's commit (the normal case, sec. 4.2)."""
    n = replica.n
    primary = Q.primary(pp.view, n)
    others = [i for i in range(n) if i != replica.id]
    voters = list(voters) if voters is not None else others
    msgs: list = [pp] if replica.id != primary else []
    msgs += [prepare(pp, i) for i in voters if i != primary]
    msgs += [commit(pp, i) for i in voters]
    return feed(replica, msgs)


def checkpoint_votes(seq: int, digest: str, senders: Iterable[int]) -> list[Checkpoint]:
    return [Checkpoint(seq, digest, s) for s in senders]


def ordered_like_contract(actions: list) -> bool:
    """Persist (at most one) first, then Execute, then messages, then Evidence."""
    rank = {Persist: 0, Execute: 1, Send: 2, Broadcast: 2, SendClient: 2, Evidence: 3}
    ranks = [rank[type(a)] for a in actions]
    return ranks == sorted(ranks) and ranks.count(0) <= 1


def run_dropping(c: Cluster, ticks: int, lost) -> None:
    """Tick and deliver in FIFO order, losing every message for which ``lost(envelope)``."""
    for _ in range(ticks):
        c.tick()
        while True:
            k = next((k for k, e in enumerate(c.network) if c.nodes[e.to].up), None)
            if k is None:
                break
            (c.drop if lost(c.network[k]) else c.deliver)(k)
