"""What the hdpbf driver relies on in oslo.messaging's private driver API.

``HdpbfDriver`` subclasses ``oslo_messaging._drivers.base.BaseDriver`` and wraps another
driver loaded by name; none of that is public API.  pyproject.toml allows only the
oslo.messaging versions tested; these checks fail loudly (and say what changed) if a
version there no longer has what mesh/openstack/driver.py calls."""
from __future__ import annotations

import inspect
from importlib import metadata

import oslo_messaging
from oslo_messaging import transport as om_transport
from oslo_messaging._drivers import base

from mesh.openstack.driver import HdpbfDriver

TESTED = ("18.3",)


def _params(fn):
    return list(inspect.signature(fn).parameters)


def test_the_installed_oslo_messaging_is_a_tested_version():
    version = metadata.version("oslo.messaging")
    assert version.startswith(TESTED), (
        f"oslo.messaging {version} is not a version the hdpbf driver was tested with "
        f"({', '.join(TESTED)}.x): run tests/nova_driver and widen pyproject.toml's pin")


def test_base_driver_has_the_methods_and_signatures_we_implement():
    abstract = set(getattr(base.BaseDriver, "__abstractmethods__", ()))
    assert abstract == {"send", "send_notification", "listen", "listen_for_notifications",
                        "cleanup"}, f"BaseDriver's abstract methods changed: {sorted(abstract)}"
    for name in sorted(abstract) + ["__init__", "require_features"]:
        assert _params(getattr(base.BaseDriver, name)) == _params(getattr(HdpbfDriver, name)), \
            f"BaseDriver.{name} is now {inspect.signature(getattr(base.BaseDriver, name))}"
    assert not getattr(HdpbfDriver, "__abstractmethods__", None)


def test_the_transport_calls_the_driver_as_we_expect():
    # transport.py: the driver named before '+' in the scheme, invoked (conf, url, **kw)
    src = inspect.getsource(om_transport._get_transport)
    assert "url.transport.split('+')[0]" in src and "'oslo.messaging.drivers'" in src
    assert "invoke_args=[conf, url]" in src
    for kw in ("default_exchange", "allowed_remote_exmods"):
        assert kw in src
    assert "self._driver.send(target, ctxt, message" in inspect.getsource(om_transport.Transport._send)


def test_incoming_messages_and_listeners_are_what_we_wrap():
    assert _params(base.RpcIncomingMessage.reply) == ["self", "reply", "failure"]
    assert _params(base.Listener.__init__) == ["self", "batch_size", "batch_timeout",
                                              "prefetch_size"]
    assert {"start", "stop", "cleanup"} <= set(vars(base.Listener))
    # The RPC server replies through message.reply(res) / reply(failure=...), casts too.
    from oslo_messaging.rpc import server
    src = inspect.getsource(server.RPCServer._process_incoming)
    assert "message.reply(res)" in src and "message.reply(failure=failure)" in src


def test_the_entry_point_is_registered():
    eps = metadata.entry_points(group="oslo.messaging.drivers")
    hdpbf = [ep for ep in eps if ep.name == "hdpbf"]
    assert hdpbf and hdpbf[0].value == "mesh.openstack.driver:HdpbfDriver", (
        "the 'hdpbf' driver is not registered: pip install -e . registers pyproject.toml's "
        "[project.entry-points.\"oslo.messaging.drivers\"]")
    assert oslo_messaging.TransportURL  # the class _inner_url builds the wrapped URL with
