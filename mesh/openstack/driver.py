"""The ``hdpbf`` oslo.messaging driver: unmodified nova gets two-step reads.

``transport_url = hdpbf+rabbit://user:pass@host:5672/`` in nova.conf loads this driver
(stevedore group ``oslo.messaging.drivers``, name before the ``+``), which wraps the
driver named after the ``+`` (``rabbit``; ``fake`` in tests).  A driver sees both ends of
every RPC: the caller's ``send`` (paper steps 2a-2c) and, on the server, each incoming
message and its ``reply`` (steps 5a/5b).  It also runs after nova-api's own policy and
ownership checks, so step 1 never hands a console to someone nova would refuse.

Rules of this file:
- Everything outside the policy passes through to the inner driver unchanged: same
  target, context, body, reply, exceptions; notifications too.  Messages outside the
  policy are not even wrapped on the server side.
- Policy (``[hdpbf] methods``/``topics``): a ``call`` on topic ``compute`` of nova's
  console methods.  Caller side: key from topic, method, the instance uuid inside the
  NovaObject primitive and the console type; step 1 (driver_read.py) or step 2 through
  the inner driver.  Whatever goes wrong with step 1 (missing or corrupt ledger, a value
  sealed for other readers, a primitive without a uuid) is a step-2 call counted in
  ``stats`` under ``miss.<reason>``; nova's call never fails because of us: even an
  exception step 1 did not foresee is logged and counted as ``miss.ledger_error``.
- Server side (nova-compute): after nova's method returned, the reply goes back first
  (5b), then the recorder queues it (5a: driver_record.py; never waits).  A failure is
  never recorded.  Expiry: the time the request arrived + nova's ``[consoleauth]
  token_ttl`` (read from nova's own config; compute mints the token after that, so the
  entry never outlives the token).
- Invalidation where nova deletes console tokens: after ``terminate_instance`` returns
  (the delete path, ``_complete_deletion``), after ``post_live_migration_at_destination``
  (the end of a live migration), and on the versioned notifications
  ``instance.delete.end`` / ``instance.live_migration_post.end`` (and their legacy
  ``compute.instance.*`` twins) sent through this transport.  Every console key of the
  instance is deleted, in the recorder's per-key order.  A console call received before
  a delete of its instance was queued is not recorded when it returns after it: a late
  record never revives a deleted entry.
- Configuration in nova's own config file, group ``[hdpbf]``.  With no ``mesh_config``
  the driver is a pure pass-through and logs that once.  Broken settings raise
  ``ConfigError`` when the transport is built (nova does not start).
- Counters: ``stats`` (a ``collections.Counter``, under ``_stats_lock``); with ``[hdpbf]
  metrics_port`` they are served for Prometheus (driver_metrics.py, read at scrape time).
- The base class is oslo.messaging's private ``_drivers.base.BaseDriver``; the versions
  tested are pinned in pyproject.toml and tests/nova_driver/test_driver_contract.py fails
  loudly if what we rely on changes.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from oslo_config import cfg
from oslo_messaging._drivers import base

from . import nova_wire
from .driver_read import STEP1, STEP_OWN, Step1Reader

log = logging.getLogger("hdpbf.driver")

GROUP = "hdpbf"
DEFAULT_TOKEN_TTL = 600
INVALIDATING_METHODS = nova_wire.INVALIDATING_METHODS
LEGACY_DELETE_EVENTS = nova_wire.LEGACY_DELETE_EVENTS

OPTS = [
    cfg.StrOpt("mesh_config", help="The HdPBF mesh's mesh.json (nodes, clients, readers, "
               "broker). Unset: the driver passes everything through."),
    cfg.StrOpt("ledger", help="This host's local ledger copy (a node's or follower's "
               "ledger.sqlite), read-only; unset: no step 1 on this host."),
    cfg.StrOpt("reader", help="This host's reader name in mesh.json (opens sealed tokens)."),
    cfg.StrOpt("reader_key", help="The reader's key file (default: keys/reader-<name>.key "
               "beside mesh.json)."),
    cfg.StrOpt("client", help="The mesh client that signs records (compute hosts); unset: "
               "this host records nothing."),
    cfg.StrOpt("client_key", help="The client's key file (default: keys/client-<name>.key)."),
    cfg.ListOpt("methods", default=list(nova_wire.CONSOLE_METHODS),
                help="RPC methods answered by two-step reads."),
    cfg.ListOpt("topics", default=["compute"], help="RPC topics of the policy methods."),
    cfg.BoolOpt("own_answers", default=True, help="Serve this process's own step-2 answers "
                "until the ledger has them."),
    cfg.BoolOpt("seal", default=True, help="Seal console tokens for the readers in "
                "mesh.json (off: tokens in clear in every ledger; experiments only)."),
    cfg.BoolOpt("embedded", default=False, help="Use an in-process mesh (tests, demo)."),
    cfg.PortOpt("metrics_port", default=0, help="Serve the driver's counters (reads by "
                "step, misses by reason, records and deletes queued, committed, re-sent) "
                "for Prometheus on http://<metrics_host>:<port>/metrics; one endpoint per "
                "process, the sum of its transports. 0: off."),
    cfg.StrOpt("metrics_host", default="127.0.0.1", help="The address metrics_port binds "
               "(0.0.0.0: let a Prometheus on another host scrape it)."),
]

_said_pass_through = False
_drivers: list["HdpbfDriver"] = []
_drivers_lock = threading.Lock()


def register_opts(conf) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    """For oslo-config-generator."""
    return [(GROUP, OPTS)]


def drivers() -> list["HdpbfDriver"]:
    """The hdpbf drivers built in this process (their ``stats``; for tests and the demo)."""
    with _drivers_lock:
        return list(_drivers)


def _inner_url(url):
    """``hdpbf+rabbit://...`` -> the same URL for ``rabbit``."""
    from oslo_messaging import TransportURL
    scheme = url.transport or ""
    _, plus, inner = scheme.partition("+")
    if not plus or not inner or inner.split("+")[0] == "hdpbf":
        raise ValueError(f"transport_url scheme {scheme!r}: the hdpbf driver wraps another "
                         f"driver, named after a '+' (hdpbf+rabbit://..., hdpbf+fake:/)")
    return TransportURL(url.conf, inner, url.virtual_host, list(url.hosts), dict(url.query))


