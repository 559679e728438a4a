"""Prometheus metrics: what a node worker and an API reader export, and where.

Owns: the metric names (a contract: ``hdpbf status``, the Grafana dashboards in
``dashboards/`` and their test depend on them), the endpoint of each process, and
reading an endpoint back (``scrape``).

Where:
- Node <id>'s worker serves ``http://127.0.0.1:(metrics_port_base + id)/metrics``
  (``metrics_port_base`` in mesh.json, 9400 by default).  ``HDPBF_METRICS_PORT`` is
  this process's exact port instead (compose sets it per service); ``0`` turns the
  endpoint off.  ``HDPBF_METRICS_ADDR`` is the address to bind (default 127.0.0.1;
  compose binds 0.0.0.0 inside each container's own network).
- An API reader (``hdpbf api``) exports on ``HDPBF_METRICS_PORT``, 9500 by default
  (``reader_metrics_port``; its starter calls ``export_reader``).
- Each process has its own ``CollectorRegistry`` (nothing from prometheus_client's
  global one, which Flower fills with its own metrics in its own process), served by
  ``start_http_server`` from a daemon thread.  A port already taken is logged, not
  fatal: a replica without metrics is better than no replica.

Metrics of a node (label ``node``):
- gauges, read from the runtime at scrape time: ``hdpbf_ledger_height``,
  ``hdpbf_ledger_head_age_seconds`` (now minus when the head block was appended on this
  node; since the worker started if it has appended none since), ``hdpbf_view``,
  ``hdpbf_stable_checkpoint`` (the low watermark h);
- counters: ``hdpbf_blocks_committed_total``, ``hdpbf_requests_committed_total``
  (executed requests; duplicates a block skips are not counted),
  ``hdpbf_rejected_messages_total{reason}`` (``NodeRuntime.rejected``: signature and
  parse failures, the core's evidence, and what Celery's consumer drops before a task
  runs), ``hdpbf_view_changes_total`` (increments of the view this worker has seen),
  ``hdpbf_state_transfers_total`` (fetch requests this node sent to a peer because it
  was behind: one per ``FetchState`` action);
- membership (pbft_tasks/membership.py), read from the ledger's configuration history:
  ``hdpbf_config_version`` (the configuration in force at the node's next seq) and
  ``hdpbf_config_changes_total{outcome}`` (``accepted``, or the reason a change was
  refused, core/config.py ``REFUSALS``): replicated state, so equal on every node that
  executed the same blocks;
- ``hdpbf_queue_messages``: messages waiting in the node's queue (ready, not yet
  delivered to the worker), asked of RabbitMQ at scrape time (a passive queue declare on
  the worker's one ``brokers.QueueDepth`` connection, shared with its busy ticks; no
  sample when the broker does not answer).  The
  backlog a node has not reached yet: the protocol tasks' lean strategy (strategy.py)
  sends no ``task-received``/``task-started`` events, so Flower's prefetch metrics
  never cover them;
- ``hdpbf_commit_latency_seconds``: histogram, 1 ms to 10 s, of the time at this node
  from proposing a seq (primary) or accepting its pre-prepare (backup: the step that
  broadcasts its prepare) to executing it.  Measured here, in the adapter, from the
  actions each step returns: the core has no clock.

Metrics of an API reader (label ``node``: the node whose ledger it reads):
``hdpbf_step1_answers_total`` (from the ledger), ``hdpbf_step1_own_answers_total``
(from the reader's own step-2 answer while consensus is committing it; never counted as
a ledger answer), ``hdpbf_step2_calls_total``, ``hdpbf_step2_failures_total`` (summed
over every ``ConsoleReader`` given to ``export_reader`` in the process).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from pbft_tasks.core.actions import Broadcast, Execute, FetchState
from pbft_tasks.core.messages import PrePrepare, Prepare

log = logging.getLogger("hdpbf.metrics")

ENV_PORT = "HDPBF_METRICS_PORT"
ENV_ADDR = "HDPBF_METRICS_ADDR"
DEFAULT_ADDR = "127.0.0.1"
DEFAULT_READER_PORT = 9500

# 1 ms .. 10 s: a low-load commit is ~20 ms on a shared 2-core box, a backlog seconds.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

# Reasons exported as 0 from the start, so a dashboard's rate() has a series before the
# first bad message.  Others (the core's evidence slugs) appear when first counted.
WIRE_REASONS = ("malformed", "oversize", "undecodable", "unknown_task", "unknown_message")

NODE_METRICS = (
    "hdpbf_ledger_height", "hdpbf_ledger_head_age_seconds", "hdpbf_view",
    "hdpbf_stable_checkpoint", "hdpbf_blocks_committed_total",
    "hdpbf_requests_committed_total", "hdpbf_commit_latency_seconds",
    "hdpbf_rejected_messages_total", "hdpbf_view_changes_total",
    "hdpbf_state_transfers_total", "hdpbf_config_version", "hdpbf_config_changes_total",
)
# A worker's only: read from the broker (an in-memory runtime has no queue).
BROKER_METRICS = ("hdpbf_queue_messages",)
READER_METRICS = ("hdpbf_step1_answers_total", "hdpbf_step1_own_answers_total",
                  "hdpbf_step2_calls_total", "hdpbf_step2_failures_total")

# Commit-latency start times are kept per seq until it executes; a seq that never does
# here (discarded by a view change) is dropped once this many newer ones are waiting.
_MAX_PENDING = 4096


def _copy(counter: Mapping[str, int]) -> dict[str, int]:
    """A copy of a dict another thread may be adding keys to (no lock needed)."""
    for _ in range(10):
        try:
            return dict(counter)
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}


# -- a node -------------------------------------------------------------------------------

class NodeMetrics:
    """The metrics of one ``NodeRuntime``, in a registry of their own.

    Attaches to the runtime's ``on_execute`` and ``on_actions`` hooks; both run under
    the runtime's lock, so the bookkeeping here needs no lock of its own."""

    def __init__(self, runtime: Any, registry: CollectorRegistry | None = None):
        self.runtime = runtime
        self.node = str(runtime.id)
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.blocks = Counter("hdpbf_blocks_committed", "Blocks appended to this node's ledger",
                              ["node"], registry=r).labels(self.node)
        self.requests = Counter("hdpbf_requests_committed",
                                "Requests executed at this node (skipped duplicates excluded)",
                                ["node"], registry=r).labels(self.node)
        self.latency = Histogram("hdpbf_commit_latency_seconds",
                                 "At this node: proposing a seq or accepting its pre-prepare "
                                 "-> executing it", ["node"], buckets=LATENCY_BUCKETS,
                                 registry=r).labels(self.node)
        self.view_changes = Counter("hdpbf_view_changes", "Views this node has moved to",
                                    ["node"], registry=r).labels(self.node)
        self.state_transfers = Counter("hdpbf_state_transfers",
                                       "State transfers this node has completed",
                                       ["node"], registry=r).labels(self.node)
        self.head_time = time.time()
        self._pending: dict[int, float] = {}
        self._view = runtime.replica.view
        r.register(_RuntimeCollector(self))
        runtime.on_execute.append(self._on_execute)
        runtime.on_actions.append(self._on_actions)

    def count_state_transfer(self) -> None:
        self.state_transfers.inc()

    # -- hooks (under the runtime's lock) --------------------------------------------------
    def _on_execute(self, block: dict, results: list) -> None:
        self.head_time = time.time()
        self.blocks.inc()
        done = sum(1 for r in results if r is not None)
        if done:
            self.requests.inc(done)

    def _on_actions(self, actions: list) -> None:
        try:
            self._observe(actions)
        except Exception:  # a metrics bug must not stop a replica
            log.exception("node %s: metrics hook failed", self.node)

    def _observe(self, actions: list) -> None:
        now = time.monotonic()
        pending = self._pending
        for a in actions:
            if isinstance(a, FetchState):
                self.count_state_transfer()  # one fetch request sent to a peer
            elif isinstance(a, Execute):
                t0 = pending.pop(a.seq, None)
                if t0 is not None:
                    self.latency.observe(now - t0)
            elif isinstance(a, Broadcast) and isinstance(a.msg, (PrePrepare, Prepare)):
                # setdefault: a retransmission is not a new start
                if a.msg.seq > self.runtime.replica.last_exec:
                    pending.setdefault(a.msg.seq, now)
        if len(pending) > _MAX_PENDING:
            for seq in sorted(pending)[:len(pending) - _MAX_PENDING]:
                del pending[seq]
        last = self.runtime.replica.last_exec
        for seq in [s for s in pending if s <= last]:  # executed without us seeing it
            del pending[seq]
        view = self.runtime.replica.view
        if view > self._view:
            self.view_changes.inc(view - self._view)
        self._view = view


