"""A deterministic in-memory cluster of pure replicas, for tests and scenario scripts.

Owns: a network of in-flight messages that the caller delivers, drops, duplicates or
reorders one by one; per-replica persisted records (so a replica can crash and restart
from exactly what it persisted); the executed chain of every replica; client replies;
each replica's stimulus log (trace.py).

It plays the driver's part of the contract in actions.py with no signatures (the core
never checks them) and no I/O.  Byzantine replicas come in two kinds: nodes in
``byzantine`` do nothing of their own and the caller injects messages in their name
(``inject``); nodes given ``behaviours`` (byzantine.py) run an honest ``Replica`` whose
output goes through ``Byzantine.outgoing``.  Their forged or unsigned messages are
dropped in transit, as a real receiver's verifier rejects them, and counted in
``rejected`` by (sender, reason).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from .actions import Broadcast, Evidence, Execute, FetchState, Persist, Send, SendClient
from .byzantine import Byzantine
from .messages import Request, to_wire
from .replica import Replica, ReplicaConfig
from .stimuli import Install, Resume, Tick
from .trace import StimulusLog


@dataclass
class Envelope:
    to: int
    msg: Any
    origin: int | str


@dataclass
class SimNode:
    replica: Replica | None
    records: dict = field(default_factory=dict)
    blocks: list = field(default_factory=list)   # executed blocks, in order
    certs: dict = field(default_factory=dict)    # seq -> the certificate's Commits
    evidence: list = field(default_factory=list)
    up: bool = True
    trace: StimulusLog = field(default_factory=StimulusLog)  # recent stimuli (trace.py)


class Cluster:
    def __init__(self, n: int = 4, behaviours: dict[int, Any] | None = None, seed: int = 0,
                 **cfg: Any):
        self.config = ReplicaConfig(n=n, **cfg)
        # node -> its Byzantine output filter (spec: "equivocate,replay" or names)
        self.faulty = {i: Byzantine(i, n, spec, seed=seed) for i, spec in (behaviours or {}).items()}
        self.rejected: Counter = Counter()  # (sender, reason) of messages dropped in transit
        self.nodes = [SimNode(Replica(i, self.config)) for i in range(n)]
        self.network: list[Envelope] = []
        self.replies: dict[str, list] = defaultdict(list)
        self.byzantine: set[int] = set()
        self.sent = 0
        self.fetches: list = []   # (replica, FetchState) waiting for serve_fetches()

    # -- stimuli ------------------------------------------------------------------
    def request(self, client: str, ts: int, key: str, value: Any, to: int | None = None,
                expires_at: float | None = None) -> Request:
        req = Request(client, ts, {"op": "put", "key": key, "value": value, "expires_at": expires_at})
        targets = [to] if to is not None else [self.nodes[0].replica.primary if self.nodes[0].replica else 0]
        for t in targets:
            self.network.append(Envelope(t, req, client))
        return req

    def inject(self, to: int, msg: Any, origin: Any = "byzantine") -> None:
        self.network.append(Envelope(to, msg, origin))

    def deliver(self, index: int = 0) -> None:
        """Deliver one message; a message to a down node stays queued for it."""
        node = self.nodes[self.network[index].to]
        if not node.up:
            return
        env = self.network.pop(index)
        if node.replica is not None and env.to not in self.byzantine:
            self._apply(env.to, node.trace.step(node.replica, env.msg))

    def drop(self, index: int = 0) -> None:
        self.network.pop(index)

    def duplicate(self, index: int = 0) -> None:
        self.network.append(self.network[index])

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            for i, node in enumerate(self.nodes):
                if node.up and node.replica is not None and i not in self.byzantine:
                    self._apply(i, node.trace.step(node.replica, Tick()))

    def serve_fetches(self) -> int:
        """Answer state-transfer requests from the first asked peer that is up and has
        the blocks (the real adapter also checks every signature first)."""
        served = 0
        fetches, self.fetches = self.fetches, []
        for i, f in fetches:
            node = self.nodes[i]
            if not node.up or node.replica is None:
                continue
            for peer in f.peers:
                src = self.nodes[peer]
                if (not src.up or peer in self.byzantine or len(src.blocks) < f.from_seq
                        or (peer in self.faulty and self.faulty[peer].silent)):
                    continue
                for b in src.blocks[f.from_seq - 1: f.to_seq]:
                    block = dict(b, certificate=[to_wire(c) for c in src.certs[b["seq"]]])
                    self._apply(i, node.trace.step(node.replica, Install(block)))
                    served += 1
                break
        return served

    def crash(self, i: int, lose_queue: bool = False) -> None:
        """Lose everything volatile; keep only the persisted records and blocks.  Messages
        to a down node wait for it, as in its durable RabbitMQ queue, unless
        ``lose_queue`` (a network that drops them)."""
        self.nodes[i].up = False
        self.nodes[i].replica = None
        if lose_queue:
            self.network = [e for e in self.network if e.to != i]

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        node.replica = Replica(i, self.config, records=dict(node.records))
        node.up = True
        self._apply(i, node.trace.step(node.replica, Resume()))

    def stabilize(self, max_steps: int = 100_000, tick_every: int = 0) -> int:
        """Deliver in FIFO order until the network is empty; returns messages delivered."""
        steps = 0
        while steps < max_steps:
            index = next((k for k, e in enumerate(self.network) if self.nodes[e.to].up), None)
            if index is None:
                break
            self.deliver(index)
            steps += 1
            if tick_every and steps % tick_every == 0:
                self.tick()
        return steps

    def run(self, max_rounds: int = 50) -> None:
        """Deliver and tick until nothing is in flight and no batch is waiting."""
        for _ in range(max_rounds):
            self.stabilize()
            self.serve_fetches()
            self.tick(self.config.batch_timeout_ticks + 1)
            if not any(self.nodes[e.to].up for e in self.network):
                return

    # -- observations -------------------------------------------------------------
    def honest(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.byzantine and i not in self.faulty]

    def height(self, i: int) -> int:
        return len(self.nodes[i].blocks)

    def head(self, i: int) -> str:
        blocks = self.nodes[i].blocks
        return blocks[-1]["hash"] if blocks else "0" * 64

    # -- the driver's half of the contract ---------------------------------------------
    def _apply(self, i: int, actions: list) -> None:
        node = self.nodes[i]
        if i in self.faulty:
            actions = self.faulty[i].outgoing(actions)
        sending = False
        for a in actions:
            if isinstance(a, Persist):
                assert not sending, "Persist after a send: the core broke its contract"
                for k, v in a.records.items():
                    if v is None:
                        node.records.pop(k, None)
                    else:
                        node.records[k] = v
            elif isinstance(a, Execute):
                assert not sending, "Execute after a send: the core broke its contract"
                assert a.seq == len(node.blocks) + 1, f"node {i} executed {a.seq} out of order"
                node.blocks.append(dict(a.block, certificate=[c.sender for c in a.certificate]))
                node.certs[a.seq] = a.certificate
            elif isinstance(a, Send):
                sending = True
                self._send(a.to, a.msg, i)
            elif isinstance(a, Broadcast):
                sending = True
                for j in range(len(self.nodes)):
                    if j != i:
                        self._send(j, a.msg, i)
            elif isinstance(a, SendClient):
                sending = True
                if not self._rejected_in_transit(i, a.msg):
                    self.replies[a.client].append(a.msg)
            elif isinstance(a, Evidence):
                node.evidence.append(a)
            elif isinstance(a, FetchState):
                self.fetches.append((i, a))

    def _send(self, to: int, msg: Any, origin: int) -> None:
        self.sent += 1
        if not self._rejected_in_transit(origin, msg):
            self.network.append(Envelope(to, msg, origin))

    def _rejected_in_transit(self, origin: int, msg: Any) -> bool:
        """A forged or unsigned message from a faulty node: every receiver's signature
        check would reject it (signing.py's reasons), so it is counted and dropped."""
        byz = self.faulty.get(origin)
        if byz is None or not byz.signature_mode or isinstance(msg, Request):
            return False
        reason = "bad_signature" if byz.signature_mode == "forge" else "missing_signature"
        self.rejected[(origin, reason)] += 1
        return True
