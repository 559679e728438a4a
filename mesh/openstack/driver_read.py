"""Step 1 for the ``hdpbf`` oslo.messaging driver: the caller's local ledger copy, and its
own recent step-2 answers (paper Figs. 8-9, step 2a; reader.py's "own answers").

Owns: answering a policy call from this host alone, or saying why not (a reason that
the driver counts).  Never raises for anything the ledger file or a peer's value can do:
every such problem is a miss with a reason, and the call goes to step 2.

Rules of this file:
- A ledger answer is a live record (not deleted, not expired at this host's clock)
  recorded by the host the call is addressed to (``target.server``): its value says
  ``compute_host`` is that host, and its committed ``writer`` is a client that speaks
  for that host in mesh.json (``ledger.state.may_serve``; the replicas already refuse
  other writes, this host checks again with its own copy of the rule), and it opens
  with this host's reader key (nova_wire.open_reply).
- Reasons: ``no_ledger`` (file missing: node not started), ``ledger_error`` (unreadable,
  corrupt, not JSON), ``missing``, ``deleted``, ``expired``, ``other_host``,
  ``other_writer`` (written by a client that does not speak for the host, or by no
  client: a record from before writers were kept), ``unreadable`` (sealed for other
  readers, wrong key, tampered), ``bad_value``.
- Own answers follow reader.py exactly: kept with the key's ledger version read before
  the call left (``base``) and an expiry the caller computes as send time + nova's
  ``token_ttl`` (never later than compute's own: compute mints the token after the
  call was sent); served while the version is still ``base``, the token is live and the
  call goes to the same host; dropped for good once the ledger has anything newer.
- Nothing the local copy holds or does raises into nova: any error while reading it
  (corrupt rows, JSON nested deeper than the parser's stack, an I/O error, a bug of
  ours in reading it) is the miss ``ledger_error``, logged with its cause.  A file
  another process holds locked gives up after ``LOCK_TIMEOUT_S`` (50 ms, sqlite3's busy
  timeout) instead of sqlite3's default 5 s: a miss costs nova one step-2 call, never
  seconds on top of it.
- sqlite3 connections belong to their OS thread: one read-only connection per OS
  thread (``threading.get_native_id``), not per ``threading.local``: under eventlet
  (nova's default) every request is a new green thread on one OS thread, and a
  connection per green thread would pile up.  A connection a reused thread id cannot
  use (sqlite3 says wrong thread) is replaced.
"""
from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time

from ledger import LedgerReader
from ledger.format import LedgerError, LedgerNotFound, is_live
from ledger.state import Writers, may_serve

from .nova_wire import open_reply
from .sealing import Opener, SealError

log = logging.getLogger("hdpbf.driver")

STEP1, STEP_OWN, STEP2 = "step1", "step1_own", "step2"
OWN_ANSWERS_MAX = 4096
LOCK_TIMEOUT_S = 0.05   # the most a read waits for a locked ledger file


class _Own:
    __slots__ = ("text", "host", "expires_at", "base")

    def __init__(self, text: str, host: str, expires_at: float, base: int):
        self.text, self.host, self.expires_at, self.base = text, host, expires_at, base


class Step1Reader:
    def __init__(self, ledger_path: str, opener: Opener | None, own_answers: bool = True,
                 own_answers_max: int = OWN_ANSWERS_MAX, writers: Writers | None = None):
        self.ledger_path = ledger_path
        self.writers = writers   # mesh.json's clients -> hosts (None: each its own name)
        self.opener = opener
        self.own_answers = own_answers
        self.own_answers_max = own_answers_max
        self._readers: dict[int, LedgerReader] = {}   # by OS thread id
        self._own: collections.OrderedDict[str, _Own] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- the ledger -----------------------------------------------------------------------
    def _ledger(self) -> LedgerReader:
        tid = threading.get_native_id()
        reader = self._readers.get(tid)
        if reader is None:
            reader = LedgerReader(self.ledger_path, timeout=LOCK_TIMEOUT_S)  # LedgerNotFound: a miss
            with self._lock:
                self._readers[tid] = reader
        return reader

    def _drop_ledger(self) -> None:
        with self._lock:
            reader = self._readers.pop(threading.get_native_id(), None)
        if reader is not None:
            try:
                reader.close()
            except Exception:  # a broken file, or another thread's connection
                pass

    def record(self, key: str) -> tuple[dict | None, str | None]:
        """(raw record or None, None) or (None, reason) when the ledger cannot be read."""
        try:
            try:
                record = self._ledger().get_record(key)
            except sqlite3.ProgrammingError:   # a dead thread's connection, id reused
                self._drop_ledger()
                record = self._ledger().get_record(key)
        except LedgerNotFound:
            return None, "no_ledger"
        except (LedgerError, sqlite3.Error, ValueError, RecursionError, OSError) as exc:
            log.warning("step 1 cannot read %s: %s: %s", self.ledger_path,
                        type(exc).__name__, exc)
            self._drop_ledger()
            return None, "ledger_error"
        except Exception:   # never into nova's call: a miss, with the traceback
            log.exception("step 1: reading %s failed unexpectedly", self.ledger_path)
            self._drop_ledger()
            return None, "ledger_error"
        if record is not None and type(record) is not dict:
            return None, "ledger_error"
        return record, None

    # -- the lookup -----------------------------------------------------------------------
    def lookup(self, key: str, server: str) -> tuple[dict | None, str, int]:
        """(reply, STEP1 | STEP_OWN, base) on a hit, (None, reason, base) on a miss.
        ``base`` is the key's ledger version now (0: none), for ``keep``."""
        record, reason = self.record(key)
        version = record.get("version", 0) if record is not None else 0
        if type(version) is not int:
            version = 0
        now = time.time()
        if self.own_answers:
            with self._lock:
                own = self._own.get(key)
                if own is not None:
                    if version == own.base and own.expires_at > now and own.host == server:
                        self._own.move_to_end(key)
                        return json.loads(own.text), STEP_OWN, version
                    del self._own[key]
        if reason is not None:
            return None, reason, version
        if record is None:
            return None, "missing", version
        if not is_live(record, now):
            return None, "deleted" if record.get("deleted") else "expired", version
        value = record.get("value")
        if type(value) is not dict:
            return None, "bad_value", version
        if value.get("compute_host") != server:
            return None, "other_host", version
        if not may_serve(record, server, self.writers):
            return None, "other_writer", version
        try:
            return open_reply(value, self.opener), STEP1, version
        except SealError as exc:
            log.debug("step 1 cannot open %s: %s", key, exc)
            return None, "unreadable", version
        except Exception:   # a value no replica would have accepted: never into nova
            log.exception("step 1: opening the record of %s failed unexpectedly", key)
            return None, "bad_value", version

    def keep(self, key: str, reply: dict, host: str, expires_at: float, base: int) -> None:
        """Remember a step-2 answer until the ledger has something newer for ``key``."""
        if not self.own_answers or expires_at <= time.time():
            return
        own = _Own(json.dumps(reply), host, expires_at, base)
        with self._lock:
            self._own[key] = own
            self._own.move_to_end(key)
            while len(self._own) > self.own_answers_max:
                self._own.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            readers, self._readers = list(self._readers.values()), {}
            self._own.clear()
        for reader in readers:
            try:
                reader.close()
            except Exception:  # closing from another thread than its own: best effort
                pass
