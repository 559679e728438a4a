"""A kit for the ``hdpbf`` driver on oslo.messaging's in-process ``fake`` driver
(``hdpbf+fake:/``) with an embedded mesh: no broker, no nova import (nova itself is
imported only in subprocesses, see test_nova_*.py).

A ``DriverKit`` lays out a mesh with readers api0/api1 and client ``cmp``, builds one
transport per "host" (its own ``ConfigOpts`` with an ``[hdpbf]`` group, like one
nova.conf per host) and a compute RPC server on nova's method signatures.  Server names
are unique per test: the fake driver's exchanges are shared by the whole process."""
from __future__ import annotations

import os
import threading
import uuid
import warnings

from oslo_config import cfg

from mesh.openstack import driver as hdpbf_driver
from mesh.openstack import driver_record
from mesh.openstack.nova_wire import instance_primitive, request_context
from pbft_tasks.topology import init_mesh

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import oslo_messaging


class Compute:
    """nova-compute's console and lifecycle methods as nova's ComputeManager spells them
    (the instance arrives as a NovaObject primitive: no serializer here)."""

    target = oslo_messaging.Target(version="6.4")

    def __init__(self, host: str):
        self.host = host
        self.calls: list[tuple[str, dict]] = []
        self.gate: threading.Event | None = None   # set: get_vnc_console waits on it
        self.entered = threading.Event()
        self.fail = False

    def _token(self) -> str:
        return uuid.uuid4().hex + uuid.uuid4().hex

    def get_vnc_console(self, context, console_type, instance):
        self.calls.append(("get_vnc_console", {"console_type": console_type,
                                               "instance": instance}))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise ValueError("console type unavailable")
        token = self._token()
        return {"host": "10.0.0.7", "port": 5901, "internal_access_path": None,
                "token": token,
                "access_url": f"http://ctl:6080/vnc_auto.html?path=%3Ftoken%3D{token}"}

    def get_serial_console(self, context, console_type, instance):
        token = self._token()
        return {"host": "10.0.0.7", "port": 10000, "internal_access_path": None,
                "token": token, "access_url": f"ws://ctl:6083/?token={token}"}

    def terminate_instance(self, context, instance, bdms):
        self.calls.append(("terminate_instance", {"instance": instance, "bdms": bdms}))

    def post_live_migration_at_destination(self, context, instance, block_migration=False):
        self.calls.append(("post_live_migration_at_destination", {"instance": instance}))

    def get_instance_diagnostics(self, context, instance):
        self.calls.append(("get_instance_diagnostics", {"instance": instance}))
        return {"state": "running", "uuid": instance["nova_object.data"]["uuid"],
                "nested": {"a": [1, 2.5, None, "x"]}}


class DriverKit:
    def __init__(self, tmp_path):
        self.dir = tmp_path / "mesh"
        self.tag = uuid.uuid4().hex[:6]
        # "cmp" records for the hosts most tests run on one transport; "cmpA" and "cmpB"
        # speak for one host each ("hostA", "hostB"), as real compute hosts do.
        self.cfg = init_mesh(self.dir, clients=("admin", "cmp", "cmpA", "cmpB"),
                             readers=("api0", "api1"),
                             hosts={"cmp": tuple(self.host(f"cmp{i}") for i in range(1, 5)),
                                    "cmpA": (self.host("hostA"),), "cmpB": (self.host("hostB"),)})
        self.mesh_config = str(self.dir / "mesh.json")
        self.exchange = f"nova-{uuid.uuid4().hex[:8]}"
        self._close: list = []

    def host(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def ledger_path(self, node: int) -> str:
        return os.path.join(self.cfg.node_data_dir(node), "ledger.sqlite")

    def conf(self, token_ttl: int = 600, **hdpbf) -> cfg.ConfigOpts:
        conf = cfg.ConfigOpts()
        conf([], project="hdpbf-test")
        conf.register_opts([cfg.IntOpt("token_ttl", default=600)], group="consoleauth")
        conf.set_override("token_ttl", token_ttl, group="consoleauth")
        hdpbf_driver.register_opts(conf)
        # oslo registers some options on the global CONF only; its ConfFixture registers
        # them all on a private one (one nova.conf per simulated host).
        from oslo_messaging import conffixture
        conffixture.ConfFixture(conf)
        for k, v in hdpbf.items():
            conf.set_override(k, v, group="hdpbf")
        return conf

    def transport(self, conf=None, url: str = "hdpbf+fake:/"):
        conf = conf or self.conf()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = oslo_messaging.get_rpc_transport(conf, url=url)
        self._close.append(t.cleanup)
        return t

    def api(self, node: int = 0, reader: str | None = "api0", **kw):
        """A caller host: step 1 from node ``node``'s ledger."""
        settings = {"mesh_config": self.mesh_config, "ledger": self.ledger_path(node),
                    "embedded": True}
        if reader:
            settings["reader"] = reader
        settings.update(kw)
        return self.transport(self.conf(**settings))

    def compute(self, name: str = "cmp1", transport=None, token_ttl: int = 600,
                client: str = "cmp"):
        """A compute host recording through the embedded mesh as ``client``; returns
        (endpoint, transport)."""
        t = transport or self.transport(self.conf(
            token_ttl=token_ttl, mesh_config=self.mesh_config, client=client, embedded=True))
        host = self.host(name)
        ep = Compute(host)
        target = oslo_messaging.Target(topic="compute", server=host, exchange=self.exchange)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = oslo_messaging.get_rpc_server(t, target, [ep], executor="threading")
        server.start()

        def stop():
            server.stop()
            server.wait()
        self._close.insert(0, stop)
        return ep, t

    def client(self, transport, host: str, timeout: float = 10):
        target = oslo_messaging.Target(topic="compute", exchange=self.exchange, version="6.0")
        return oslo_messaging.get_rpc_client(transport, target).prepare(server=host,
                                                                        timeout=timeout)

    @staticmethod
    def driver(transport):
        return transport._driver

    @staticmethod
    def settle(timeout: float = 20) -> None:
        """Every reply served so far recorded and committed (or deleted)."""
        for drv in hdpbf_driver.drivers():
            drv.flush(timeout)

    @staticmethod
    def recorder():
        recs = driver_record.recorders()
        assert len(recs) == 1, recs
        return recs[0]

    def close(self) -> None:
        for fn in self._close:
            fn()
        driver_record.shutdown()


def vnc(client, uuid_: str, host: str, console_type: str = "novnc"):
    return client.call(request_context(), "get_vnc_console",
                       instance=instance_primitive(uuid_, host), console_type=console_type)