class _RuntimeCollector(Collector):
    """Gauges and the rejected counter, read from the runtime when scraped."""

    def __init__(self, metrics: NodeMetrics):
        self.m = metrics

    def collect(self) -> Iterable[Any]:
        rt, node = self.m.runtime, self.m.node
        labels = ["node"]
        for name, doc, value in (
                ("hdpbf_ledger_height", "Blocks in this node's ledger", rt.ledger.height),
                ("hdpbf_ledger_head_age_seconds", "Seconds since this node appended its head "
                 "block (since the worker started if none since)",
                 max(0.0, time.time() - self.m.head_time)),
                ("hdpbf_view", "This node's current view", rt.replica.view),
                ("hdpbf_stable_checkpoint", "This node's last stable checkpoint (low "
                 "watermark h)", rt.replica.window.h)):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([node], value)
            yield g
        rejected = CounterMetricFamily("hdpbf_rejected_messages",
                                       "Messages this node dropped, by reason",
                                       labels=["node", "reason"])
        counts = {reason: 0 for reason in _known_reasons()}
        counts.update(_copy(rt.rejected))
        for reason, n in sorted(counts.items()):
            rejected.add_metric([node, reason], n)
        yield rejected
        yield from _config_metrics(getattr(rt, "membership", None), node)


