"""The stimuli a replica takes besides protocol messages: the passage of time (the
timers of Castro and Liskov 1999, sec. 4.4 and 4.5.2, and retransmission, sec. 3), a
block fetched by state transfer (sec. 4.3), the end of a fetch, and a restart.

Theory of operation.  ``Replica.handle`` (replica.py) is the replica's one entry point,
as dask's ``WorkerState.handle_stimulus`` and etcd raft's ``Step``: it takes either a
protocol message whose signature the driver checked (messages.py) or one of these, and
returns the actions it causes (actions.py), each carrying that cause
(``replica.describe``).  One dispatch table (``Replica._handlers``) maps every stimulus
type to its handler.

Owns: ``Tick``, ``Install``, ``FetchDone`` and ``Resume``.

Rules:
- Frozen dataclasses with slots, like the messages: a stimulus is a value.
- They carry only what the replica cannot know by itself; time is a ``Tick``, one unit
  of whatever the driver says (the worker ticks every few milliseconds).
- None of them comes from a peer, so none has a ``sender``: the driver makes them, and
  checks a fetched block's signatures before it hands it over in an ``Install``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick of the replica's clock: timers, retransmission, the stuck check, and a
    partial batch whose timeout has passed.

    ``busy``: the driver saw messages waiting for this replica that it has not handed
    over yet (its queue was not empty).  A replica working through a backlog has not
    seen what the primary may already have sent, so such a tick counts only a quarter
    toward the view-change timers (viewchange.py): under a backlog that never empties
    (a flood, possibly a faulty primary's) a timeout takes at most 4 x as long."""
    busy: bool = False


@dataclass(frozen=True, slots=True)
class Install:
    """State transfer: one committed block fetched from a peer, as the peer's ledger
    holds it (chain.make_block plus its ``certificate``), to execute if it extends this
    replica's chain (catchup.py)."""
    block: dict


@dataclass(frozen=True, slots=True)
class FetchDone:
    """A batch of fetched blocks has been handed over (each in an ``Install``): ask for
    the rest if still behind."""


@dataclass(frozen=True, slots=True)
class Resume:
    """After a restart from persisted records: re-send own votes for everything not yet
    executed (and the VIEW-CHANGE of a view change in progress), since the crash may
    have come between persisting them and sending them."""
