"""The Celery app: settings, the worker's node identity, and its tick timer.

Owns: how a ``celery -A pbft_tasks worker -Q node.<id>`` process becomes node <id>:
it reads the mesh configuration (``HDPBF_CONFIG``, ``HDPBF_NODE_ID``, optional
``HDPBF_KEY_FILE``), refuses to start on a missing or mismatched key or on a queue that
is not its own, opens its ledger, builds its ``NodeRuntime`` and ticks it from a timer
thread.  The ledger lives in mesh.json's directory for the node (``node_data_dir``)
unless ``HDPBF_DATA_DIR`` names another: a second process for one node id (a twin,
tests/integration/test_twins_mesh.py) must not share the first one's ledger.

Settings and why:
- JSON only (``task_serializer``/``accept_content``): pickle from a broker is remote
  code execution.
- Protocol tasks ignore results: storing them in Redis cuts throughput ~40 %.
- ``worker_prefetch_multiplier = 64`` with the solo pool: a solo worker with prefetch 1
  stalls at 5-10 tasks/s under backlog; >= 16 runs steadily at 2-2.8k/s.
- ``task_acks_late``: a message is acknowledged only after its effects are in the
  ledger, so a ``kill -9`` redelivers what was in flight; the core drops duplicates.
- Unparseable bodies and unknown task names are counted as rejected, then dropped.
- Prometheus metrics (pbft_tasks/metrics.py) on 127.0.0.1:(metrics_port_base + node id),
  from a daemon thread started at worker init.
- ``queue_type`` "quorum" (a RabbitMQ cluster): node queues are quorum queues and
  publishes are confirmed (pbft_tasks/brokers.py); a ``;``-separated broker URL list
  fails over node to node.
- ``control_queue_exclusive = False``: see celery_settings (a cut link must not kill a
  worker on reconnect).
- ``HDPBF_BROKER_URL`` overrides mesh.json's ``broker_url`` for this process only (the
  fault scenarios point one worker at a TCP proxy they can cut, tests/faults/proxy.py).
"""
from __future__ import annotations

import logging
import os
import sys
import threading

from celery import Celery, signals
from celery.worker.consumer.consumer import Consumer

from .brokers import celery_settings

log = logging.getLogger("hdpbf.worker")

def _initial_settings() -> dict:
    path = os.environ.get("HDPBF_CONFIG")
    if path and os.path.exists(path):
        from pbft_tasks.topology import MeshConfig
        cfg = MeshConfig.load(path)
        return celery_settings(os.environ.get("HDPBF_BROKER_URL") or cfg.broker_url,
                               cfg.result_backend, cfg.queue_type)
    return celery_settings(os.environ.get("HDPBF_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
                           os.environ.get("HDPBF_BACKEND", "redis://127.0.0.1:6379/0"))


app = Celery("pbft_tasks", include=["pbft_tasks.tasks"])
app.conf.update(_initial_settings())


# Set while the worker's consumer holds a broker connection.  The node's timers run only
# then: a worker cut off from RabbitMQ hears from nobody, and a request timer expiring
# on its own silence would move it alone to a higher view, which PBFT gives it no way
# back from (tests/faults/cut_off_backup.toml; pausing, SIGSTOP, stops the
# ticks as well).  Its queue keeps what it missed; it works through that on reconnecting.
_broker_up = threading.Event()


class NodeConsumer(Consumer):
    """Celery's consumer, counting what it drops before our tasks ever see it, and
    telling the tick thread whether the broker is reachable (``_broker_up``)."""

    class Blueprint(Consumer.Blueprint):
        # Without native delayed delivery: no ETA tasks here, and its set-up on every
        # reconnect retries each dead cluster node for seconds (pbft_tasks/brokers.py).
        default_steps = [s for s in Consumer.Blueprint.default_steps
                         if not s.endswith(":DelayedDelivery")]

    def connect(self):
        conn = super().connect()
        if not _broker_up.is_set():
            log.warning("broker connection up: node timers running")
        _broker_up.set()
        return conn

    def on_connection_error_after_connected(self, exc):
        _broker_up.clear()
        log.warning("broker connection lost: node timers paused until it is back")
        super().on_connection_error_after_connected(exc)

    def create_task_handler(self, *args, **kwargs):
        """Celery's task handler behind the gate of pbft_tasks/guard.py: every message
        off the node queue is checked before Celery's machinery sees it."""
        from .guard import Gate, guard_channel
        handler = super().create_task_handler(*args, **kwargs)
        guard_channel(self.task_consumer.channel)
        tasks = {name for name in self.strategies if name.startswith("pbft.")}
        return Gate(tasks, count_rejected, _poison_journal()).wrap(handler)

    def on_decode_error(self, message, exc):
        count_rejected("undecodable")
        super().on_decode_error(message, exc)

    def on_unknown_task(self, body, message, exc):
        count_rejected("unknown_task")
        super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body, message):
        count_rejected("unknown_message")
        super().on_unknown_message(body, message)


