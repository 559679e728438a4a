"""``hdpbf bench paper``'s two nova configurations: nova 34's own client.

- ``nova-rpc``    nova's ``ComputeAPI.get_vnc_console`` on ``rabbit://``: plain nova.
- ``nova-hdpbf``  the same client on ``hdpbf+rabbit://``: the hdpbf oslo.messaging
                  driver does step 1 from the API node's ledger copy (node 0, reader
                  ``api``), own answers on, and on the compute side records replies
                  through the run's real mesh (client ``compute-1``).

Both call compute servers on nova's serializer (``nova.rpc.get_server``: a
``RequestContext`` and an ``objects.Instance`` arrive) with ComputeManager's method
signature, two hosts (``nova-compute-1``/``-2``, instances placed as in the paper's rig)
per transport.  They run as threads of the bench process, unlike the stand-in computes
(separate processes): nova's client and server share one nova config here.  The
servers mint tokens and keep what they served in the stand-in's format, so the same
freshness check covers these answers.

Only with the broker rig, and only when nova is installed (it is a test dependency,
``pip install -e '.[test]'``); otherwise the configurations are skipped with a reason.
The Instance and context are the ones nova-api passes (``nova_api_objects``: every
column ``Instance.get_by_uuid`` loads, plus metadata, system metadata, security groups
and the network info cache; keystonemiddleware's context), not a handful of fields:
their serialization is most of what a step-1 call costs.

Also measured here, without the broker: ``driver_step1_p50_us``, a whole step-1 call
through the driver (``HdpbfDriver.send``: key from the Instance primitive, ledger read,
open), without oslo's client around it; and nova's client-side floor
(``nova_client_floor_ms``): ``ComputeAPI.get_vnc_console`` on a transport whose driver
answers at once, i.e. what every call costs before and after any transport driver
(nova's serializer turning the Instance and context into primitives, oslo's client),
with ``nova_serialize_ms``, the serializer's part alone.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Any

from .stats import percentile

NOVA_CONFIGS = ("nova-rpc", "nova-hdpbf")
STEP_OWN = "1o"
MICRO_CALLS = 5000
INSTANCES_FOR_FLOOR = 6
FLOOR_CALLS = 2000
WARM_CALLS = 200        # first timings of a micro loop, dropped (caches warming)


class _NovaCompute:
    """ComputeManager.get_vnc_console's signature behind nova's serializer."""

    def __init__(self, host: str, service_ms: float, token_ttl: float):
        import oslo_messaging
        self.target = oslo_messaging.Target(version="6.4")
        self.host, self.service_ms, self.token_ttl = host, service_ms, token_ttl
        self.served: list[dict] = []
        self._lock = threading.Lock()

    def get_vnc_console(self, context: Any, console_type: str, instance: Any) -> dict:
        from nova.console import type as ctype
        if self.service_ms:
            time.sleep(self.service_ms / 1000.0)
        token = secrets.token_urlsafe()
        info = ctype.ConsoleVNC(host="192.0.2.7", port=5901).get_connection_info(
            token, f"http://ctl:6080/vnc_auto.html?path=%3Ftoken%3D{token}")
        now = time.time()
        with self._lock:
            self.served.append({"instance": instance.uuid, "console_type": console_type,
                                "connect_info": dict(info), "expires_at": now + self.token_ttl,
                                "time": now})
        return info


class NovaSide:
    def __init__(self, rig: Any):
        self.rig = rig
        self.skip: str | None = None
        self.servers: list = []
        self.computes: list[_NovaCompute] = []
        self.instances: dict[str, Any] = {}
        self.routers: dict[str, Any] = {}

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> bool:
        """False (and ``skip`` says why) when nova cannot be used here."""
        if self.rig.mode != "broker":
            self.skip = "the nova configurations run on the broker rig only"
            return False
        try:
            import nova.conf  # noqa: F401
            from nova import config, objects, rpc
            from nova.compute import rpcapi
        except ImportError as exc:
            self.skip = f"nova cannot be imported ({exc}); pip install -e '.[test]'"
            return False
        import oslo_messaging
        from oslo_messaging import conffixture

        from ..openstack import driver as hdpbf_driver
        from ..openstack.driver_read import Step1Reader
        from ..openstack.sealing import Opener
        from pbft_tasks.topology import console_writers, load_reader_identity
        objects.register_all()
        conf = nova.conf.CONF
        config.parse_args([], default_config_files=[], configure_db=False, init_rpc=False)
        self.conf = conf
        conffixture.ConfFixture(conf)  # oslo's options, on nova's CONF
        hdpbf_driver.register_opts(conf)
        rig = self.rig
        ledger = os.path.join(rig.cfg.node_data_dir(0), "ledger.sqlite")
        conf.set_override("transport_url", "hdpbf+" + rig.transport_url)
        conf.set_override("rpc_response_timeout", max(1, int(rig.rpc_timeout)))
        conf.set_override("compute", "6.4", group="upgrade_levels")
        conf.set_override("token_ttl", int(rig.token_ttl), group="consoleauth")
        for k, v in {"mesh_config": rig.config_path, "ledger": ledger, "reader": "api",
                     "client": "compute-1", "own_answers": True}.items():
            conf.set_override(k, v, group="hdpbf")
        rpc.init(conf)
        self.rpc, self.rpcapi, self.objects = rpc, rpcapi, objects
        self.transport = rpc.TRANSPORT
        self.driver = self.transport._driver
        self.plain = oslo_messaging.get_rpc_transport(conf, url=rig.transport_url)
        serializer = rpc.RequestContextSerializer(objects.base.NovaObjectSerializer())
        for transport, suffix in ((self.transport, ""), (self.plain, "-plain")):
            for host in sorted(set(rig.hosts.values())):
                compute = _NovaCompute(f"nova-{host}{suffix}", rig.service_ms, rig.token_ttl)
                server = oslo_messaging.get_rpc_server(
                    transport, oslo_messaging.Target(topic="compute", server=compute.host),
                    [compute], executor="threading", serializer=serializer)
                server.start()
                self.servers.append(server)
                self.computes.append(compute)
        self.routers["nova-hdpbf"] = self._router_on(self.transport)
        self.routers["nova-rpc"] = self._router_on(self.plain)
        self.api = rpcapi.ComputeAPI()
        from nova import context

        from .nova_api_objects import api_context
        self.ctxt = api_context(context)
        opener = Opener("api", load_reader_identity(rig.cfg, "api"))
        self.ledger_only = Step1Reader(ledger, opener, own_answers=False,
                                       writers=console_writers(rig.cfg))
        return True

    def _router_on(self, transport: Any) -> Any:
        saved = self.rpc.TRANSPORT, self.rpcapi._ROUTER
        self.rpc.TRANSPORT, self.rpcapi._ROUTER = transport, None
        try:
            self.rpcapi.ComputeAPI().router  # noqa: B018 (built on first use)
            return self.rpcapi._ROUTER
        finally:
            self.rpc.TRANSPORT, self.rpcapi._ROUTER = saved

    def _host(self, iid: str, config: str) -> str:
        return f"nova-{self.rig.hosts[iid]}" + ("-plain" if config == "nova-rpc" else "")

    def _instance(self, iid: str, config: str) -> Any:
        key = (iid, config)
        inst = self.instances.get(key)
        if inst is None:
            from .nova_api_objects import api_instance
            inst = self.instances[key] = api_instance(self.objects, self.ctxt, iid,
                                                      self._host(iid, config))
        return inst

    # -- the calls ------------------------------------------------------------------------
    def call(self, config: str, iid: str) -> tuple[dict, int | str]:
        self.rpcapi._ROUTER = self.routers[config]
        stats = self.driver.stats
        before = (stats["step1"], stats["step1_own"])
        info = self.api.get_vnc_console(self.ctxt, self._instance(iid, config), "novnc")
        if config == "nova-rpc":
            return info, 2
        if stats["step1"] > before[0]:
            return info, 1
        if stats["step1_own"] > before[1]:
            return info, STEP_OWN
        return info, 2

    def _key(self, iid: str) -> str:
        from ..openstack.nova_wire import reply_key
        return reply_key("compute", "get_vnc_console", iid, "novnc")

    def wait_committed(self, iids: list[str], timeout: float = 15.0) -> None:
        from ..openstack.driver_read import STEP1
        t0 = time.monotonic()
        while True:
            missing = [i for i in iids if self.ledger_only.lookup(
                self._key(i), self._host(i, "nova-hdpbf"))[1] != STEP1]
            if not missing:
                return
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{len(missing)} nova console records not committed "
                                   f"after {timeout}s")
            time.sleep(0.002)

    def served(self) -> list[dict]:
        return [rec for c in self.computes for rec in c.served]

    def micro(self, iids: list[str], n: int = MICRO_CALLS) -> dict:
        """``HdpbfDriver.send`` of a step-1 call as oslo's client hands it over."""
        import oslo_messaging
        from ..openstack.driver_read import STEP1
        ready = [i for i in iids if self.ledger_only.lookup(
            self._key(i), self._host(i, "nova-hdpbf"))[1] == STEP1]
        if not ready:
            return {"driver_step1_p50_us": None, "driver_step1_p99_us": None}
        ser = self.objects.base.NovaObjectSerializer()
        msgs = []
        for i in ready:
            inst = ser.serialize_entity(self.ctxt, self._instance(i, "nova-hdpbf"))
            target = oslo_messaging.Target(topic="compute", server=self._host(i, "nova-hdpbf"),
                                           version="6.0")
            msgs.append((target, {"method": "get_vnc_console", "version": "6.0",
                                  "args": {"instance": inst, "console_type": "novnc"}}))
        ctx = self.ctxt.to_dict()
        send = self.driver.send
        clock = time.perf_counter_ns
        before = self.driver.stats["step1"]
        times = []
        for k in range(n + WARM_CALLS):
            target, msg = msgs[k % len(msgs)]
            t0 = clock()
            send(target, ctx, msg, wait_for_reply=True, timeout=5)
            times.append(clock() - t0)
        times = times[WARM_CALLS:]
        assert self.driver.stats["step1"] - before == n + WARM_CALLS, "a micro call missed step 1"
        return {"driver_step1_p50_us": round(percentile(times, 50) / 1000, 2),
                "driver_step1_p99_us": round(percentile(times, 99) / 1000, 2),
                "driver_micro_calls": n}

    def floor(self, n: int = FLOOR_CALLS) -> dict:
        """nova's client alone: ``ComputeAPI.get_vnc_console`` (the Instance and context
        nova-api passes) on a transport whose driver returns compute's answer at once,
        and nova's serializer alone as oslo's client uses it (context and arguments to
        primitives, the reply back), each timed ``n`` times; means and p50s in ms."""
        import oslo_messaging
        from nova.console import type as ctype
        iids = sorted({i for i, _ in self.instances})[:INSTANCES_FOR_FLOOR]
        token = secrets.token_urlsafe()
        reply = ctype.ConsoleVNC(host="192.0.2.7", port=5901).get_connection_info(
            token, f"http://ctl:6080/vnc_auto.html?path=%3Ftoken%3D{token}")
        null = oslo_messaging.get_rpc_transport(self.conf, url="fake:/")
        null._driver.send = lambda *a, **kw: dict(reply)   # a driver that answers at once
        router = self._router_on(null)
        ser = router.serializer
        insts = [self._instance(i, "nova-hdpbf") for i in iids]
        ctxt, clock = self.ctxt, time.perf_counter_ns

        def serialize(inst: Any) -> None:  # oslo's RPCClient.call around the driver
            ser.serialize_context(ctxt)
            ser.serialize_entity(ctxt, inst)
            ser.serialize_entity(ctxt, "novnc")
            ser.deserialize_entity(ctxt, dict(reply))

        saved, self.rpcapi._ROUTER = self.rpcapi._ROUTER, router
        whole: list[int] = []
        alone: list[int] = []
        try:
            for k in range(n + WARM_CALLS):
                inst = insts[k % len(insts)]
                t0 = clock()
                info = self.api.get_vnc_console(ctxt, inst, "novnc")
                t1 = clock()
                serialize(inst)
                whole.append(t1 - t0)
                alone.append(clock() - t1)
                assert info == reply
        finally:
            self.rpcapi._ROUTER = saved
            null.cleanup()
        whole, alone = whole[WARM_CALLS:], alone[WARM_CALLS:]
        ms = lambda v: round(sum(v) / len(v) / 1e6, 4)  # noqa: E731
        return {"nova_client_floor_ms": ms(whole),
                "nova_client_floor_p50_ms": round(percentile(whole, 50) / 1e6, 4),
                "nova_serialize_ms": ms(alone),
                "nova_serialize_p50_ms": round(percentile(alone, 50) / 1e6, 4),
                "nova_floor_calls": n,
                "nova_instance_fields": len(self.objects.base.NovaObjectSerializer()
                                            .serialize_entity(ctxt, insts[0])
                                            ["nova_object.data"])}

    def close(self) -> None:
        from ..openstack import driver_record
        # In parallel: each rabbit listener takes seconds to stop (10 s for the four, one
        # after the other, on a loaded 2-core box).
        stoppers = [threading.Thread(target=lambda s=server: (s.stop(), s.wait()))
                    for server in self.servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        self.servers.clear()
        try:
            self.driver.flush(20)
        except TimeoutError as exc:
            self.rig.say(f"[yellow]nova-hdpbf: {exc}[/yellow]")
        if getattr(self, "ledger_only", None) is not None:
            self.ledger_only.close()
        self.plain.cleanup()
        self.rpc.cleanup()
        driver_record.shutdown(timeout=5)
