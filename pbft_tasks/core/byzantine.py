"""Byzantine behaviours for tests: what an honest replica said, perverted on purpose.

Owns: the fixed set of behaviour names (``BEHAVIOURS``), parsing a behaviour spec
(``parse_behaviours("equivocate,replay")``), and ``Byzantine.outgoing``: given the
actions an honest ``Replica`` returned, the actions a faulty node carries out instead.
This is standard fault injection: the faulty node runs the honest core, so its own
ledger stays consistent with that core, and only what it tells the others is false.
Castro and Liskov 1999, sec. 2: up to f replicas "may behave arbitrarily"; the paper's
safety and liveness claims (sec. 4.5) must hold whatever they send.

Rules of this file:
- Pure and deterministic, like the rest of the core: no I/O, no clock, no ``random``
  (replays are picked by a seeded linear congruential generator).
- ``Persist`` and ``Execute`` pass through unchanged and first, ``Evidence`` last; only
  messages are changed, added or dropped, so the action order of actions.py holds.
- Client requests a node forwards keep the client's signature and are never altered:
  a replica cannot forge a client (signing.py checks every request in a batch).
- Signature faults (``forge``, ``nosig``) change nothing here: the adapter applies them
  when it signs (``signature_mode``); the simulator drops such messages in transit and
  counts them, as a real receiver's verifier would reject them.
- Behaviours are switched on only by a worker's environment (``HDPBF_BYZANTINE``, read
  in pbft_tasks/byzantine.py) or by the simulator's ``Cluster(behaviours=...)``; never
  by mesh.json, so a production configuration cannot turn them on by accident.

The behaviours (combine them with commas; ``silent`` overrides the others):
- ``equivocate``: as primary, the lower half of its peers (by id) get the honest
  pre-prepare and the others a conflicting one for the same (view, seq): the batch in
  reverse order, or with its last request dropped (a one-request batch becomes a null
  batch), so it is built only from real, client-signed requests.  As a backup it sends
  prepares, commits and checkpoints with a conflicting digest to the upper half.  Each
  peer always gets the same version of a given message (retransmissions included).
- ``wrong_digest``: its prepares, commits and checkpoints carry a wrong digest.
- ``replay``: with every broadcast it also re-broadcasts one of the messages it sent
  earlier (older seqs, views, checkpoints), chosen by the seeded generator; with every
  vote it sends to a collector alone (collector vote routing) it sends the collector
  one too.
- ``silent``: sends nothing at all (it still consumes its queue and keeps its ledger).
- ``forge``: the adapter signs its messages with a key that is not its own.
- ``nosig``: the adapter sends its messages without a signature.
- ``lie``: its replies to clients carry falsified results (a read's value altered:
  for a console key another host, port and token).
- ``flood``: with every broadcast it also sends what a faulty node can use
  against the others' liveness: a Prepare with seq 2^62 (a "seen ahead" target), a
  VIEW-CHANGE for a view just ahead and one for a view far ahead (a growing series:
  stored VIEW-CHANGEs and the f+1 join rule), and a request for blocks 1..64 (a fetch
  answered with blocks).  Every honest node must keep committing in view 0.
- ``alter_push``: the blocks it pushes to followers are altered; nothing
  changes here, the adapter that publishes blocks does it (pbft_tasks/follower_node.py).
"""
from __future__ import annotations

from collections import Counter, deque
from typing import Any, Iterable

from .actions import Broadcast, Evidence, Execute, FetchState, Persist, Send, SendClient
from .messages import (Checkpoint, Commit, PrePrepare, Prepare, Reply, Request, ViewChange,
                       batch_digest, sha256_hex)

BEHAVIOURS = frozenset({"equivocate", "wrong_digest", "replay", "silent", "forge", "nosig", "lie",
                        "flood", "alter_push"})
FLOOD_SEQ = 2**62
REPLAY_HISTORY = 256  # messages remembered for replay