class HdpbfDriver(base.BaseDriver):
    def __init__(self, conf, url, default_exchange=None, allowed_remote_exmods=None):
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        from stevedore import driver as sd
        inner_url = _inner_url(url)
        self._inner = sd.DriverManager(
            "oslo.messaging.drivers", inner_url.transport.split("+")[0], invoke_on_load=True,
            invoke_args=[conf, inner_url],
            invoke_kwds={"default_exchange": default_exchange,
                         "allowed_remote_exmods": allowed_remote_exmods}).driver
        self.prefetch_size = getattr(self._inner, "prefetch_size", 0)
        register_opts(conf)
        opts = conf[GROUP]
        self.methods = frozenset(opts.methods or ())
        self.topics = frozenset(opts.topics or ())
        self.stats: collections.Counter[str] = collections.Counter()
        self._stats_lock = threading.Lock()
        self.reader: Step1Reader | None = None
        self.recorder = None
        self._delete_gen = 0
        self._deleted_at: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._gen_lock = threading.Lock()
        self._busy = 0                       # policy replies not yet handed to the recorder
        self._busy_cond = threading.Condition()
        if opts.mesh_config:
            self._configure(opts)
        else:
            global _said_pass_through
            if not _said_pass_through:
                _said_pass_through = True
                log.info("hdpbf: no [hdpbf] mesh_config in the service's config: passing every "
                         "message through to %s unchanged", inner_url.transport)
        with _drivers_lock:
            _drivers.append(self)
        if opts.metrics_port:
            from . import driver_metrics
            driver_metrics.export(self, opts.metrics_port, opts.metrics_host)

    def _configure(self, opts) -> None:
        from pbft_tasks.topology import MeshConfig, console_writers, load_reader_identity
        from . import driver_record
        from .sealing import Opener
        mesh_cfg = MeshConfig.load(opts.mesh_config)  # ConfigError names the problem
        if opts.ledger:
            opener = None
            if opts.reader:
                opener = Opener(opts.reader,
                                load_reader_identity(mesh_cfg, opts.reader, opts.reader_key))
            self.reader = Step1Reader(opts.ledger, opener, own_answers=opts.own_answers,
                                      writers=console_writers(mesh_cfg))
        if opts.client:
            self.recorder = driver_record.shared_recorder(
                opts.mesh_config, opts.client, opts.client_key, opts.seal, opts.embedded)
        log.info("hdpbf: step 1 %s; recording %s (methods %s on topics %s)",
                 f"from {opts.ledger}" if self.reader else "off (no [hdpbf] ledger)",
                 f"as client {opts.client!r}" if self.recorder else "off (no [hdpbf] client)",
                 ", ".join(sorted(self.methods)), ", ".join(sorted(self.topics)))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every policy message this driver's servers received has been
        answered and its record or delete committed (tests, demo, benches)."""
        deadline = time.monotonic() + timeout
        with self._busy_cond:
            if not self._busy_cond.wait_for(lambda: self._busy == 0, timeout):
                raise TimeoutError(f"{self._busy} policy message(s) still being served "
                                   f"after {timeout}s")
        if self.recorder is not None:
            self.recorder.flush(max(0.1, deadline - time.monotonic()))

    def _busy_add(self, n: int) -> None:
        with self._busy_cond:
            self._busy += n
            self._busy_cond.notify_all()

    def count(self, what: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[what] += n

    def token_ttl(self) -> float:
        try:
            ttl = self.conf.consoleauth.token_ttl
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
            return DEFAULT_TOKEN_TTL  # not inside nova: nova's default
        return float(ttl) if ttl else DEFAULT_TOKEN_TTL

    # -- BaseDriver -----------------------------------------------------------------------
    def require_features(self, requeue=False):
        self._inner.require_features(requeue=requeue)

    def send(self, target, ctxt, message, wait_for_reply=None, timeout=None,
             call_monitor_timeout=None, retry=None, transport_options=None):
        kw = {"wait_for_reply": wait_for_reply, "timeout": timeout,
              "call_monitor_timeout": call_monitor_timeout, "retry": retry,
              "transport_options": transport_options}
        if (not wait_for_reply or self.reader is None or target.topic not in self.topics
                or not isinstance(message, dict) or message.get("method") not in self.methods):
            return self._inner.send(target, ctxt, message, **kw)
        method = message["method"]
        args = message.get("args")
        args = args if isinstance(args, dict) else {}
        uuid = nova_wire.instance_uuid(args.get("instance"))
        console_type = args.get("console_type")
        reason = None
        if uuid is None:
            reason = "no_uuid"
        elif type(console_type) is not str or not console_type:
            reason = "no_console_type"
        elif not target.server:
            reason = "no_server"
        if reason is not None:
            self.count(f"miss.{reason}")
            self.count("step2")
            return self._inner.send(target, ctxt, message, **kw)
        key = nova_wire.reply_key(target.topic, method, uuid, console_type)
        try:
            reply, how, base_version = self.reader.lookup(key, target.server)
        except Exception:  # whatever the local copy holds, nova's call goes on (step 2)
            log.exception("hdpbf: step 1 for %s failed; asking compute", key)
            reply, how, base_version = None, "ledger_error", 0
        if reply is not None:
            self.count(how)
            return reply
        self.count(f"miss.{how}")
        sent_at = time.time()
        self.count("step2")
        try:
            result = self._inner.send(target, ctxt, message, **kw)
        except Exception:
            self.count("step2_failed")  # nova's own error or timeout, raised as it came
            raise
        if nova_wire.reply_token(result) is not None:
            self.reader.keep(key, result, target.server, sent_at + self.token_ttl(),
                             base_version)
        return result

    def send_notification(self, target, ctxt, message, version, retry=None):
        result = self._inner.send_notification(target, ctxt, message, version, retry=retry)
        if self.recorder is not None and isinstance(message, dict):
            event = message.get("event_type")
            payload = message.get("payload")
            uuid = None
            if event in nova_wire.DELETE_EVENTS:
                uuid = nova_wire.payload_uuid(payload)
            elif event in LEGACY_DELETE_EVENTS and isinstance(payload, dict):
                uuid = payload.get("instance_id")
            if type(uuid) is str and uuid:
                self.invalidate(uuid, event)
        return result

    def listen(self, target, batch_size, batch_timeout):
        inner = self._inner.listen(target, batch_size, batch_timeout)
        if self.recorder is None:
            return inner
        return _Listener(inner, self, target)

    def listen_for_notifications(self, targets_and_priorities, pool, batch_size,
                                 batch_timeout):
        return self._inner.listen_for_notifications(targets_and_priorities, pool,
                                                    batch_size, batch_timeout)

    def cleanup(self):
        try:
            self._inner.cleanup()
        finally:
            if self.reader is not None:
                self.reader.close()
            with _drivers_lock:
                if self in _drivers:
                    _drivers.remove(self)

    # -- server side ----------------------------------------------------------------------
    def invalidate(self, uuid: str, why: str) -> None:
        """Queue the delete of every console key of instance ``uuid``."""
        with self._gen_lock:
            self._delete_gen += 1
            self._deleted_at[uuid] = self._delete_gen
            self._deleted_at.move_to_end(uuid)
            while len(self._deleted_at) > 65536:
                self._deleted_at.popitem(last=False)
        for topic in sorted(self.topics):
            for key in nova_wire.instance_keys(topic, tuple(sorted(self.methods)), uuid):
                self.recorder.forget(key)
        self.count(f"invalidated.{why}")

    def _deleted_since(self, uuid: str, gen: int) -> bool:
        with self._gen_lock:
            return self._deleted_at.get(uuid, 0) > gen

    def on_incoming(self, incoming, target):
        """Wrap the reply of a policy or invalidating message; others pass untouched."""
        message = getattr(incoming, "message", None)
        if not isinstance(message, dict):  # rabbit's is a dict subclass (RabbitMessage)
            return incoming
        method = message.get("method")
        args = message.get("args")
        args = args if isinstance(args, dict) else {}
        if method in self.methods and target.topic in self.topics:
            uuid = nova_wire.instance_uuid(args.get("instance"))
            console_type = args.get("console_type")
            if uuid is None or type(console_type) is not str or not console_type:
                self.count("not_recorded.no_key")
                return incoming
            host = target.server or getattr(self.conf, "host", None) or ""
            with self._gen_lock:
                gen = self._delete_gen
            self._wrap_reply(incoming, self._record_after, method, uuid, console_type,
                             target.topic, host, time.time(), gen)
        elif method in INVALIDATING_METHODS:
            uuid = nova_wire.instance_uuid(args.get("instance"))
            if uuid is not None:
                self._wrap_reply(incoming, self._invalidate_after, uuid, method)
        return incoming

    def _wrap_reply(self, incoming, after, *extra) -> None:
        original = incoming.reply
        self._busy_add(1)

        def reply(reply=None, failure=None):
            try:
                original(reply=reply, failure=failure)  # 5b first: nova's reply never waits
                after(reply, failure, *extra)
            finally:
                self._busy_add(-1)

        incoming.reply = reply

    def _record_after(self, reply, failure, method, uuid, console_type, topic, host,
                      received_at, gen) -> None:
        if failure is not None:
            self.count("not_recorded.failure")
            return
        if nova_wire.reply_token(reply) is None:
            self.count("not_recorded.no_token")
            return
        if self._deleted_since(uuid, gen):
            self.count("not_recorded.deleted_meanwhile")
            return
        sealer = self.recorder.seal

        def make_value():  # on the recorder's thread: sealing costs ~0.1 ms per reader
            return nova_wire.seal_reply(reply, method=method, uuid=uuid,
                                        console_type=console_type, compute_host=host,
                                        sealer=sealer)

        self.recorder.record_reply(nova_wire.reply_key(topic, method, uuid, console_type),
                                   make_value, received_at + self.token_ttl())
        self.count("recorded")

    def _invalidate_after(self, reply, failure, uuid, method) -> None:
        # Even after a failure: a delete of a live entry only ever costs a step 2.
        self.invalidate(uuid, method)


class _Listener(base.Listener):
    """The inner driver's listener, with each incoming message seen by the driver."""

    def __init__(self, inner, driver: HdpbfDriver, target):
        super().__init__(inner.batch_size, inner.batch_timeout, inner.prefetch_size)
        self._inner = inner
        self._driver = driver
        self._target = target

    def start(self, on_incoming_callback):
        super().start(on_incoming_callback)
        driver, target = self._driver, self._target
        self._inner.start(
            lambda incoming: on_incoming_callback([driver.on_incoming(m, target)
                                                   for m in incoming]))

    def stop(self):
        self._inner.stop()
        super().stop()

    def cleanup(self):
        self._inner.cleanup()
