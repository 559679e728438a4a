"""What the core asks its driver to do: the output of ``Replica.handle``, whatever the
stimulus (a protocol message, or a ``Tick``, ``Install``, ``FetchDone`` or ``Resume``).

Rules (the driver's half of the contract, as etcd raft's ``Ready``/``Advance``):
- Actions come in this order: at most one ``Persist``, then ``Execute`` in sequence
  order, then messages (``Send``, ``Broadcast``, ``SendClient``, ``FetchState``), then
  ``Evidence``.
- The driver makes every ``Persist`` and ``Execute`` of one call durable in one
  transaction *before* it sends any message of that call: a restarted replica must never
  sign a vote that conflicts with one it already sent.
- Messages leave the core unsigned (``sig == ""``); the driver signs them.  Ed25519 is
  deterministic, so the driver can re-sign the core's own commits inside a certificate
  and obtain the signature it sent.
- Every action carries ``cause``: the stimulus that produced it, a ``Cause``.  It reads
  as a display string (``replica.describe``) and carries the stimulus's id and the
  stimulus itself (dask's ``stimulus_id``): every stimulus a replica takes gets an id,
  and all the actions it causes carry it, so logs and the trace (trace.py) follow one
  event from cause to effect.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Cause(str):
    """What caused an action: the display string of the stimulus (``replica.describe``),
    with ``id``, the stimulus's id, and ``stimulus``, the stimulus itself.  A string, so
    logs and tests read it as before; ``derive`` and ``+`` keep the id."""

    id: str
    stimulus: Any

    def __new__(cls, what: str, id: str = "", stimulus: Any = None) -> "Cause":
        self = super().__new__(cls, what)
        self.id = id
        self.stimulus = stimulus
        return self

    def derive(self, what: str) -> "Cause":
        """Another display string for the same stimulus."""
        return Cause(what, self.id, self.stimulus)

    def __add__(self, more: str) -> "Cause":
        return self.derive(str.__add__(self, more))

    def __reduce__(self):
        return Cause, (str(self), self.id, self.stimulus)


@dataclass(frozen=True, slots=True)
class Persist:
    """Protocol records to write (value None = delete), keyed by record name."""
    records: dict
    cause: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Sequence number ``seq`` is committed-local and every lower one executed: append
    ``block`` (see chain.make_block) with ``certificate`` (2f+1 matching Commits) and
    apply its requests, except indices in ``block['skip']``."""
    seq: int
    block: dict
    certificate: tuple
    cause: str


@dataclass(frozen=True, slots=True)
class Send:
    to: int
    msg: Any
    cause: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``msg`` to every replica except this one."""
    msg: Any
    cause: str


@dataclass(frozen=True, slots=True)
class SendClient:
    client: str
    msg: Any
    cause: str


@dataclass(frozen=True, slots=True)
class FetchState:
    """State transfer: this replica is behind; ask ``peers`` (in order) for the
    committed blocks ``from_seq`` .. ``to_seq`` with their certificates, verify every
    signature, and hand each block to the replica in order (``Install``), then say
    ``FetchDone``."""
    from_seq: int
    to_seq: int
    peers: tuple
    cause: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """A message from a peer that broke a rule: dropped, logged and counted.  ``reason``
    is a short slug (it labels a metric); ``detail`` says what exactly."""
    sender: Any
    reason: str
    detail: str
    cause: str
