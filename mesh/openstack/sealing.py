"""Sealed console records: what compute puts in the ledger, and how an API node opens it.

Owns: the ledger value of a console (``instance_key``) and the sealing of its bearer
token.  A console token lets whoever holds it open the instance's console (nova keeps
only its hash); the ledger is replicated to every node, so the token must not be in it
in clear (docs/nova.md, "What each node can and cannot read").

Rules of this file:
- Compute seals once, before submission: the token is encrypted with a PyNaCl
  ``SealedBox`` for each reader (API node) named in mesh.json.  Every replica agrees on
  the resulting bytes like on any other value; none of them can open them.
- The token is removed from everything else: ``access_url`` is stored as the list of its
  pieces around the token (``url.split(token)``), re-joined with the opened token.
- ``token_sha256`` is what nova stores (a hash of a 256-bit random token reveals
  nothing); an opener checks the opened token against it, so every reader gets the one
  token compute minted, or nothing.
- Opening can fail in exactly one way for the caller: ``SealError`` (no ciphertext for
  this reader, wrong key, tampered value).  The reader turns that into a step-1 miss.
- Opening costs an X25519 operation (~50-100 us), several times a whole ledger read;
  an ``Opener`` remembers what it opened, keyed by the ciphertext itself, so repeated
  step-1 reads of one token cost a dict lookup.

Value (JSON, ``format`` = "console/1")::

    {"format", "instance", "console_type", "compute_host", "host", "port",
     "internal_access_path", "access_url": [piece, ...] | null, "token_sha256",
     "sealed": {reader: base64 ciphertext}}      # or "token": clear, when unsealed
"""
from __future__ import annotations

import base64
import hashlib
from typing import Any, Mapping

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

FORMAT = "console/1"
NOVA_KEYS = ("host", "port", "internal_access_path", "token", "access_url")
_CACHE_MAX = 4096


class SealError(ValueError):
    """A sealed value this reader cannot open; the message says why."""


def instance_key(instance: str, console_type: str = "novnc") -> str:
    return f"console/{instance}/{console_type}"


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Sealer:
    """Seals tokens for a fixed set of readers (name -> X25519 public key)."""

    def __init__(self, recipients: Mapping[str, PublicKey]):
        if not recipients:
            raise ValueError("a Sealer needs at least one reader to seal for; add one with "
                             "'hdpbf add-reader api' (or init_mesh(..., readers=('api',)))")
        self.recipients = {name: SealedBox(pub) for name, pub in recipients.items()}

    def set_recipients(self, recipients: Mapping[str, PublicKey]) -> None:
        """Seal for these readers from now on (reader_keys.py: the ledger's
        configuration); one swap, so a seal in progress uses the old set or the new.
        None at all is allowed here: a revoked last reader is not sealed for, and every
        reader falls back to step 2."""
        self.recipients = {name: SealedBox(pub) for name, pub in recipients.items()}

    def seal(self, token: str) -> dict[str, str]:
        data = token.encode("utf-8")
        recipients = self.recipients
        return {name: base64.b64encode(box.encrypt(data)).decode("ascii")
                for name, box in recipients.items()}


class Opener:
    """One reader's private key, opening the ciphertexts sealed for ``name``."""

    def __init__(self, name: str, private_key: PrivateKey):
        self.name = name
        self._box = SealedBox(private_key)
        self._opened: dict[str, str] = {}

    def open(self, sealed: Mapping[str, str], token_sha256: str | None = None) -> str:
        """The token in ``sealed`` for this reader; SealError if there is none for it or
        it does not open (or does not match ``token_sha256``)."""
        ct = sealed.get(self.name) if isinstance(sealed, Mapping) else None
        if ct is None:
            raise SealError(f"this console token is not sealed for reader {self.name!r} "
                            f"(sealed for: {', '.join(sorted(sealed or ())) or 'nobody'})")
        token = self._opened.get(ct)
        if token is not None:
            return token
        try:
            token = self._box.decrypt(base64.b64decode(ct, validate=True)).decode("utf-8")
        except (CryptoError, ValueError, TypeError) as exc:
            raise SealError(f"reader {self.name!r} cannot open this console token: "
                            f"{type(exc).__name__}: {exc} (wrong key?)") from None
        if token_sha256 is not None and _sha256(token) != token_sha256:
            raise SealError("the opened console token does not match its hash")
        if len(self._opened) >= _CACHE_MAX:
            self._opened.clear()
        self._opened[ct] = token
        return token


def seal_console(instance: str, console_type: str, compute_host: str, connect_info: Mapping,
                 sealer: Sealer | None) -> dict:
    """The ledger value for ``connect_info`` (nova's keys).  ``sealer`` None stores the
    token in clear: only for experiments where every node may hold it."""
    token = connect_info["token"]
    url = connect_info.get("access_url")
    value: dict[str, Any] = {
        "format": FORMAT, "instance": instance, "console_type": console_type,
        "compute_host": compute_host, "host": connect_info.get("host"),
        "port": connect_info.get("port"),
        "internal_access_path": connect_info.get("internal_access_path"),
        "access_url": None if url is None else url.split(token),
        "token_sha256": _sha256(token),
    }
    if sealer is None:
        value["token"] = token
    else:
        value["sealed"] = sealer.seal(token)
    return value


def open_console(value: Any, opener: Opener | None) -> dict:
    """nova's ``connect_info`` from a ledger value; SealError if this reader cannot open
    it (or it is not a console value)."""
    if type(value) is not dict or value.get("format") != FORMAT:
        raise SealError("not a console record")
    if "token" in value:
        token = value["token"]
    elif opener is None:
        raise SealError("this console token is sealed and this reader has no key")
    else:
        token = opener.open(value.get("sealed"), value.get("token_sha256"))
    pieces = value.get("access_url")
    return {"host": value.get("host"), "port": value.get("port"),
            "internal_access_path": value.get("internal_access_path"), "token": token,
            "access_url": None if pieces is None else token.join(pieces)}