# -- the node this worker process is ------------------------------------------------
_runtime = None
_ticker: threading.Thread | None = None
_stop = threading.Event()


def runtime():
    if _runtime is None:
        raise RuntimeError("this worker has no node runtime (started without HDPBF_NODE_ID?)")
    return _runtime


def count_rejected(reason: str) -> None:
    if _runtime is not None:
        _runtime.rejected[reason] += 1
    log.warning("rejected a message before decoding: %s", reason)


_journal = None


def _poison_journal():
    """The node's poison journal (guard.py), beside its ledger; in memory for a plain
    worker."""
    global _journal
    if _journal is None:
        from .guard import PoisonJournal
        path = None
        if _runtime is not None and getattr(_runtime.ledger, "path", None):
            path = os.path.join(os.path.dirname(_runtime.ledger.path), "poison.json")
        _journal = PoisonJournal(path)
    return _journal


def build_runtime(cfg, node_id: int):
    """This worker's node (wiring.py builds it), with its key file ($HDPBF_KEY_FILE),
    data directory ($HDPBF_DATA_DIR) and fault injection ($HDPBF_BYZANTINE) from the
    environment; raises ConfigError with a clear message."""
    from kombu import Connection  # noqa: F401  (the transport needs kombu; fail early)

    from .byzantine import from_environment
    from .topology import env_key_file
    from .transport import CeleryTransport
    from .wiring import build_node

    byzantine = from_environment(node_id, cfg.n)  # HDPBF_BYZANTINE: fault tests only
    rt = build_node(cfg, node_id, CeleryTransport(app, [n.id for n in cfg.nodes], cfg.queue_type),
                    key_file=env_key_file(), data_dir=os.environ.get("HDPBF_DATA_DIR"),
                    byzantine=byzantine)
    if byzantine is not None:
        log.warning("node %s is running BYZANTINE behaviours: %s (HDPBF_BYZANTINE; for fault "
                    "tests only)", node_id, ", ".join(sorted(byzantine.behaviours)))
    fail_at = os.environ.get(ENV_FAIL_AT_SEQ)
    if fail_at:
        rt.on_execute.append(_injected_bug(fail_at))
        log.warning("node %s will raise an injected bug on executing block %s (%s; for fault "
                    "tests only)", node_id, fail_at, ENV_FAIL_AT_SEQ)
    return rt


# Fault tests only: our own bug, made to order (tests/integration/test_fail_hard.py).
ENV_FAIL_AT_SEQ = "HDPBF_FAIL_AT_SEQ"


def _injected_bug(value: str):
    from .topology import ConfigError
    try:
        seq = int(value)
    except ValueError:
        raise ConfigError(f"{ENV_FAIL_AT_SEQ} must be a block number, got {value!r}") from None

    def hook(block: dict, _results) -> None:
        if block["seq"] == seq:
            raise RuntimeError(f"injected bug at block {seq} ({ENV_FAIL_AT_SEQ})")
    return hook


