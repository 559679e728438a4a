"""oslo.messaging plumbing shared by the compute service and the API reader.

Owns: which transport a URL means, the compute RPC target, and the conversion from the
mesh's Celery broker URL (kombu spelling) to an oslo.messaging transport URL.

Rules of this file:
- The global ``cfg.CONF`` is used, never a private ``ConfigOpts``: oslo.messaging's
  tracing and driver options are registered there, as in nova (a private ``ConfigOpts`` lacks them).
- ``rabbit://`` (the real broker) everywhere, except a URL starting with ``fake:``:
  oslo's in-process fake driver, for embedded mode and unit tests.  The fake driver
  keeps its queues inside the transport object, so a server and a client only meet when
  they share it: fake transports are cached per URL here (``fake:`` and ``fake:/other``
  are two separate buses).  Real transports are not shared; each side owns its own.
- The target is nova's: exchange ``nova`` (nova sets ``control_exchange``; oslo's
  default, ``openstack``, would never meet a real nova), topic ``compute``, one server
  per compute host, version "6.0".
- A compute that records its answers in the ledger adds ``EXPIRES_AT_FIELD`` (the
  token's expiry, compute's wall clock) to its reply, a key nova's client never reads;
  ``ConsoleReader`` removes it before returning nova's ``connect_info``.
"""
from __future__ import annotations

import threading
import warnings
from urllib.parse import urlsplit, urlunsplit

DEFAULT_TRANSPORT_URL = "rabbit://guest:guest@127.0.0.1:5672/"
EXCHANGE = "nova"
TOPIC = "compute"
VERSION = "6.0"
EXPIRES_AT_FIELD = "hdpbf_expires_at"

_fake: dict[str, object] = {}
_fake_lock = threading.Lock()


def oslo():
    """``oslo_messaging``, imported without the deprecation noise its eventlet backend
    prints on import (we use the threading executor; eventlet is never started)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import oslo_messaging
    return oslo_messaging


def is_fake(url: str | None) -> bool:
    return bool(url) and url.startswith("fake:")


def transport_url_from_broker(broker_url: str) -> str:
    """``amqp://u:p@h:5672//`` (kombu: vhost "/") -> ``rabbit://u:p@h:5672/``;
    ``amqp://u:p@h:5672/vh`` -> ``rabbit://u:p@h:5672/vh``.  A cluster's failover list
    (``amqp://u:p@h1//;amqp://u:p@h2//``) becomes oslo.messaging's multi-host URL
    ``rabbit://u:p@h1,u:p@h2/``, which fails over between the hosts the same way."""
    if ";" in broker_url:
        urls = [transport_url_from_broker(u) for u in broker_url.split(";")]
        vhosts = {urlsplit(u).path for u in urls}
        if len(vhosts) != 1:
            raise ValueError(f"the broker URLs {broker_url!r} name different vhosts; "
                             f"pass --transport-url rabbit://user:pass@h1,user:pass@h2/vhost")
        return urlunsplit(("rabbit", ",".join(urlsplit(u).netloc for u in urls),
                           vhosts.pop(), "", ""))
    parts = urlsplit(broker_url)
    if parts.scheme not in ("amqp", "pyamqp", "rabbit", "amqps"):
        raise ValueError(f"cannot derive an oslo.messaging URL from broker {broker_url!r}; "
                         f"pass --transport-url rabbit://user:pass@host:5672/")
    path = parts.path
    vhost = path[1:] if path.startswith("/") else path
    if vhost == "/":
        vhost = ""  # kombu's "//" is the default vhost; oslo spells it as no path
    return urlunsplit(("rabbit", parts.netloc, "/" + vhost, "", ""))


def get_transport(url: str | None):
    """The oslo.messaging RPC transport for ``url`` (None: the local RabbitMQ)."""
    from oslo_config import cfg
    oslo_messaging = oslo()
    url = url or DEFAULT_TRANSPORT_URL
    if is_fake(url):
        with _fake_lock:
            if url not in _fake:
                _fake[url] = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
            return _fake[url]
    return oslo_messaging.get_rpc_transport(cfg.CONF, url=url)


def release_transport(transport, url: str | None) -> None:
    """Clean up a transport from ``get_transport`` (shared fake ones stay up)."""
    if transport is not None and not is_fake(url):
        transport.cleanup()


def compute_target(server: str | None = None):
    return oslo().Target(exchange=EXCHANGE, topic=TOPIC, server=server, version=VERSION)
