"""Batch signature verification: inline, on threads, or spread over a Ray cluster.

Owns: checking many Ed25519 signatures at once for the bulk paths (the ledger audit
``hdpbf verify``, catch-up after state transfer), and the measurement that decides where
the work runs.  The per-message rules (who signs what, ``REASONS``) stay
in ``signing``.

Rules of this file:
- One entry point, ``BatchVerifier.verify(items) -> [(index, reason), ...]`` (failures
  only, in index order).  An item is either a protocol message (``signing`` decides who
  signed it and over which bytes) or a ``Signed(signer, data, sig)`` triple whose
  ``signer`` is a node id (int), a client name (str, ``name/session`` allowed) or a raw
  32-byte public key.  Reasons are ``signing.REASONS``' first five slugs.
- Items are turned into ``(public key, bytes, signature)`` in the calling thread (this
  holds the GIL: ``signing_bytes`` is ~5 us); only the Ed25519 check itself is spread
  out, because that is the part that releases the GIL (threads) or is worth shipping
  (Ray: ~200 bytes an item).
- Where a batch runs: below ``signing.THREADED_MIN`` inline; up to ``inline_max`` on a
  thread pool in this process; above it in Ray tasks of >= ``RAY_CHUNK_MIN`` items.  Ray
  is imported and started only when the first batch crosses ``inline_max``, and shut
  down by ``close()`` only if this object started it (an already running Ray, e.g. a
  test session's, is used as is).
- Ray: ``ray_address=None`` starts a local Ray with ``num_cpus`` and no dashboard, its
  temp dir under ``temp_dir`` (the caller passes one inside its data dir);
  ``ray_address="host:6379"`` (or ``"auto"``) joins a running cluster.

Measured on the 2-core dev VM (Python 3.11, PyNaCl 1.6, Ray 2.60; Commit-sized messages
from 64 keys; best of 3 interleaved rounds, so load changes hit every path alike):

  hdpbf bench verify --signatures 100000          (other core busy: load avg 2.6-2.8)
    serial 17,657/s | threads(2) 17,828/s 1.01x | Ray warm 17,102/s 0.97x
    Ray start-up (ray.init + first tasks) 5.1 s, not in its rate
  python -m pbft_tasks.batch_verify --signatures 20000 --sizes 2000,5000,20000,60000
    Ray / threads at 2k, 5k, 20k, 60k items: 0.93, 1.02, 0.94, 0.97   (same load)
  a first, non-interleaved run with the other core mostly free (load avg 1.4):
    Ray / threads at 2k, 10k, 50k: 0.48, 0.78, 0.96; a warm Ray batch costs a fixed
    ~60-80 ms (2k items: threads 57 ms, Ray 120 ms; 50k: 1441 vs 1498 ms).  Its 100k
    figures (threads 24k/s, Ray 33k/s) are not comparable: the load changed between
    the paths, which is why the rounds are interleaved now.

Conclusion: on one machine Ray NEVER beats the thread pool.  Both get the same cores;
PyNaCl releases the GIL, so threads already use all of them (~1.8-1.9x on 2 idle
cores, ~1.0x when the other core is busy, as above; docs/benchmarks/verify.md), and Ray
adds 2-5 s to start, ~700 MB, pickling, the object store and a fixed ~60-80 ms a batch.
So:
- local (no ``ray_address``): threads are the default; ``LOCAL_INLINE_MAX`` = 1,000,000
  only keeps a way to push a huge batch (catch-up of a whole ledger) out of this
  process's memory and GIL-held Python overhead; on 2 cores do not expect it to be faster.
- a cluster (``ray_address``): ``CLUSTER_INLINE_MAX`` = 5,000, derived from the measured
  fixed cost a ~= 70 ms: Ray wins from n = a / (1/T - 1/R) items, with T ~35k/s (2 idle
  threads here) and R the cluster's rate at ~17.5k/s a core (as measured): ~4,900 for 4
  cluster cores, ~3,300 for 8; a cluster of 2 cores never wins.  This is
  derived, not measured on a cluster (there is none here): re-measure with
  ``hdpbf bench verify --ray-address ADDR`` and pass ``inline_max``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from pbft_tasks.core import messages
from pbft_tasks.core.messages import Commit
from pbft_tasks.signing import THREADED_MIN, SlicePool, signature_format, signer_of

__all__ = ["BatchVerifier", "Signed", "LOCAL_INLINE_MAX", "CLUSTER_INLINE_MAX",
           "RAY_CHUNK_MIN", "measure"]

log = logging.getLogger(__name__)

# See the module docstring for the measurement behind these.
LOCAL_INLINE_MAX = 1_000_000
CLUSTER_INLINE_MAX = 5_000
RAY_CHUNK_MIN = 2_000

_THREADS = max(1, os.cpu_count() or 1)
# Unix socket paths are limited to 107 bytes; Ray puts its sockets ~60 bytes deep
# inside its temp dir (session_<date>_<pid>/sockets/plasma_store).
_RAY_TEMP_MAX = 40


@dataclass(frozen=True, slots=True)
class Signed:
    """One signature to check: ``signer`` (node id, client name or 32-byte public key)
    signed ``data``; ``sig`` is the 64-byte signature or its 128 lowercase hex chars."""
    signer: Union[int, str, bytes]
    data: bytes
    sig: Union[bytes, str]


Item = Union[Signed, messages.Message]


# -- the work itself (runs in this process, in threads, or in a Ray worker) --------------

def _verify_slice(triples: Sequence[tuple[bytes, bytes, bytes]], offset: int = 0
                  ) -> list[tuple[int, str]]:
    """Indices (plus ``offset``) of the triples whose signature does not verify."""
    keys: dict[bytes, VerifyKey] = {}
    bad = []
    for i, (pub, data, sig) in enumerate(triples):
        key = keys.get(pub)
        if key is None:
            key = keys[pub] = VerifyKey(pub)
        try:
            key.verify(data, sig)
        except BadSignatureError:
            bad.append((offset + i, "bad_signature"))
    return bad


# -- the verifier -------------------------------------------------------------------------

class BatchVerifier:
    """Verifies batches of signatures against the mesh's keys (see module docstring).

    ``node_keys``/``client_keys``: as ``signing.Verifier`` takes them (VerifyKey or raw
    32 bytes).  ``inline_max``: largest batch checked in this process; default
    ``CLUSTER_INLINE_MAX`` with a ``ray_address``, else ``LOCAL_INLINE_MAX``.
    """

    def __init__(self, node_keys: dict[int, Any], client_keys: dict[str, Any],
                 ray_address: Optional[str] = None, num_cpus: Optional[int] = None,
                 temp_dir: Optional[str | os.PathLike] = None,
                 inline_max: Optional[int] = None) -> None:
        self._nodes = {k: bytes(v) for k, v in node_keys.items()}
        self._clients = {k: bytes(v) for k, v in client_keys.items()}
        self.ray_address = ray_address
        self.num_cpus = num_cpus
        self.temp_dir = os.fspath(temp_dir) if temp_dir is not None else None
        if inline_max is None:
            inline_max = CLUSTER_INLINE_MAX if ray_address else LOCAL_INLINE_MAX
        self.inline_max = inline_max
        self.ray_start_s: Optional[float] = None   # seconds ray.init took, if we ran it
        self.last_path = ""                         # "inline" | "threads" | "ray"
        self._started_ray = False
        self._remote = None
        self._ray_lock = threading.Lock()
        self._pool = SlicePool("hdpbf-batch-verify", _THREADS)

    # -- normalising items ----------------------------------------------------------
    def _key_of(self, signer: Any) -> tuple[Optional[bytes], str]:
        if type(signer) is int:
            key = self._nodes.get(signer)
            return key, "unknown_node"
        if type(signer) is str:
            return self._clients.get(signer.partition("/")[0]), "unknown_client"
        if isinstance(signer, (bytes, bytearray)) and len(signer) == 32:
            return bytes(signer), ""
        return None, "unknown_node"

    def prepare(self, items: Iterable[Item]) -> tuple[list[tuple[int, bytes, bytes, bytes]],
                                                       list[tuple[int, str]]]:
        """Split ``items`` into checkable ``(index, key, data, sig)`` and the failures
        decided without any crypto (unknown signer, missing or malformed signature)."""
        work: list[tuple[int, bytes, bytes, bytes]] = []
        early: list[tuple[int, str]] = []
        for i, item in enumerate(items):
            if isinstance(item, Signed):
                signer, data, sig = item.signer, bytes(item.data), item.sig
            else:   # a protocol message: TypeError if it is not one (our bug)
                signer, sig = signer_of(item), item.sig
                data = None
            key, unknown = self._key_of(signer)
            if key is None:
                early.append((i, unknown))
                continue
            if isinstance(sig, str):
                bad = signature_format(sig)  # signing.py's rule, the same for both
                if bad:
                    early.append((i, bad))
                    continue
                sig = bytes.fromhex(sig)
            elif not sig:
                early.append((i, "missing_signature"))
                continue
            elif len(sig) != 64:
                early.append((i, "malformed_signature"))
                continue
            if data is None:
                data = messages.signing_bytes(item)
            work.append((i, key, data, bytes(sig)))
        return work, early

    # -- verifying --------------------------------------------------------------------
    def verify(self, items: Iterable[Item]) -> list[tuple[int, str]]:
        """Check every item; ``[(index, reason), ...]`` for those that fail, in order."""
        work, failures = self.prepare(items)
        triples = [(k, d, s) for _, k, d, s in work]
        bad = self.verify_triples(triples)
        failures.extend((work[j][0], reason) for j, reason in bad)
        failures.sort()
        return failures

    def verify_triples(self, triples: Sequence[tuple[bytes, bytes, bytes]],
                       path: Optional[str] = None) -> list[tuple[int, str]]:
        """Check ``(public key, data, 64-byte sig)`` triples; ``path`` forces "inline",
        "threads" or "ray" (the benchmark uses it), else the size decides."""
        n = len(triples)
        if path is None:
            path = "inline" if n < THREADED_MIN else "threads" if n <= self.inline_max else "ray"
        self.last_path = path
        if path == "inline" or n == 0:
            return _verify_slice(triples)
        if path == "threads":
            return self._on_threads(triples)
        if path == "ray":
            return self._on_ray(triples)
        raise ValueError(f"unknown path {path!r}")

    def _on_threads(self, triples: Sequence[tuple[bytes, bytes, bytes]]) -> list[tuple[int, str]]:
        return self._pool.map_slices(lambda lo, hi: _verify_slice(triples[lo:hi], lo),
                                     len(triples))

    def _on_ray(self, triples: Sequence[tuple[bytes, bytes, bytes]]) -> list[tuple[int, str]]:
        ray = self.start_ray()
        n = len(triples)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # ~4 chunks a CPU evens out stragglers; RAY_CHUNK_MIN keeps the ~1.6 ms task
        # overhead under 2% of a chunk's work.
        chunks = max(1, min(cpus * 4, n // RAY_CHUNK_MIN))
        step = -(-n // chunks)
        refs = [self._remote.remote(list(triples[lo:lo + step]), lo)
                for lo in range(0, n, step)]
        out: list[tuple[int, str]] = []
        for part in ray.get(refs):
            out.extend(part)
        return out

    # -- Ray lifetime -------------------------------------------------------------------
    def start_ray(self):
        """Import Ray and connect (starting a local Ray if needed); returns the module."""
        with self._ray_lock:
            import ray
            if self._remote is not None:
                return ray
            if not ray.is_initialized():
                t0 = time.perf_counter()
                if self.ray_address:
                    ray.init(address=self.ray_address, logging_level=logging.WARNING,
                             log_to_driver=False)
                else:
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False,
                             _temp_dir=_ray_temp_dir(self.temp_dir),
                             logging_level=logging.WARNING, log_to_driver=False)
                self.ray_start_s = time.perf_counter() - t0
                self._started_ray = True
            self._remote = ray.remote(num_cpus=1)(_verify_slice)
            return ray

    def close(self) -> None:
        """Stop the thread pool, and Ray if this verifier started it."""
        self._pool.close()
        if self._started_ray:
            import ray
            ray.shutdown()
            self._started_ray = False
        self._remote = None

    def __enter__(self) -> "BatchVerifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ray_temp_dir(wanted: Optional[str]) -> Optional[str]:
    """``wanted`` made absolute and created, or None (Ray's default, /tmp/ray) if it is
    too deep for Ray's Unix sockets; then a short symlink would do, so say so."""
    if wanted is None:
        return None
    path = Path(wanted).resolve()
    if len(str(path)) > _RAY_TEMP_MAX:
        log.warning("Ray temp dir %s is too long for Ray's sockets; using Ray's default", path)
        return None
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# -- measurement ------------------------------------------------------------------------

def make_signed(n: int, keys: int = 64) -> tuple[dict[int, VerifyKey], list[Signed]]:
    """``n`` Commit-sized messages signed by ``keys`` node keys (a certificate-like mix)."""
    signing = [SigningKey.generate() for _ in range(keys)]
    items = []
    for i in range(n):
        node = i % keys
        data = messages.signing_bytes(Commit(view=0, seq=i + 1, digest=f"{i:064x}", sender=node))
        items.append(Signed(node, data, signing[node].sign(data).signature))
    return {i: k.verify_key for i, k in enumerate(signing)}, items


def _best_rates(runs: dict[str, Any], n: int, repeat: int) -> dict[str, float]:
    """Items/s of each run, best of ``repeat`` rounds; the runs take turns within a round
    so that a change in the machine's background load hits all of them alike."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            bad = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            assert not bad, bad[:3]
    return {name: n / t for name, t in best.items()}


def measure(n: int, ray_address: Optional[str] = None, num_cpus: Optional[int] = None,
            temp_dir: Optional[str] = None, repeat: int = 3,
            sizes: Sequence[int] = ()) -> dict[str, Any]:
    """Serial vs threads vs Ray on ``n`` signatures in one run (best of ``repeat``
    interleaved rounds); ``sizes`` adds a threads-vs-Ray crossover sweep.  Ray start-up
    is timed apart: ``ray.init`` plus one warm-up batch that starts its worker processes."""
    node_keys, items = make_signed(max([n, *sizes]))
    bv = BatchVerifier(node_keys, {}, ray_address=ray_address, num_cpus=num_cpus,
                       temp_dir=temp_dir)
    try:
        def triples_of(k: int) -> list[tuple[bytes, bytes, bytes]]:
            return [(key, d, s) for _, key, d, s in bv.prepare(items[:k])[0]]

        triples = triples_of(n)
        out: dict[str, Any] = {"signatures": n, "cpus": os.cpu_count(), "threads": _THREADS,
                               "load_avg_before": os.getloadavg()[0]}
        t0 = time.perf_counter()
        ray = bv.start_ray()
        bv.verify_triples(triples[: RAY_CHUNK_MIN * 8], "ray")   # start its workers
        out["ray_start_s"] = time.perf_counter() - t0
        out["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        out["ray_address"] = ray_address or "local"
        rates = _best_rates({"serial": lambda: _verify_slice(triples),
                             "threads": lambda: bv.verify_triples(triples, "threads"),
                             "ray": lambda: bv.verify_triples(triples, "ray")}, n, repeat)
        for name, rate in rates.items():
            out[f"{name}_per_s"] = rate
        out["threads_vs_serial"] = out["threads_per_s"] / out["serial_per_s"]
        out["ray_vs_serial"] = out["ray_per_s"] / out["serial_per_s"]
        out["ray_vs_threads"] = out["ray_per_s"] / out["threads_per_s"]
        sweep = []
        for size in sizes:
            sub = triples_of(size)
            r = _best_rates({"threads": lambda: bv.verify_triples(sub, "threads"),
                             "ray": lambda: bv.verify_triples(sub, "ray")}, size, repeat)
            sweep.append({"size": size, "threads_ms": round(size / r["threads"] * 1e3, 2),
                          "ray_ms": round(size / r["ray"] * 1e3, 2),
                          "ray_vs_threads": round(r["ray"] / r["threads"], 3)})
        if sweep:
            out["sweep"] = sweep
        out["load_avg_after"] = os.getloadavg()[0]
        for k, v in list(out.items()):
            if isinstance(v, float):
                out[k] = round(v, 3 if v < 100 else 1)
        return out
    finally:
        bv.close()


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description="serial vs threads vs Ray signature checks")
    p.add_argument("--signatures", type=int, default=100_000)
    p.add_argument("--sizes", default="", help="comma-separated crossover sweep sizes")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--num-cpus", type=int, default=None)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    print(json.dumps(measure(a.signatures, a.ray_address, a.num_cpus, repeat=a.repeat,
                             sizes=sizes), indent=2))


if __name__ == "__main__":
    main()