@signals.worker_init.connect
def _on_worker_init(sender=None, **_):
    global _runtime
    node = os.environ.get("HDPBF_NODE_ID")
    path = os.environ.get("HDPBF_CONFIG")
    if node is None and path is None:
        return  # a plain worker (e.g. for status or tests of Celery itself)
    from .topology import ConfigError, from_env
    try:
        if node is None or path is None:
            raise ConfigError("set both HDPBF_CONFIG (path to mesh.json) and HDPBF_NODE_ID")
        cfg, node_id = from_env()
        if node_id is None:
            raise ConfigError("HDPBF_NODE_ID is empty: set it to this worker's node id")
        queues = set(sender.app.amqp.queues.consume_from or {}) if sender is not None else set()
        expected = f"node.{node_id}"
        if queues and queues != {expected}:
            raise ConfigError(f"node {node_id} must consume only its own queue {expected} "
                              f"(-Q {expected}), not {sorted(queues)}")
        _runtime = build_runtime(cfg, node_id)
        from pbft_tasks.metrics import start_node_exporter

        from .brokers import QueueDepth
        depth = QueueDepth(cfg.broker_url, cfg.node(node_id).queue)  # busy ticks and metrics
        try:
            start_node_exporter(_runtime, cfg, depth)  # pbft_tasks/metrics.py: port, names, why
        except ValueError as exc:  # a bad HDPBF_METRICS_PORT
            raise ConfigError(str(exc)) from None
    except ConfigError as exc:
        print(f"hdpbf worker: refusing to start: {exc}", file=sys.stderr, flush=True)
        os._exit(78)  # EX_CONFIG; a plain raise here would leave Celery half-started
    log.warning("node %s ready: height %s head %s", node_id, _runtime.ledger.height, _runtime.ledger.head[:12])
    # Celery logs two INFO lines per task; at thousands of protocol messages a second
    # that is most of a worker's time.  Failures are still logged (at ERROR).
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.setswitchinterval(0.0005)  # quick GIL hand-offs to sqlitedict's and the tick thread
    tick_s = cfg.tick_ms / 1000.0

    def tick_loop():
        from .failhard import fail_hard
        while not _stop.wait(tick_s):
            try:
                _tick_once()
            except Exception:  # our own bug (NodeFailed): the runtime stopped; so does the process
                fail_hard("tick")

    global _ticker, _prober
    _ticker = threading.Thread(target=tick_loop, name="hdpbf-tick", daemon=True)
    _prober = threading.Thread(target=_probe_loop, name="hdpbf-backlog", daemon=True,
                               args=(depth,))


# Busy ticks (core/stimuli.py Tick.busy): every PROBE_S the backlog thread asks RabbitMQ
# whether messages are waiting in this node's queue beyond what the worker has prefetched
# (ready > 0).  While they are, the replica has not seen what may already be there for
# it, and its view-change timers run at a quarter of their speed.  Its own thread, so a
# slow or unreachable broker never delays a tick.
PROBE_S = 0.1
_busy = threading.Event()
_prober: threading.Thread | None = None


def _probe_loop(depth) -> None:
    while not _stop.wait(PROBE_S):
        ready = depth.ready() if _broker_up.is_set() else None
        if ready:  # None (not known) or 0: not busy
            _busy.set()
        else:
            _busy.clear()
            if ready is None:
                _stop.wait(1.0)  # the broker is not answering: ask again less often
    depth.close()


def _tick_once() -> None:
    """One tick of the node's timers, skipped while the broker is unreachable."""
    if _broker_up.is_set():
        _runtime.tick(busy=_busy.is_set())


@signals.worker_ready.connect
def _on_worker_ready(**_):
    if _runtime is not None and _ticker is not None:
        from .node import NodeFailed
        from .failhard import fail_hard
        try:
            _runtime.start()
        except NodeFailed:  # Celery would log a signal handler's exception and go on
            fail_hard("resume")
        _ticker.start()
        if _prober is not None:
            _prober.start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_):
    _stop.set()
    if _runtime is not None:
        with _runtime.lock:
            _runtime.ledger.close()
