"""Messages RabbitMQ routed during a bench, from RabbitMQ's own counters.

Owns: reading the management API's per-queue message statistics of one vhost and
turning two snapshots into "messages routed", split into OpenStack RPC and consensus.

Rules of this file:
- A message routed to a queue counts once per queue (``message_stats.publish`` of each
  queue, RabbitMQ's "incoming" count): an RPC call is the request in ``compute.<host>``
  plus the reply in the caller's ``reply_<uuid>``; a consensus message is a task in a
  ``node.<id>`` queue or a reply in a mesh client's reply queue.
- Queue kinds by name: ``node.*`` and the mesh clients' reply queues
  (``pbft_tasks.transport.reply_queue_name``) are consensus; ``compute``/``compute.*``/
  ``compute_fanout_*`` and oslo's ``reply_*`` are RPC; anything else is ``other``.
- The management plugin aggregates its counters every ``collect_statistics_interval``;
  ``settled`` polls until two snapshots a little apart agree.
- Counters of a queue deleted between two snapshots are lost, so snapshots are taken
  while the bench's clients (and their reply queues) are alive.
- Needs a broker with ``rabbitmq_management`` on; the shared broker of these machines
  has none, so the bench starts a private one (``hdpbf bench paper --count-messages``).
- A run counts through a ``Tally``: once the counters fail it (``settled`` times out,
  the API is gone), the tally stops and says why, and the run drops the counts that
  needed the failed snapshot rather than die (mesh/bench/missing.py).
"""
from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request

from .missing import UNAVAILABLE, reason

KINDS = ("rpc", "consensus", "other")
# How long a snapshot waits for the plugin to count its marker, and then for channels
# that report a little later.
SETTLE_TIMEOUT, SETTLE_AFTER = 30.0, 1.2
MARKER = "hdpbf.bench.marker"


def kind_of(queue: str) -> str:
    from pbft_tasks.transport import reply_queue_name
    if queue.startswith(("node.", reply_queue_name(""))):
        return "consensus"
    if (queue == "compute" or queue.startswith(("compute.", "compute_fanout_", "reply_"))):
        return "rpc"
    return "other"


class RabbitCounters:
    def __init__(self, api_url: str, vhost: str = "/"):
        parts = urllib.parse.urlsplit(api_url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.vhost = vhost

    def snapshot(self) -> dict[str, int]:
        """Queue name -> messages routed to it so far."""
        url = (f"{self.base}/api/queues/{urllib.parse.quote(self.vhost, safe='')}"
               f"?columns=name,message_stats")
        req = urllib.request.Request(url, headers={"Authorization": self._auth})
        with urllib.request.urlopen(req, timeout=10) as resp:
            queues = json.load(resp)
        return {q["name"]: int((q.get("message_stats") or {}).get("publish", 0))
                for q in queues}

    def _call(self, method: str, path: str, body: dict | None = None):
        url = f"{self.base}/api/{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": self._auth,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def settled(self, timeout: float | None = None, after: float | None = None
                ) -> dict[str, int]:
        """A snapshot that includes everything published before the call.  The plugin
        shows a message only seconds later (each channel reports every
        ``collect_statistics_interval``, then the plugin aggregates), so a marker is
        published through the API to a queue of its own; once the marker is counted, the
        aggregation has caught up with that moment, and ``after`` more seconds cover
        the channels that report a little later."""
        timeout = SETTLE_TIMEOUT if timeout is None else timeout
        after = SETTLE_AFTER if after is None else after
        vh = urllib.parse.quote(self.vhost, safe="")
        self._call("PUT", f"queues/{vh}/{MARKER}", {"durable": False, "auto_delete": False,
                                                   "arguments": {"x-max-length": 1}})
        want = self.snapshot().get(MARKER, 0) + 1
        self._call("POST", f"exchanges/{vh}/amq.default/publish",
                   {"properties": {}, "routing_key": MARKER, "payload": "marker",
                    "payload_encoding": "string"})
        deadline = time.monotonic() + timeout
        while self.snapshot().get(MARKER, 0) < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ's counters did not catch up in {timeout}s")
            time.sleep(0.2)
        time.sleep(after)
        return self.snapshot()


class Tally:
    """Messages routed between marks, for a run that must not die of the counters."""

    def __init__(self, counters: RabbitCounters):
        self.counters = counters
        self.before: dict[str, int] | None = None
        self.error: str | None = None      # why counting stopped, once it did

    @property
    def ok(self) -> bool:
        return self.error is None

    def mark(self) -> dict[str, int] | None:
        """Messages routed since the previous mark, by kind; None at the first mark and
        once the counters have failed (``error`` says how)."""
        if self.error is not None:
            return None
        try:
            now = self.counters.settled()
        except UNAVAILABLE as exc:
            self.error = reason(exc)
            return None
        before, self.before = self.before, now
        return None if before is None else routed(before, now)


def routed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Messages routed between two snapshots, by kind, and ``total``."""
    out = dict.fromkeys(KINDS, 0)
    for name, count in after.items():
        if name != MARKER:
            out[kind_of(name)] += max(0, count - before.get(name, 0))
    out["total"] = sum(out[k] for k in KINDS)
    return out


def add(acc: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    return {k: acc.get(k, 0) + more.get(k, 0) for k in (*KINDS, "total")}


def scale(counts: dict[str, int], factor: float) -> dict[str, float]:
    return {k: round(v * factor, 1) for k, v in counts.items()}


# -- a private broker with the management plugin -------------------------------------------
def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateBroker:
    """One RabbitMQ node of our own (``mesh.ops.broker_cluster``, which never touches the
    machine's RabbitMQ), with ``rabbitmq_management`` on and statistics every 0.5 s."""

    def __init__(self, dir: str):
        from ..ops.broker_cluster import BrokerCluster
        mgmt = self.mgmt_port = _free_port()

        class _WithManagement(BrokerCluster):
            def _lay_out(self, node):
                super()._lay_out(node)
                from pathlib import Path
                d = Path(node.dir)
                with open(d / "rabbitmq.conf", "a") as fh:
                    fh.write(f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {mgmt}\n"
                             "collect_statistics_interval = 500\n")
                (d / "enabled_plugins").write_text("[rabbitmq_management].\n")

        self.cluster = _WithManagement.plan_free(dir, n=1, prefix="bench")

    def __enter__(self) -> "PrivateBroker":
        self.cluster.up()
        node = self.cluster.nodes[0]
        self.broker_url = f"amqp://guest:guest@127.0.0.1:{node.port}//"
        self.api_url = f"http://guest:guest@127.0.0.1:{self.mgmt_port}"
        deadline = time.monotonic() + 60
        while True:  # the management listener comes up after the AMQP one
            try:
                RabbitCounters(self.api_url).snapshot()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.cluster.down()
                    raise
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.cluster.down()
