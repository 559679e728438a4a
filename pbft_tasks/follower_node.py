"""A follower on the broker: the ``hdpbf follow`` process.

Owns the follower's adapter half (the checks are pbft_tasks/follower.py, the validators'
pushes pbft_tasks/follower_push.py, the wire docs/PROTOCOL.md sec. 5.9):

- ``FollowerNode``: the ``hdpbf follow`` process.  One kombu connection: it consumes
  its durable queue ``follower.<name>`` (bound to f+1 validators' pushes, so at least one
  is honest), and on the same connection sends ``pbft.fetch`` task messages to any
  validator for what it misses.

Rules of this file:
- Pull whenever behind, probe when idle.  A gap (a certified block seen beyond the
  head) that the pushes do not fill within ``GAP_WAIT_S`` is fetched; with no new block
  for ``PROBE_S`` the follower asks anyway (a restart, or a queue purged or lost while
  it was away, leaves no gap it could see).  One fetch is outstanding at a time; no
  answer within ``FETCH_TIMEOUT_S``, or an answer that installs nothing while behind,
  moves on to the next validator, so no single validator can stall it.  A validator
  does not answer a fetch for blocks it does not have (node.py), so an unanswered idle
  probe is normal and not counted.
- Every message on the queue passes the follower's gate first (follower_gate.py: size,
  content type and encoding, no compression, shape, poison), before anything decodes
  or inflates it; a refused one is acked, counted in ``rejected`` and dropped.
- A message is acked only after what it carried is in the ledger file (or refused):
  a ``kill -9`` redelivers, and redelivered blocks are duplicates.
- The broker connection has heartbeats: a cut link is noticed within seconds and the
  follower reconnects with backoff; its durable queue kept the pushes meanwhile.
- Lag (the issue's "executed at the primary -> installed at the follower") is measured
  from the earliest ``executed_at`` of the pushes for that seq (the validators a
  follower listens to execute within a hop of each other) to the moment its ledger
  transaction returned.  Blocks that arrive only by fetch have no push, hence no lag
  sample; ``lag_blocks`` (highest certified seq seen minus height) covers them.
- Status: ``status.json`` in the follower's data dir, rewritten atomically each
  second; and over the broker, for ``hdpbf status`` on any host and a follower with a
  data dir of its own: a ``Status`` message in its queue (``reply_to`` set) is answered
  with the same dict, at most ``STATUS_ANSWERS_PER_S`` a second (anyone on the broker
  can ask; what it learns is what the blocks exchange tells anyone anyway).  A request
  without ``reply_to`` is malformed.  Prometheus metrics when given a port; on exit
  every lag sample goes to ``lags.json`` as ``[installed at, lag s]`` pairs (the
  benchmark reads it).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

from .follower import MAX_AHEAD, Follower
from .follower_gate import FollowerGate
from .follower_gate import raw_reason as follower_raw_reason
from .guard import PoisonJournal, guard_channel
from .follower_push import sources_for
from .ratelimit import TokenBuckets

log = logging.getLogger("hdpbf.follower")

GAP_WAIT_S = 0.1
PROBE_S = 2.0
FETCH_TIMEOUT_S = 1.0
STATUS_EVERY_S = 1.0
STATUS_ANSWERS_PER_S = 5
HEARTBEAT_S = 4
PREFETCH = 32           # pushes held unacked at a time (one block each)
MAX_LAG_SAMPLES = 200_000
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)




class FollowerNode:
    """One follower: its ledger, its checks, its queue and its fetches."""

    def __init__(self, cfg: Any, name: str, data_dir: Optional[str] = None,
                 ray_address: Optional[str] = None, sources: Optional[int] = None,
                 broker_url: Optional[str] = None) -> None:
        from celery import Celery

        from ledger.store import LedgerStore
        from .topology import console_writers, node_keys

        from .batch_verify import BatchVerifier
        from .celery_app import celery_settings

        self.cfg = cfg
        self.name = cfg.follower_info(name).name  # mesh.json's, or one the ledger lists
        self.data_dir = Path(data_dir) if data_dir else cfg.follower_data_dir(name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker_url = broker_url or os.environ.get("HDPBF_BROKER_URL") or cfg.broker_url
        # A follower never signs; losing its last commits to a power cut costs a re-fetch.
        self.ledger = LedgerStore(self.data_dir / "ledger.sqlite", durability="normal",
                                  writers=console_writers(cfg))
        self.ledger.bind_genesis(cfg.config_rules())  # it executes config ops as validators do
        self.verifier = BatchVerifier(node_keys(cfg), {}, ray_address=ray_address,
                                      temp_dir=self.data_dir / "ray")
        self.follower = Follower(cfg.n, self.ledger, self.verifier,
                                 cfg.replica_config().client_window)
        self.follower.on_install.append(self._on_install)
        self.sources = sources_for(cfg.n, cfg.f, self.name, sources)
        self.app = Celery(f"hdpbf-follower-{self.name}", set_as_current=False)
        self.app.conf.update(celery_settings(self.broker_url, cfg.result_backend))
        self.queue_name = cfg.follower_info(name).queue
        self.stop = threading.Event()
        # Re-entrant: a publish may read frames and deliver a message to on_message
        # inside it (py-amqp's _basic_publish drains events), i.e. in this same thread.
        self.lock = threading.RLock()
        self._fetch_next: Optional[int] = None   # a fetch decided inside a callback
        # lag bookkeeping
        self.first_seen: dict[int, float] = {}
        self.lags: deque[tuple[float, float]] = deque(maxlen=MAX_LAG_SAMPLES)  # (installed at, lag s)
        # fetch bookkeeping
        self.next_validator = self.sources[0]
        self.outstanding: Optional[tuple[int, float]] = None   # (validator, sent at)
        self.last_progress = time.monotonic()
        self.last_fetch = 0.0
        self.fetches = 0
        self.fetch_timeouts = 0
        self.answers = 0
        self.pushes = 0
        self.reconnects = 0
        self.connected = False
        self._status_at = 0.0
        self._status_asks: deque[tuple[str, Any]] = deque()   # (reply_to, correlation_id)
        self._status_limit = TokenBuckets(STATUS_ANSWERS_PER_S, STATUS_ANSWERS_PER_S)
        self._producer = None
        self._metrics = None
        self.gate = FollowerGate(self._count_refused,
                                 PoisonJournal(str(self.data_dir / "poison.json")))

    def _count_refused(self, reason: str) -> None:
        with self.lock:
            self.follower.rejected[reason] += 1

    # -- messages ---------------------------------------------------------------------
    def on_message(self, body: Any, message: Any) -> None:
        try:
            if isinstance(body, dict) and body.get("type") == "Status":
                self.ask_status(message.properties.get("reply_to"),
                                message.properties.get("correlation_id"))
            else:
                self.handle(body)
        finally:
            message.ack()

    def ask_status(self, reply_to: Any, correlation_id: Any) -> None:
        """Someone (``hdpbf status``) asks for this follower's status: answered from the
        loop (``_flush_status``), never inside a callback; over the rate, dropped."""
        with self.lock:
            if type(reply_to) is not str or not 0 < len(reply_to) <= 255:
                self.follower.rejected["malformed"] += 1
                return
            if not self._status_limit.allow():
                self.follower.rejected["status_rate"] += 1
                return
            cid = correlation_id if type(correlation_id) is str and len(correlation_id) <= 255 else None
            self._status_asks.append((reply_to, cid))

    def _flush_status(self) -> None:
        with self.lock:
            asks, self._status_asks = list(self._status_asks), deque()
            st = self.status() if asks else None
        for reply_to, cid in asks:
            self._producer.publish(st, exchange="", routing_key=reply_to, serializer="json",
                                   correlation_id=cid, expiration=10)

    def handle(self, body: Any) -> None:
        """One untrusted message from the queue: a pushed Block or a fetched Blocks."""
        if not isinstance(body, dict) or body.get("type") not in ("Block", "Blocks"):
            self.follower.rejected["malformed"] += 1
            log.warning("follower %s: dropped a message that is neither Block nor Blocks", self.name)
            return
        with self.lock:
            if body["type"] == "Block":
                self.pushes += 1
                block, at = body.get("block"), body.get("executed_at")
                seq = block.get("seq") if isinstance(block, dict) else None
                if (type(seq) is int and self.follower.height < seq <= self.follower.height + MAX_AHEAD
                        and type(at) in (int, float)):   # bounded: a liar cannot grow it
                    prev = self.first_seen.get(seq)
                    self.first_seen[seq] = at if prev is None else min(prev, at)
                self.follower.offer([block], source=body.get("sender"))
                return
            self.answers += 1
            blocks = body.get("blocks")
            sender = body.get("sender")
            if type(blocks) is not list:
                self.follower.rejected["malformed"] += 1
                return
            out = self.follower.offer(blocks, source=sender)
            if self.outstanding is not None and self.outstanding[0] == sender:
                self.outstanding = None
                if self.follower.gap is not None and not out.installed:
                    self.next_validator = self._after(sender)   # no help from it: next one
                elif self.follower.gap is not None:
                    self._fetch_next = sender                   # it helps: keep going

    def _on_install(self, block: dict) -> None:
        now = time.time()
        self.last_progress = time.monotonic()
        at = self.first_seen.pop(block["seq"], None)
        if at is not None:
            lag = max(0.0, now - at)
            self.lags.append((now, lag))
            if self._metrics is not None:
                self._metrics.observe(lag)

    # -- pulling ----------------------------------------------------------------------
    def _after(self, v: int) -> int:
        return (v + 1) % self.cfg.n

    def tick(self) -> None:
        """Timers: a fetch that timed out, a gap, an idle probe.  The fetch itself is
        published outside the lock and outside any message callback (``_flush_fetch``)."""
        now = time.monotonic()
        with self.lock:
            for seq in [s for s in self.first_seen if s <= self.follower.height]:
                del self.first_seen[seq]
            if self._fetch_next is not None:
                return
            if self.outstanding is not None:
                v, sent = self.outstanding
                if now - sent < FETCH_TIMEOUT_S:
                    return
                self.outstanding = None
                self.next_validator = self._after(v)
                if self.follower.gap is not None:   # an idle probe may go unanswered:
                    self.fetch_timeouts += 1        # a validator sends nothing when it
                    log.warning("follower %s: node %s did not answer a fetch within %gs; "
                                "asking another", self.name, v, FETCH_TIMEOUT_S)  # has nothing newer
            behind = self.follower.gap is not None and now - self.last_progress > GAP_WAIT_S
            idle = now - max(self.last_progress, self.last_fetch) > PROBE_S
            if behind or idle:
                v = self.next_validator
                self.next_validator = self._after(v) if idle and not behind else v
                self._fetch_next = v

    def _flush_fetch(self) -> None:
        """Send the fetch decided by ``tick`` or a callback, if any (no lock held)."""
        from .node import FETCH_MAX
        from .transport import task_message
        with self.lock:
            v, self._fetch_next = self._fetch_next, None
            if v is None:
                return
            lo = self.follower.height + 1
            self.outstanding = (v, time.monotonic())   # before: the answer may come inside publish
            self.last_fetch = time.monotonic()
            self.fetches += 1
        wire = {"type": "Fetch", "from_seq": lo, "to_seq": lo + FETCH_MAX - 1, "requester": self.name}
        msg = task_message(self.app, "pbft.fetch", wire)
        self._producer.publish(msg.body, exchange="", routing_key=self.cfg.node(v).queue,
                               serializer="json", headers=msg.headers, **msg.properties)

    # -- the loop ---------------------------------------------------------------------
    def declare(self, channel: Any) -> Any:
        from kombu import Exchange, Queue

        from .transport import BLOCKS_EXCHANGE
        ex = Exchange(BLOCKS_EXCHANGE, "direct", durable=True, auto_delete=False)
        ex.declare(channel=channel)
        queue = Queue(self.queue_name, exchange=ex, routing_key=f"from.{self.sources[0]}",
                      durable=True, auto_delete=False, channel=channel)
        queue.declare()
        for v in self.sources:
            queue.bind_to(ex, routing_key=f"from.{v}")
        return queue

    def run(self) -> None:
        """Consume and fetch until ``stop`` is set; reconnect on a lost broker."""
        from kombu import Connection, Consumer, Producer
        backoff = 0.2
        while not self.stop.is_set():
            try:
                with Connection(self.broker_url, heartbeat=HEARTBEAT_S,
                                connect_timeout=5) as conn:
                    conn.ensure_connection(max_retries=1)
                    channel = conn.channel()
                    guard_channel(channel, check=follower_raw_reason)  # before kombu inflates
                    queue = self.declare(channel)
                    self._producer = Producer(conn.channel(), auto_declare=False)
                    with Consumer(channel, [queue], on_message=self.gate.wrap(self.on_message),
                                  accept=["json"], prefetch_count=PREFETCH):
                        self.connected = True
                        backoff = 0.2
                        log.warning("follower %s consuming %s (pushes from nodes %s), height %s",
                                    self.name, self.queue_name, self.sources, self.follower.height)
                        while not self.stop.is_set():
                            try:
                                conn.drain_events(timeout=0.05)
                            except socket.timeout:
                                conn.heartbeat_check()
                            self.tick()
                            self._flush_fetch()
                            self._flush_status()
                            self.write_status()
            except Exception as exc:  # kombu/amqp raise many types for a lost connection
                from kombu.exceptions import OperationalError
                if not isinstance(exc, (OSError, ConnectionError, OperationalError)) and \
                        type(exc).__module__.split(".")[0] not in ("amqp", "kombu"):
                    raise                                  # our own bug: fail loudly
                self.connected = False
                self.reconnects += 1
                self.outstanding = None
                self._fetch_next = None
                self._status_asks.clear()
                log.warning("follower %s: broker connection lost (%s); reconnecting in %.1fs",
                            self.name, exc, backoff)
                self.write_status(force=True)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.write_status(force=True)

    # -- observation --------------------------------------------------------------------
    def status(self) -> dict:
        f = self.follower
        lags = sorted(lag for _, lag in list(self.lags)[-1000:])
        pct = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 2)
               if lags else None)
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "data_dir": os.fspath(self.data_dir), "height": f.height, "head": f.head,
                "seen_top": f.seen_top, "lag_blocks": max(0, f.seen_top - f.height),
                "installed": f.installed, "duplicates": f.duplicates,
                "rejected": dict(f.rejected), "pushes": self.pushes, "fetches": self.fetches,
                "fetch_answers": self.answers, "fetch_timeouts": self.fetch_timeouts,
                "reconnects": self.reconnects, "connected": self.connected,
                "sources": self.sources, "lag_ms_p50": pct(0.5), "lag_ms_p99": pct(0.99),
                "time": time.time()}

    def write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_EVERY_S:
            return
        self._status_at = now
        with self.lock:
            st = self.status()
        _atomic_json(self.data_dir / "status.json", st)

    def write_lags(self) -> None:
        with self.lock:
            lags = list(self.lags)
        _atomic_json(self.data_dir / "lags.json", {"name": self.name, "samples": lags})

    def start_metrics(self, port: int, addr: str = "127.0.0.1") -> None:
        self._metrics = FollowerMetrics(self)
        self._metrics.serve(port, addr)

    def close(self) -> None:
        self.write_lags()
        self.verifier.close()
        self.ledger.close()


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def read_status(data_dir: str | os.PathLike) -> Optional[dict]:
    """A follower's last ``status.json``, or None if it has written none (yet)."""
    try:
        return json.loads((Path(data_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return None


class FollowerMetrics:
    """Prometheus metrics of one follower (label ``follower``): ``hdpbf_follower_height``,
    ``hdpbf_follower_lag_blocks``, ``hdpbf_follower_blocks_installed_total``,
    ``hdpbf_follower_rejected_blocks_total{reason}`` and the histogram
    ``hdpbf_follower_lag_seconds`` (executed at a validator -> installed here)."""

    def __init__(self, node: FollowerNode) -> None:
        from prometheus_client import CollectorRegistry, Histogram
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.node = node
        self.registry = CollectorRegistry()
        name = node.name

        class _Collector:
            def collect(self_inner):
                f = node.follower
                for metric, value in (("hdpbf_follower_height", f.height),
                                      ("hdpbf_follower_lag_blocks", max(0, f.seen_top - f.height))):
                    g = GaugeMetricFamily(metric, metric.replace("_", " "), labels=["follower"])
                    g.add_metric([name], value)
                    yield g
                c = CounterMetricFamily("hdpbf_follower_blocks_installed",
                                        "blocks installed by this follower", labels=["follower"])
                c.add_metric([name], f.installed)
                yield c
                r = CounterMetricFamily("hdpbf_follower_rejected_blocks",
                                        "blocks refused, by reason", labels=["follower", "reason"])
                for reason, count in dict(f.rejected).items():
                    r.add_metric([name, reason], count)
                yield r

        self.registry.register(_Collector())
        self.lag = Histogram("hdpbf_follower_lag_seconds", "executed at a validator -> installed here",
                             ["follower"], buckets=LAG_BUCKETS, registry=self.registry).labels(name)

    def observe(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def serve(self, port: int, addr: str) -> None:
        from prometheus_client import start_http_server
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.warning("follower %s: no metrics endpoint on %s:%s: %s", self.node.name, addr, port, exc)


__all__ = ["FollowerNode", "FollowerMetrics", "read_status"]