def _config_metrics(membership: Any, node: str) -> Iterable[Any]:
    history = membership.history if membership is not None else None
    version = GaugeMetricFamily("hdpbf_config_version", "Version of the configuration in "
                                "force at this node's next seq", labels=["node"])
    changes = CounterMetricFamily("hdpbf_config_changes", "Configuration changes this "
                                  "node's ledger executed, by outcome (accepted or the "
                                  "refusal reason)", labels=["node", "outcome"])
    if history is not None:
        from pbft_tasks.core.config import REFUSALS
        version.add_metric([node], membership.version)
        counts = {"accepted": history.latest.version, **{r: 0 for r in REFUSALS}}
        counts.update(history.refused)
        for outcome, n in sorted(counts.items()):
            changes.add_metric([node, outcome], n)
    yield version
    yield changes


class QueueDepthCollector(Collector):
    """``hdpbf_queue_messages``: the node queue's ready messages, from the broker
    (``brokers.QueueDepth``, the same one the worker's busy ticks read); no sample when
    the broker does not answer."""

    def __init__(self, node: str, depth: Any):
        self.node, self.depth = node, depth

    def collect(self) -> Iterable[Any]:
        g = GaugeMetricFamily("hdpbf_queue_messages", "Messages waiting in this node's "
                              "queue (ready, not yet delivered to its worker)", labels=["node"])
        n = self.depth.ready()
        if n is not None:
            g.add_metric([self.node], n)
        yield g


def _known_reasons() -> tuple[str, ...]:
    from pbft_tasks.guard import GUARD_REASONS
    from pbft_tasks.node import RUNTIME_REASONS
    from pbft_tasks.signing import REASONS
    return tuple(dict.fromkeys(WIRE_REASONS + GUARD_REASONS + RUNTIME_REASONS + tuple(REASONS)))


def node_metrics_port(cfg: Any, node_id: int, environ: Mapping[str, str] | None = None) -> int | None:
    """The port node ``node_id``'s worker serves on, or None when turned off."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PORT, "").strip()
    if raw:
        try:
            port = int(raw)
        except ValueError:
            raise ValueError(f"{ENV_PORT}={raw!r} is not a port number (0 turns metrics off)") from None
    else:
        base = getattr(cfg, "metrics_port_base", 9400)
        port = base + node_id if base else 0
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port {port} is outside 0..65535")
    return port or None


def serve(registry: CollectorRegistry, port: int, addr: str | None = None) -> bool:
    """Serve ``registry`` on addr:port from a daemon thread; False (logged) if the port
    cannot be bound."""
    addr = addr or os.environ.get(ENV_ADDR) or DEFAULT_ADDR
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning("metrics endpoint %s:%s not started: %s", addr, port, exc)
        return False
    log.warning("metrics on http://%s:%s/metrics", addr, port)
    return True


def start_node_exporter(runtime: Any, cfg: Any, depth: Any,
                        environ: Mapping[str, str] | None = None) -> NodeMetrics:
    """Attach metrics to a node worker's runtime and serve them (unless turned off);
    ``depth`` (brokers.QueueDepth) reads the node queue's backlog."""
    metrics = NodeMetrics(runtime)
    port = node_metrics_port(cfg, runtime.id, environ)
    if port is not None:
        metrics.registry.register(QueueDepthCollector(metrics.node, depth))
        serve(metrics.registry, port)
    return metrics


