"""Ed25519 signing and signature checks: the adapter around the pure core.

Owns: who may sign what (replicas sign PrePrepare, Prepare, Commit, Reply and Checkpoint
as ``msg.sender``; clients sign Request as ``msg.client``), the signature format on the
wire, bulk verification for certificates, and the key files on disk.

Client identity on the wire is ``<name>`` or ``<name>/<session>`` (mesh/client.py): the
key is looked up by ``name``, the part before the first "/".  The session is inside the
signed bytes, so it only separates processes of one key holder; it grants nothing.
Castro and Liskov 1999, sec. 2 ("all messages are signed") and sec. 4.2.

Rules of this file:
- The signed bytes are ``messages.signing_bytes(msg)`` and nothing else; the ``sig``
  field carries the bare 64-byte Ed25519 signature as exactly 128 *lowercase* hex chars.
  Any other spelling (upper case, spaces) is refused, so one signed message has one wire
  form (its canonical bytes are a usable replay key).
- A bad message from a peer is not our bug: ``Verifier.check`` raises ``Rejected`` whose
  ``reason`` is one of ``REASONS`` (a small fixed set: it labels a Prometheus counter).
  Handing it something that is not a protocol message *is* our bug and raises TypeError.
- A PrePrepare is valid only if every request in its batch carries a valid client
  signature: the primary cannot make up requests.
- Key files hold the 32-byte seed as 64 hex chars, mode 0600.  They are written through a
  temporary file created with ``os.open(..., 0o600)`` and renamed into place, so a key
  never exists on disk with a wider mode, and a reader refuses a group/world-accessible
  key the way ssh does.
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from pbft_tasks.core import messages
from pbft_tasks.core.messages import (Certificate, Checkpoint, Commit, Message, NewView, PrePrepare,
                                      Prepare, Reply, Request, Status, ViewChange)

__all__ = [
    "REASONS", "Rejected", "Signer", "Verifier", "KeyFileError",
    "generate_key", "write_key_file", "read_key_file", "public_key_hex",
    "verify_key_from_hex", "signer_of", "signature_format", "SlicePool", "THREADED_MIN",
]

SIG_HEX_LEN = 128
_SIG_RE = re.compile(r"[0-9a-f]{128}")
_SEED_RE = re.compile(r"[0-9a-fA-F]{64}")

_NODE_SIGNED = (PrePrepare, Prepare, Commit, Reply, Checkpoint, ViewChange, NewView, Certificate,
                Status)

# Every reason a message can be rejected for.  batch_* mean a request inside a
# PrePrepare's batch failed the check of the same name; nested_* a message inside a
# VIEW-CHANGE, NEW-VIEW or CERTIFICATE did (before these were listed, such a message
# tripped Rejected's own assertion instead of being counted and dropped).
_DIRECT_REASONS = (
    "unknown_node", "unknown_client", "missing_signature", "malformed_signature",
    "bad_signature", "batch_unknown_client", "batch_missing_signature",
    "batch_malformed_signature", "batch_bad_signature",
)
REASONS = _DIRECT_REASONS + tuple("nested_" + r for r in _DIRECT_REASONS)

# check_many verifies inline below this many messages and on a thread pool from it up.
# Measured on the 2-core dev box (PyNaCl 1.6.2, Python 3.11; check_many over signed
# Prepares, warm 2-thread pool, median of max(20, 20000/n) runs):
#   n      idle machine: inline / threads     other core busy: inline / threads
#   4        0.24 ms / 0.20 ms  1.18x          0.24 ms / 0.30 ms  0.80x
#   16       0.96 ms / 0.60 ms  1.61x          0.95 ms / 1.01 ms  0.94x
#   32       1.92 ms / 1.16 ms  1.66x          1.91 ms / 2.01 ms  0.95x
#   64       3.94 ms / 2.14 ms  1.84x          3.94 ms / 4.04 ms  0.98x
#   256      15.8 ms / 8.6 ms   1.83x          16.0 ms / 15.9 ms  1.00x
#   4096     255 ms  / 143 ms   1.78x          311 ms  / 234 ms   1.33x
# (one check ~60 us: Ed25519 verify ~43 us with the GIL released, signing_bytes ~4.5 us
# holding it.)  Idle, the pool wins from tiny lists; with the other core busy, which is
# the normal state of 4 node workers on 2 cores under load, it costs ~60 us a call and
# stops hurting (<5%) at ~32.  Small certificates (2f+1 = 3, 5, 7 commits) stay inline
# on the worker's own thread; view-change and state-transfer bundles use the pool.
THREADED_MIN = 32
_WORKERS = max(1, min(4, os.cpu_count() or 1))


class Rejected(Exception):
    """A message from a peer that fails its signature check (evidence; drop it).

    ``reason`` is a short slug from ``REASONS``, fit for a metrics label; ``str(exc)``
    (``detail``) says which message and why, for the log.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail or reason
        super().__init__(self.detail)


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, malformed or too widely readable."""


# -- keys ---------------------------------------------------------------------------

def generate_key() -> SigningKey:
    return SigningKey.generate()


def public_key_hex(key: SigningKey | VerifyKey) -> str:
    vk = key.verify_key if isinstance(key, SigningKey) else key
    return bytes(vk).hex()


def verify_key_from_hex(text: str) -> VerifyKey:
    """A VerifyKey from 64 lowercase hex chars; ValueError saying why not."""
    if type(text) is not str or not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError("a public key must be 64 lowercase hex chars (32 bytes)")
    return VerifyKey(bytes.fromhex(text))


def atomic_write(path: str | os.PathLike, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temp file created with ``mode`` (so it never
    exists with wider permissions), fsynced, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def write_key_file(path: str | os.PathLike, key: SigningKey) -> None:
    """Write ``key``'s seed as hex to ``path`` with mode 0600 (atomically replacing
    any existing file)."""
    atomic_write(path, (bytes(key).hex() + "\n").encode("ascii"), 0o600)


def read_key_file(path: str | os.PathLike) -> SigningKey:
    """Read a key written by ``write_key_file``; KeyFileError saying what to fix."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {mode:04o}: a private key must not be "
                f"accessible by group or others; run: chmod 600 {path}")
        raw = os.read(fd, 4096)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not _SEED_RE.fullmatch(text):
        raise KeyFileError(
            f"key file {path} must hold exactly 64 hex chars (a 32-byte Ed25519 seed)")
    return SigningKey(bytes.fromhex(text))