def parse_behaviours(spec: str | Iterable[str]) -> frozenset[str]:
    """The behaviours named by ``spec`` ("equivocate,replay" or an iterable of names;
    blanks and empty items are ignored).  ValueError names what is wrong and lists the
    valid names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a Byzantine behaviour must be a name, got {item!r}")
        if item.strip():
            names.append(item.strip())
    unknown = sorted(set(names) - BEHAVIOURS)
    if unknown:
        raise ValueError(f"unknown Byzantine behaviour {', '.join(map(repr, unknown))}; "
                         f"valid behaviours: {', '.join(sorted(BEHAVIOURS))}")
    if {"forge", "nosig"} <= set(names):
        raise ValueError("Byzantine behaviours 'forge' and 'nosig' exclude each other "
                         "(a message carries one signature or none)")
    return frozenset(names)


def wrong_digest(digest: str, why: str = "wrong_digest") -> str:
    """A well-formed digest that is not ``digest`` (and names no real batch)."""
    return sha256_hex([why, digest])


def conflicting_batch(batch: tuple) -> tuple:
    """Another batch made of the same client-signed requests: reversed, or without its
    last request.  A null batch has no conflicting twin and comes back unchanged."""
    if len(batch) >= 2:
        other = tuple(reversed(batch))
        if batch_digest(other) != batch_digest(batch):
            return other
    return batch[:-1]


def falsify(value: Any) -> Any:
    """A JSON value of the same shape with every leaf changed (strings prefixed,
    numbers moved by one, booleans flipped, null replaced)."""
    if value is None:
        return "forged"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return "forged-" + value
    if isinstance(value, list):
        return [falsify(v) for v in value]
    if isinstance(value, dict):
        return {k: falsify(v) for k, v in value.items()}
    return value


def falsify_result(result: Any) -> Any:
    """A lie about one request's result.  A read's result keeps its position and key
    and gets another value (a missing key is said to hold one); any other result
    (a put's receipt) is falsified whole."""
    if isinstance(result, dict) and "key" in result and ("value" in result or result.get("deleted")):
        lie = {k: v for k, v in result.items() if k != "deleted"}
        lie["value"] = falsify(result.get("value"))
        lie["version"] = result.get("version", 0) + (0 if "value" in result else 1)
        lie.setdefault("expires_at", None)
        return lie
    return falsify(result)


class Byzantine:
    """The output filter of one faulty node.  ``outgoing(actions)`` takes what the
    node's honest replica returned and gives back what the node actually does."""

    def __init__(self, node_id: int, n: int, behaviours: str | Iterable[str], seed: int = 0):
        if not 0 <= node_id < n:
            raise ValueError(f"node id {node_id} not in 0..{n - 1}")
        self.id = node_id
        self.n = n
        self.behaviours = parse_behaviours(behaviours)
        peers = [j for j in range(n) if j != node_id]
        self.peers = peers
        self.told_lies = frozenset(peers[len(peers) // 2:])  # equivocate: the upper half
        self._rng = (seed * 2862933555777941757 + 3037000493) % 2**64
        self._history: deque = deque(maxlen=REPLAY_HISTORY)
        self.counts: Counter[str] = Counter()  # what was perverted, for tests and status
        self._far_view = 0  # flood: the last far-ahead view it asked for

    @property
    def signature_mode(self) -> str:
        """"forge", "nosig" or "" (sign honestly): applied by whoever signs."""
        if "silent" in self.behaviours:
            return ""
        return "forge" if "forge" in self.behaviours else "nosig" if "nosig" in self.behaviours else ""

    @property
    def silent(self) -> bool:
        return "silent" in self.behaviours

    def __repr__(self) -> str:
        return f"Byzantine(node {self.id}: {', '.join(sorted(self.behaviours))})"

    # -- the filter -----------------------------------------------------------------
    def outgoing(self, actions: list) -> list:
        state = [a for a in actions if isinstance(a, (Persist, Execute))]
        evidence = [a for a in actions if isinstance(a, Evidence)]
        sent = [a for a in actions if isinstance(a, (Send, Broadcast, SendClient, FetchState))]
        if self.silent:
            self.counts["withheld"] += len(sent)
            return state + evidence
        out: list = []
        for a in sent:
            out += self._pervert(a)
        return state + out + evidence

    def _pervert(self, a: Any) -> list:
        if isinstance(a, FetchState):
            return [a]
        if isinstance(a, SendClient):
            if "lie" in self.behaviours and isinstance(a.msg, Reply):
                self.counts["lies"] += len(a.msg.results)
                return [SendClient(a.client, self._lie(a.msg), a.cause + " [byzantine: lie]")]
            return [a]
        msg = a.msg
        if isinstance(msg, Request) or getattr(msg, "sender", None) != self.id:
            return [a]  # a forwarded request, or a message of another node
        if "wrong_digest" in self.behaviours and isinstance(msg, (Prepare, Commit, Checkpoint)):
            msg = self._with_digest(msg, wrong_digest(self._digest(msg)))
            self.counts["wrong_digest"] += 1
        targets = [a.to] if isinstance(a, Send) else self.peers
        per_peer = {to: self._for_peer(msg, to) for to in targets}
        if isinstance(a, Send):
            out = [Send(a.to, per_peer[a.to], a.cause)]
        elif len({id(m) for m in per_peer.values()}) == 1:
            out = [Broadcast(msg, a.cause)]
        else:
            out = [Send(to, m, a.cause + " [byzantine: equivocate]") for to, m in per_peer.items()]
        if isinstance(a, Broadcast) and "flood" in self.behaviours:
            out += self._flood(msg, a.cause + " [byzantine: flood]")
        # a vote sent to the collector alone (collector vote routing) replays too
        vote_to_collector = isinstance(a, Send) and isinstance(msg, (Prepare, Commit))
        if (isinstance(a, Broadcast) or vote_to_collector) and "replay" in self.behaviours:
            if self._history:
                old = self._history[self._next() % len(self._history)]
                self.counts["replayed"] += 1
                cause = a.cause + " [byzantine: replay]"
                out.append(Broadcast(old, cause) if isinstance(a, Broadcast) else Send(a.to, old, cause))
            self._history.append(msg)
        return out

    # -- equivocation ---------------------------------------------------------------
    def _for_peer(self, msg: Any, to: int) -> Any:
        """The version of ``msg`` peer ``to`` gets (the same one every time)."""
        if "equivocate" not in self.behaviours or to not in self.told_lies:
            return msg
        if isinstance(msg, PrePrepare):
            other = conflicting_batch(msg.batch)
            if other == msg.batch:
                return msg  # a null batch: nothing real to equivocate with
            self.counts["equivocated"] += 1
            return PrePrepare(msg.view, msg.seq, batch_digest(other), other, msg.sender)
        if isinstance(msg, (Prepare, Commit, Checkpoint)):
            self.counts["equivocated"] += 1
            return self._with_digest(msg, wrong_digest(self._digest(msg), "equivocate"))
        return msg

    @staticmethod
    def _digest(msg: Prepare | Commit | Checkpoint) -> str:
        return msg.state_digest if isinstance(msg, Checkpoint) else msg.digest

    @staticmethod
    def _with_digest(msg: Prepare | Commit | Checkpoint, digest: str) -> Any:
        if isinstance(msg, Checkpoint):
            return Checkpoint(msg.seq, digest, msg.sender)
        return type(msg)(msg.view, msg.seq, digest, msg.sender)

    # -- flooding -----------------------------------------------------------------------
    def _flood(self, msg: Any, cause: str) -> list:
        view = getattr(msg, "view", getattr(msg, "new_view", 0))
        self.counts["flooded"] += 1
        self._far_view = max(self._far_view, view + 100) + 1
        return [Broadcast(Prepare(view, FLOOD_SEQ, wrong_digest(str(view), "flood"), self.id), cause),
                Broadcast(ViewChange(view + 2, 0, (), (), self.id), cause),
                Broadcast(ViewChange(self._far_view, 0, (), (), self.id), cause),
                FetchState(1, 64, tuple(self.peers), cause)]

    # -- lies and replays -----------------------------------------------------------------
    def _lie(self, reply: Reply) -> Reply:
        results = tuple({"timestamp": r["timestamp"], "result": falsify_result(r["result"])}
                        for r in reply.results)
        return Reply(reply.view, reply.seq, reply.client, reply.sender, results)

    def _next(self) -> int:
        self._rng = (self._rng * 6364136223846793005 + 1442695040888963407) % 2**64
        return self._rng >> 33