# -- an API reader --------------------------------------------------------------------------

class _ReaderCollector(Collector):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readers: list[tuple[str, Any]] = []

    def collect(self) -> Iterable[Any]:
        with self.lock:
            readers = list(self.readers)
        nodes = sorted({n for n, _ in readers}, key=lambda n: (len(n), n))
        for name, attr, doc in (
                ("hdpbf_step1_answers", "step1_hits", "get_vnc_console answered from the "
                 "local ledger (step 1)"),
                ("hdpbf_step1_own_answers", "step1_own_answers", "get_vnc_console answered "
                 "from this API node's own step-2 answer before the ledger had it (not a "
                 "ledger hit)"),
                ("hdpbf_step2_calls", "step2_calls", "get_vnc_console that went to compute "
                 "over RabbitMQ (step 2)"),
                ("hdpbf_step2_failures", "step2_failures", "step-2 calls that failed "
                 "(ConsoleUnavailable)")):
            fam = CounterMetricFamily(name, doc, labels=["node"])
            for node in nodes:
                fam.add_metric([node], sum(getattr(r, attr, 0) for n, r in readers if n == node))
            yield fam


_reader_lock = threading.Lock()
_reader_registry: CollectorRegistry | None = None
_reader_collector: _ReaderCollector | None = None
_reader_ports: set[int] = set()


def reader_registry() -> CollectorRegistry:
    """This process's registry of reader metrics (created on first use)."""
    global _reader_registry, _reader_collector
    with _reader_lock:
        if _reader_registry is None:
            _reader_collector = _ReaderCollector()
            _reader_registry = CollectorRegistry()
            _reader_registry.register(_reader_collector)
        return _reader_registry


def reader_metrics_port(environ: Mapping[str, str] | None = None) -> int | None:
    """The port an API reader process serves its metrics on: $HDPBF_METRICS_PORT, else
    9500; None when it is 0."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_PORT, "").strip()
    try:
        port = int(raw) if raw else DEFAULT_READER_PORT
    except ValueError:
        raise ValueError(f"{ENV_PORT}={raw!r} is not a port number (0 turns metrics off)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port {port} is outside 0..65535")
    return port or None


def export_reader(reader: Any, node_id: int, port: int | None = None,
                  addr: str | None = None) -> bool:
    """Count ``reader``'s (a ``ConsoleReader``) step-1 answers, step-2 calls and
    failures under ``node=node_id``, and serve this process's reader metrics on ``port``
    (once per port; None: only count, e.g. when the caller serves ``reader_registry()``
    itself).  Call it once per reader; the counts are read at scrape time, so a reader
    keeps counting after it is handed over.  Returns False if the port could not be
    bound."""
    registry = reader_registry()
    assert _reader_collector is not None
    with _reader_collector.lock:
        _reader_collector.readers.append((str(node_id), reader))
    if port is None or port == 0:
        return True
    with _reader_lock:
        if port in _reader_ports:
            return True
        _reader_ports.add(port)
    ok = serve(registry, port, addr)
    if not ok:
        with _reader_lock:
            _reader_ports.discard(port)
    return ok


# -- reading an endpoint back -----------------------------------------------------------------

def scrape(url: str, timeout: float = 2.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value), ...]}`` from a Prometheus text endpoint
    (``http://127.0.0.1:9400/metrics``).  Sample names are as exposed: a counter's
    ``..._total``, a histogram's ``..._bucket``/``_sum``/``_count``."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", errors="replace")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def node_url(cfg: Any, node_id: int, host: str = "127.0.0.1") -> str | None:
    """Where node ``node_id``'s metrics are by mesh.json (None when turned off there)."""
    base = getattr(cfg, "metrics_port_base", 9400)
    return f"http://{host}:{base + node_id}/metrics" if base else None


__all__ = ["BROKER_METRICS", "NodeMetrics", "QueueDepthCollector", "start_node_exporter", "node_metrics_port", "serve", "export_reader",
           "reader_registry", "reader_metrics_port", "scrape", "node_url", "NODE_METRICS", "READER_METRICS",
           "LATENCY_BUCKETS", "ENV_PORT", "ENV_ADDR"]