# -- signing ------------------------------------------------------------------------

def signer_of(msg: Message) -> int | str:
    if isinstance(msg, Request):
        return msg.client
    if isinstance(msg, _NODE_SIGNED):
        return msg.sender
    raise TypeError(f"not a protocol message: {type(msg).__name__}")


class Signer:
    """Signs messages as one identity: a node id (int) or a client name (str)."""

    def __init__(self, identity: int | str, signing_key: SigningKey) -> None:
        self.identity = identity
        self._key = signing_key
        self.public_key = public_key_hex(signing_key)

    def sign(self, msg: Message) -> Message:
        """``msg`` with ``sig`` set.  Signing in another identity's name is a bug."""
        who = signer_of(msg)
        if who != self.identity or type(who) is not type(self.identity):
            raise ValueError(f"signer {self.identity!r} asked to sign a "
                             f"{type(msg).__name__} from {who!r}")
        sig = self._key.sign(messages.signing_bytes(msg)).signature
        return dataclasses.replace(msg, sig=sig.hex())


# -- verification -------------------------------------------------------------------

def signature_format(sig: object) -> str | None:
    """Why ``sig`` is not a signature as the wire carries it (``missing_signature``,
    ``malformed_signature``), or None: exactly 128 lowercase hex chars.  The one
    format check, for Verifier and for batch_verify.BatchVerifier."""
    if not sig:
        return "missing_signature"
    if type(sig) is not str or len(sig) != SIG_HEX_LEN or not _SIG_RE.fullmatch(sig):
        return "malformed_signature"
    return None


