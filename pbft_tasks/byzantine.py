"""Byzantine behaviours on a real worker: the adapter's half, switched on by environment.

Owns: reading ``HDPBF_BYZANTINE`` (comma-separated names from
pbft_tasks/core/byzantine.py, e.g. ``equivocate,replay``) for one worker process, and
the two signature faults the pure core leaves to whoever signs: ``forge`` signs with a
key that is not the node's own (derived from its id, in no mesh.json, so every
receiver's ``Verifier`` rejects it as ``bad_signature``), ``nosig`` sends an empty
``sig`` (``missing_signature``).

Rules:
- Only the worker's environment switches behaviours on.  mesh.json has no field for
  them, so a production configuration cannot turn them on by accident; a worker running
  them logs it at WARNING on start and shows it in ``pbft.status`` (``"byzantine"``).
- A name that is not a behaviour refuses to start (``ConfigError``; the worker exits
  78 with the message, like every other configuration error in celery_app.py).
- The node's ledger stays honest: the certificates it stores are signed with its real
  key; only messages leaving the node carry the faulty signature.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Mapping

from nacl.signing import SigningKey

from .core.byzantine import Byzantine
from .core.messages import Request, signing_bytes

ENV = "HDPBF_BYZANTINE"


def from_environment(node_id: int, n: int, environ: Mapping[str, str] | None = None) -> Byzantine | None:
    """The behaviours ``HDPBF_BYZANTINE`` asks this node for, or None when unset or
    empty.  A bad value raises pbft_tasks.topology.ConfigError naming it."""
    spec = (os.environ if environ is None else environ).get(ENV, "")
    if not spec.strip():
        return None
    try:
        return Byzantine(node_id, n, spec, seed=node_id)
    except ValueError as exc:
        from pbft_tasks.topology import ConfigError
        raise ConfigError(f"{ENV}={spec!r}: {exc}") from None


def forged_key(node_id: int) -> SigningKey:
    """A key that is not node ``node_id``'s (and not any node's in a generated mesh)."""
    return SigningKey(hashlib.sha256(f"hdpbf: a forged key for node {node_id}".encode()).digest())


_FORGED: dict[int, SigningKey] = {}


def signed_as(byzantine: Byzantine, node_id: int, msg: Any) -> Any:
    """``msg``, honestly signed by node ``node_id``, as the faulty node sends it:
    re-signed with a forged key (``forge``), unsigned (``nosig``), or unchanged.
    Forwarded client requests keep the client's signature."""
    mode = byzantine.signature_mode
    if not mode or isinstance(msg, Request):
        return msg
    byzantine.counts[mode] += 1
    if mode == "nosig":
        return dataclasses.replace(msg, sig="")
    key = _FORGED.get(node_id)
    if key is None:
        key = _FORGED[node_id] = forged_key(node_id)
    return dataclasses.replace(msg, sig=key.sign(signing_bytes(msg)).signature.hex())
