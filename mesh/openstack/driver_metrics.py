"""Prometheus metrics of the ``hdpbf`` oslo.messaging driver, served from nova's process.

Owns: the driver's metric names (a contract, like ``pbft_tasks/metrics.py``'s: the
nova.conf lines of docs/nova.md and the tests name them), turning the drivers' ``stats`` and
their recorders' counts into metric families at scrape time, and the one endpoint per
process and port.

Rules of this file:
- ``[hdpbf] metrics_port`` (0: off, the default) turns it on; ``[hdpbf] metrics_host``
  is the address to bind (127.0.0.1 by default).  A port that cannot be bound is logged,
  not fatal: nova without metrics is better than no nova.
- Nothing on the read path: a custom ``Collector`` reads each driver's ``stats``
  (``collections.Counter``, already kept under the driver's lock) when Prometheus
  scrapes.  One ``CollectorRegistry`` per process, never prometheus_client's global one.
- nova builds several transports in one process (RPC, notifications; the functional
  fixtures run every service on one): every driver built with a metrics port is summed
  into the same series; the recorder they share (driver_record.py: one per mesh and
  client) is counted once, labelled by its mesh client.  Drivers stay counted after
  ``cleanup``, so a counter never goes backwards while the process lives.
- Reasons known in advance are exported as 0 from the start, so ``rate()`` has a series
  before the first miss.

Metrics (all counters unless said):
- ``hdpbf_driver_reads_total{step}``: policy calls by who answered: ``1`` the local
  ledger, ``1o`` this process's own step-2 answer not yet in the ledger (never counted
  as a ledger answer), ``2`` RPC to compute through the inner driver;
- ``hdpbf_driver_step2_failures_total``: step-2 calls that raised (nova's own error or
  timeout, raised to nova as it came);
- ``hdpbf_driver_misses_total{reason}``: why a policy call was not answered locally
  (driver_read.py's reasons and ``no_uuid``, ``no_console_type``, ``no_server``);
- ``hdpbf_driver_records_total``: compute's successful replies queued for consensus
  (5a); ``hdpbf_driver_not_recorded_total{reason}``: policy replies not queued
  (``failure``, ``no_token``, ``deleted_meanwhile``, ``no_key``);
- ``hdpbf_driver_invalidations_total{event}``: deletes of an instance's console keys,
  by what triggered them (the method or notification);
- ``hdpbf_driver_updates_total{client,op,outcome}``: the recorder's updates (``client``:
  its name in mesh.json; ``op`` put or delete), ``outcome`` ``queued``, ``committed``, ``resent`` (an attempt
  failed and the same signed request went again: the recorder never gives up),
  ``expired`` (a put whose token expired first), ``superseded`` (a queued put replaced
  by a newer one); ``hdpbf_driver_updates_pending{client}`` (gauge): queued or in
  flight; ``hdpbf_driver_recorder_stopped{client}`` (gauge): 1 once the recorder
  stopped on a bug (nova's replies still go out; nothing more is recorded).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pbft_tasks.metrics import serve

from .nova_wire import DELETE_EVENTS, INVALIDATING_METHODS, LEGACY_DELETE_EVENTS

log = logging.getLogger("hdpbf.driver")

STEPS = (("1", "step1"), ("1o", "step1_own"), ("2", "step2"))
MISS_REASONS = ("no_uuid", "no_console_type", "no_server", "no_ledger", "ledger_error",
                "missing", "deleted", "expired", "other_host", "unreadable", "bad_value")
NOT_RECORDED_REASONS = ("failure", "no_token", "deleted_meanwhile", "no_key")
INVALIDATING_EVENTS = INVALIDATING_METHODS + DELETE_EVENTS + LEGACY_DELETE_EVENTS
OPS = ("put", "delete")
OUTCOMES = ("queued", "committed", "resent", "expired", "superseded")
DRIVER_METRICS = ("hdpbf_driver_reads_total", "hdpbf_driver_step2_failures_total",
                  "hdpbf_driver_misses_total", "hdpbf_driver_records_total",
                  "hdpbf_driver_not_recorded_total", "hdpbf_driver_invalidations_total",
                  "hdpbf_driver_updates_total", "hdpbf_driver_updates_pending",
                  "hdpbf_driver_recorder_stopped")


def _by_prefix(stats: dict[str, int], prefix: str, known: tuple[str, ...] = ()) -> dict[str, int]:
    out = dict.fromkeys(known, 0)
    for k, n in stats.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = out.get(k[len(prefix):], 0) + n
    return out


class _DriverCollector(Collector):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.drivers: list[Any] = []

    def _stats(self) -> tuple[dict[str, int], list[Any]]:
        with self.lock:
            drivers = list(self.drivers)
        total: dict[str, int] = {}
        recorders: dict[int, Any] = {}
        for drv in drivers:
            with drv._stats_lock:
                stats = dict(drv.stats)
            for k, n in stats.items():
                total[k] = total.get(k, 0) + n
            if drv.recorder is not None:
                recorders[id(drv.recorder)] = drv.recorder
        return total, list(recorders.values())

    def collect(self) -> Iterable[Any]:
        stats, recorders = self._stats()
        reads = CounterMetricFamily("hdpbf_driver_reads", "Policy calls (nova's console "
                                    "methods) by who answered: 1 the local ledger, 1o this "
                                    "process's own step-2 answer, 2 RPC to compute",
                                    labels=["step"])
        for step, key in STEPS:
            reads.add_metric([step], stats.get(key, 0))
        yield reads
        yield CounterMetricFamily("hdpbf_driver_step2_failures", "Step-2 calls that raised "
                                  "(nova's own error or timeout)",
                                  value=stats.get("step2_failed", 0))
        for name, doc, prefix, label, known in (
                ("hdpbf_driver_misses", "Policy calls not answered locally, by reason",
                 "miss.", "reason", MISS_REASONS),
                ("hdpbf_driver_not_recorded", "Policy replies compute did not queue for "
                 "the ledger, by reason", "not_recorded.", "reason", NOT_RECORDED_REASONS),
                ("hdpbf_driver_invalidations", "Deletes of an instance's console keys, by "
                 "the method or notification that triggered them", "invalidated.", "event",
                 INVALIDATING_EVENTS)):
            fam = CounterMetricFamily(name, doc, labels=[label])
            for value, n in sorted(_by_prefix(stats, prefix, known).items()):
                fam.add_metric([value], n)
            yield fam
        yield CounterMetricFamily("hdpbf_driver_records", "Compute's successful policy "
                                  "replies queued for consensus (step 5a)",
                                  value=stats.get("recorded", 0))
        updates = CounterMetricFamily("hdpbf_driver_updates", "The recorder's ledger "
                                      "updates, by operation and outcome",
                                      labels=["client", "op", "outcome"])
        pending = GaugeMetricFamily("hdpbf_driver_updates_pending", "Updates queued or in "
                                    "flight in the recorder", labels=["client"])
        stopped = GaugeMetricFamily("hdpbf_driver_recorder_stopped", "1 once the recorder "
                                    "stopped on a bug (nothing more is recorded)",
                                    labels=["client"])
        for rec in sorted(recorders, key=lambda r: str(r.client.name)):
            client = str(rec.client.name)
            with rec._cond:
                counts = dict(rec.by_kind)
            for op in OPS:
                for outcome in OUTCOMES:
                    updates.add_metric([client, op, outcome], counts.get(f"{outcome}.{op}", 0))
            pending.add_metric([client], rec.pending)
            stopped.add_metric([client], 1 if rec.failure is not None else 0)
        yield updates
        yield pending
        yield stopped


# Built on import: this module is imported only by a driver with a metrics port.
_collector = _DriverCollector()
REGISTRY = CollectorRegistry()
REGISTRY.register(_collector)
_lock = threading.Lock()
_ports: set[tuple[str, int]] = set()


def export(driver: Any, port: int, host: str = "127.0.0.1") -> bool:
    """Count ``driver`` in this process's driver metrics and serve them on host:port
    (once per address: the process's other drivers share it).  False if the port could
    not be bound (logged)."""
    with _collector.lock:
        if driver not in _collector.drivers:
            _collector.drivers.append(driver)
    with _lock:
        if (host, port) in _ports:
            return True
        _ports.add((host, port))
    if serve(REGISTRY, port, host):
        return True
    with _lock:
        _ports.discard((host, port))
    return False