class SlicePool:
    """A thread pool, started on first use, that runs ``fn(lo, hi)`` over ``workers``
    equal slices of ``range(n)`` and joins the lists it returns in slice order.  PyNaCl
    releases the GIL while it verifies, so slices run in parallel.  Verifier and
    batch_verify.BatchVerifier each keep one.  Thread-safe."""

    def __init__(self, name: str, workers: int) -> None:
        self.name = name
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map_slices(self, fn: Callable[[int, int], list], n: int) -> list:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix=self.name)
            pool = self._pool
        step = -(-n // self.workers)
        futures = [pool.submit(fn, lo, min(lo + step, n)) for lo in range(0, n, step)]
        out: list = []
        for fut in futures:
            out.extend(fut.result())
        return out

    def close(self) -> None:
        """Stop the threads, if any were started."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _verify(key: VerifyKey, msg: Message, prefix: str, label: str, data: bytes | None = None) -> None:
    sig = msg.sig
    bad = signature_format(sig)
    if bad == "missing_signature":
        raise Rejected(prefix + bad, f"{label} has no signature")
    if bad:
        raise Rejected(prefix + bad, f"{label}: signature must be {SIG_HEX_LEN} lowercase hex chars")
    try:
        key.verify(messages.signing_bytes(msg) if data is None else data, bytes.fromhex(sig))
    except BadSignatureError:
        raise Rejected(prefix + "bad_signature", f"{label}: signature does not verify") from None


class Verifier:
    """Checks signatures against the mesh's public keys.  Thread-safe."""

    def __init__(self, node_keys: dict[int, VerifyKey],
                 client_keys: dict[str, VerifyKey], membership: Any = None) -> None:
        self._nodes = dict(node_keys)
        self._clients = dict(client_keys)
        # pbft_tasks/membership.py: client keys in force at a seq, from the ledger's
        # configuration history; None: the fixed ``client_keys``
        self.membership = membership
        self._pool = SlicePool("hdpbf-verify", _WORKERS)

    def with_membership(self, membership: Any) -> "Verifier":
        """A verifier of the same node keys whose client keys follow ``membership``
        (one per node); it shares this one's thread pool, so a process still runs one."""
        other = Verifier(self._nodes, self._clients, membership)
        other._pool = self._pool
        return other

    def _client_key(self, name: str, seq: int | None) -> VerifyKey | None:
        if self.membership is None:
            return self._clients.get(name)
        return self.membership.client_key(name, seq)

    def check(self, msg: Message, data: bytes | None = None, seq: int | None = None) -> None:
        """Return if ``msg`` (and for a PrePrepare, each request in its batch) is signed
        by who it claims; raise Rejected otherwise.  ``data``, when the caller already
        has it, is ``signing_bytes(msg)`` (the canonical encoding is not computed twice).
        A request is checked against the client keys in force at ``seq`` (a batch: at its
        pre-prepare's seq; a bare request: at the node's next seq)."""
        name = type(msg).__name__
        if isinstance(msg, Request):
            self._check_request(msg, "", f"Request from client {msg.client!r}", data, seq)
            return
        if not isinstance(msg, _NODE_SIGNED):
            raise TypeError(f"not a protocol message: {name}")
        key = self._nodes.get(msg.sender)
        if key is None or type(msg.sender) is not int:
            raise Rejected("unknown_node", f"{name} from unknown node {msg.sender!r}")
        _verify(key, msg, "", f"{name} from node {msg.sender}", data)
        if isinstance(msg, (ViewChange, NewView, Certificate)):
            self._check_nested(msg)
        if isinstance(msg, PrePrepare):
            if len(msg.batch) >= THREADED_MIN:  # big batches: verify on the thread pool
                failures = self.check_many(msg.batch, seq=msg.seq)
                if failures:
                    i, reason = failures[0]
                    raise Rejected("batch_" + reason,
                                   f"PrePrepare v={msg.view} n={msg.seq} from node {msg.sender}, "
                                   f"batch[{i}] (client {msg.batch[i].client!r})")
                return
            for i, req in enumerate(msg.batch):
                self._check_request(
                    req, "batch_",
                    f"PrePrepare v={msg.view} n={msg.seq} from node {msg.sender}, batch[{i}] "
                    f"(client {req.client!r})", seq=msg.seq)

    def _check_nested(self, msg: ViewChange | NewView) -> None:
        """Every message inside a VIEW-CHANGE, NEW-VIEW or CERTIFICATE is signed by its
        own sender (the checkpoint proof, the prepared certificates, the VIEW-CHANGEs of
        V, the re-proposed pre-prepares of O, the votes a collector forwards); one bad
        signature rejects the whole message."""
        if isinstance(msg, ViewChange):
            inner = list(msg.checkpoints)
            for pp, prepares in msg.prepared:
                inner.append(pp)
                inner.extend(prepares)
        elif isinstance(msg, Certificate):
            inner = list(msg.votes)
        else:
            inner = list(msg.view_changes) + list(msg.preprepares)
        for m in inner:
            try:
                self.check(m)
            except Rejected as exc:
                raise Rejected("nested_" + exc.reason.removeprefix("nested_"),
                               f"{type(msg).__name__} from node {msg.sender}: inside it, {exc}") from None

    def _check_request(self, req: Request, prefix: str, label: str, data: bytes | None = None,
                       seq: int | None = None) -> None:
        key = self._client_key(req.client.partition("/")[0], seq)
        if key is None:
            raise Rejected(prefix + "unknown_client", f"{label}: unknown client")
        _verify(key, req, prefix, label, data)

    def _failures(self, msgs: Sequence[Message], start: int, stop: int,
                  seq: int | None = None) -> list[tuple[int, str]]:
        out = []
        for i in range(start, stop):
            try:
                if seq is None:
                    self.check(msgs[i])
                else:  # requests of one batch: the client keys in force at its seq
                    self.check(msgs[i], seq=seq)
            except Rejected as exc:
                out.append((i, exc.reason))
        return out

    def check_many(self, msgs: Iterable[Message], seq: int | None = None) -> list[tuple[int, str]]:
        """Check every message; return ``[(index, reason), ...]`` for the ones that fail,
        in index order (empty when all verify).  Large lists use a thread pool."""
        msgs = list(msgs)
        n = len(msgs)
        if n < THREADED_MIN or _WORKERS == 1:
            return self._failures(msgs, 0, n, seq)
        return self._pool.map_slices(lambda lo, hi: self._failures(msgs, lo, hi, seq), n)

    def close(self) -> None:
        """Stop the pool threads (if check_many started any)."""
        self._pool.close()

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_hex(public_key: str, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (hex) is ``public_key``'s (hex) Ed25519 signature of
    ``data``; garbage in either is simply "no".  The admin signature check of
    configuration changes (pbft_tasks/core/config.py takes it as a parameter)."""
    try:
        verify_key_from_hex(public_key).verify(data, bytes.fromhex(signature))
        return True
    except Exception:  # BadSignatureError, ValueError of bad hex or length
        return False


def sign_hex(key: SigningKey, data: bytes) -> str:
    """``key``'s Ed25519 signature of ``data`` as hex (what ``verify_hex`` checks)."""
    return key.sign(data).signature.hex()
