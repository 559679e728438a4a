"""nova 34's own compute RPC client on ``hdpbf+rabbit://`` (real RabbitMQ), run in a
process of its own by ../test_nova_rabbit.py (nova is imported only in processes of its
own, never beside the other tests).

nova-api hosts: ``nova.compute.rpcapi.ComputeAPI`` after ``nova.config.parse_args`` and
``nova.rpc.init``, with real ``objects.Instance`` and ``RequestContext``.  The compute
host: ``nova.rpc.get_server`` (nova's serializer; threading, as nova without eventlet)
with an endpoint on ComputeManager's method signatures.  The mesh is in-process
(``[hdpbf] embedded``): what is under test here is the RPC path through RabbitMQ."""
from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

HOST = f"cmp-{uuid.uuid4().hex[:8]}"
PLAIN_HOST = f"cmpplain-{uuid.uuid4().hex[:8]}"
RABBIT = os.environ.get("HDPBF_NOVA_RABBIT", "rabbit://guest:guest@127.0.0.1:5672/")


class ComputeManagerStandIn:
    """ComputeManager's method signatures; connect_info as nova's console types build it."""

    def __init__(self):
        import oslo_messaging
        self.target = oslo_messaging.Target(version="6.4")
        self.received: list[tuple] = []
        self.done = threading.Condition()

    def _seen(self, method, context, **args):
        prims = {k: (v.obj_to_primitive() if hasattr(v, "obj_to_primitive") else v)
                 for k, v in args.items()}
        ctx = {k: v for k, v in context.to_dict().items()
               if k not in ("request_id", "timestamp", "global_request_id")}
        with self.done:
            self.received.append((method, ctx, prims))
            self.done.notify_all()

    def get_vnc_console(self, context, console_type, instance):
        from nova import exception
        from nova.console import type as ctype
        self._seen("get_vnc_console", context, console_type=console_type, instance=instance)
        if console_type != "novnc":  # as nova's ComputeManager.get_vnc_console
            raise exception.ConsoleTypeInvalid(console_type=console_type)
        token = uuid.uuid4().hex + uuid.uuid4().hex
        return ctype.ConsoleVNC(host="192.0.2.7", port=5901).get_connection_info(
            token, f"http://ctl:6080/vnc_auto.html?path=%3Ftoken%3D{token}")

    def get_instance_diagnostics(self, context, instance):
        self._seen("get_instance_diagnostics", context, instance=instance)
        return {"state": "running", "uuid": instance.uuid, "cpu": [1, 2.5, None]}

    def pause_instance(self, context, instance):
        self._seen("pause_instance", context, instance=instance)

    def terminate_instance(self, context, instance, bdms):
        self._seen("terminate_instance", context, instance=instance)


class Nova:
    def __init__(self, tmp):
        from pbft_tasks.topology import init_mesh
        self.cfg = init_mesh(tmp / "mesh", clients=("admin", "cmp"), readers=("api0", "api1"),
                             hosts={"cmp": (HOST,)})
        self.mesh_config = str(tmp / "mesh" / "mesh.json")

        import nova.conf
        from nova import config, objects, rpc
        from nova.compute import rpcapi
        from mesh.openstack import driver
        objects.register_all()
        self.CONF = CONF = nova.conf.CONF
        config.parse_args([], default_config_files=[], configure_db=False, init_rpc=False)
        driver.register_opts(CONF)
        from oslo_messaging import conffixture
        conffixture.ConfFixture(CONF)  # oslo registers its options on first use only
        CONF.set_override("transport_url", "hdpbf+" + RABBIT)
        CONF.set_override("rpc_response_timeout", 20)
        CONF.set_override("compute", "6.4", group="upgrade_levels")
        for k, v in {"mesh_config": self.mesh_config, "embedded": True, "client": "cmp",
                     "reader": "api0", "ledger": self.ledger(0), "own_answers": False}.items():
            CONF.set_override(k, v, group="hdpbf")
        rpc.init(CONF)
        self.rpc, self.rpcapi = rpc, rpcapi
        self.transport = rpc.TRANSPORT
        self.compute = ComputeManagerStandIn()
        import oslo_messaging
        self.server = rpc.get_server(oslo_messaging.Target(topic="compute", server=HOST),
                                     [self.compute], objects.base.NovaObjectSerializer())
        self.server.start()
        self.api0 = rpcapi.ComputeAPI()
        self.api0.router  # noqa: B018 (the router is a singleton built on first use)
        self.routers = {0: rpcapi._ROUTER}

        # A second API host: node 1's ledger copy and reader key api1, its own transport.
        from oslo_config import cfg
        from oslo_messaging import conffixture
        conf1 = cfg.ConfigOpts()
        conf1([], project="nova-api1")
        conffixture.ConfFixture(conf1)
        driver.register_opts(conf1)
        for k, v in {"mesh_config": self.mesh_config, "embedded": True, "reader": "api1",
                     "ledger": self.ledger(1), "own_answers": False}.items():
            conf1.set_override(k, v, group="hdpbf")
        self.transport1 = oslo_messaging.get_rpc_transport(conf1, url="hdpbf+" + RABBIT)
        self.routers[1] = self._router_on(self.transport1)

        # Plain nova (rabbit://, no hdpbf), for comparing what crosses the wire.
        self.plain_transport = oslo_messaging.get_rpc_transport(CONF, url=RABBIT)
        self.routers["plain"] = self._router_on(self.plain_transport)
        self.plain_compute = ComputeManagerStandIn()
        self.plain_server = oslo_messaging.get_rpc_server(
            self.plain_transport, oslo_messaging.Target(topic="compute", server=PLAIN_HOST),
            [self.plain_compute], executor="threading",
            serializer=rpc.RequestContextSerializer(objects.base.NovaObjectSerializer()))
        self.plain_server.start()

    def _router_on(self, transport):
        saved_t, saved_r = self.rpc.TRANSPORT, self.rpcapi._ROUTER
        self.rpc.TRANSPORT, self.rpcapi._ROUTER = transport, None
        try:
            self.rpcapi.ComputeAPI().router  # noqa: B018
            return self.rpcapi._ROUTER
        finally:
            self.rpc.TRANSPORT, self.rpcapi._ROUTER = saved_t, saved_r

    def on(self, host):
        """nova-api host ``host``'s ComputeAPI (its router: its transport)."""
        self.rpcapi._ROUTER = self.routers[host]
        return self.api0

    def ledger(self, node):
        return os.path.join(self.cfg.node_data_dir(node), "ledger.sqlite")

    @staticmethod
    def drv(transport):
        return transport._driver

    def close(self):
        from mesh.openstack import driver_record
        for s in (self.server, self.plain_server):
            s.stop()
            s.wait()
        for t in (self.transport1, self.plain_transport):
            t.cleanup()  # rabbit's reply pollers take a few seconds each to stop
        self.rpc.cleanup()
        driver_record.shutdown()


@pytest.fixture(scope="module")
def nova(tmp_path_factory):
    n = Nova(tmp_path_factory.mktemp("nova"))
    yield n
    n.close()


def _ctx():
    from nova import context
    return context.RequestContext(user_id="demo", project_id="demo-project", is_admin=False,
                                  roles=["member"])


def _instance(host, vm_uuid=None):
    from nova import objects
    return objects.Instance(uuid=vm_uuid or str(uuid.uuid4()), host=host, node=host,
                            vm_state="active", task_state=None, project_id="demo-project",
                            user_id="demo", display_name="vm")


def _wait_received(compute, n):
    with compute.done:
        assert compute.done.wait_for(lambda: len(compute.received) >= n, 20), compute.received


def test_step_2_then_step_1_with_the_same_token_then_another_api_host(nova):
    from mesh.openstack import driver_record
    inst = _instance(HOST)
    first = nova.on(0).get_vnc_console(_ctx(), inst, "novnc")
    assert set(first) >= {"host", "port", "token", "access_url"}
    assert nova.drv(nova.transport).stats["step2"] == 1
    (rec,) = driver_record.recorders()
    nova.drv(nova.transport).flush(30)
    second = nova.on(0).get_vnc_console(_ctx(), inst, "novnc")
    assert second == first, nova.drv(nova.transport).stats
    assert nova.drv(nova.transport).stats["step1"] == 1
    third = nova.on(1).get_vnc_console(_ctx(), inst, "novnc")
    assert third == first and nova.drv(nova.transport1).stats == {"step1": 1}
    assert [m for m, *_ in nova.compute.received].count("get_vnc_console") == 1
    # What compute got was nova's wire: an Instance object and a RequestContext.
    method, ctx, args = nova.compute.received[0]
    assert args["instance"]["nova_object.name"] == "Instance"
    assert args["instance"]["nova_object.data"]["uuid"] == inst.uuid
    assert ctx["user_id"] == "demo" and ctx["project_id"] == "demo-project"


def test_terminate_invalidates(nova):
    from mesh.openstack import driver_record
    inst = _instance(HOST)
    info = nova.on(0).get_vnc_console(_ctx(), inst, "novnc")
    (rec,) = driver_record.recorders()
    nova.drv(nova.transport).flush(30)
    assert nova.on(1).get_vnc_console(_ctx(), inst, "novnc") == info
    before = len(nova.compute.received)
    nova.on(0).terminate_instance(_ctx(), inst, [])
    _wait_received(nova.compute, before + 1)
    drv = nova.drv(nova.transport)
    deadline = time.monotonic() + 20
    while not drv.stats["invalidated.terminate_instance"]:
        assert time.monotonic() < deadline, "the terminate was never seen returning"
        time.sleep(0.01)
    nova.drv(nova.transport).flush(30)
    after = nova.on(1).get_vnc_console(_ctx(), inst, "novnc")
    assert after["token"] != info["token"]
    assert nova.drv(nova.transport1).stats["miss.deleted"] == 1


def test_unrelated_cast_and_call_pass_through_with_identical_bodies_and_replies(nova):
    vm = str(uuid.uuid4())
    got = {}
    for via, host, compute in ((0, HOST, nova.compute), ("plain", PLAIN_HOST, nova.plain_compute)):
        api = nova.on(via)
        n = len(compute.received)
        reply = api.get_instance_diagnostics(_ctx(), _instance(host, vm))
        api.pause_instance(_ctx(), _instance(host, vm))
        _wait_received(compute, n + 2)
        got[via] = (reply, [(m, c, {k: _without_host(v) for k, v in a.items()})
                            for m, c, a in compute.received[n:n + 2]])
    assert got[0] == got["plain"]
    assert got[0][0] == {"state": "running", "uuid": vm, "cpu": [1, 2.5, None]}
    assert not {k for k in nova.drv(nova.transport).stats if k.startswith(("step", "miss"))
                } - {"step1", "step2", "miss.missing", "miss.deleted"}


def _without_host(prim):
    """The primitive with the compute host names (which differ by design) blanked."""
    if isinstance(prim, dict) and "nova_object.data" in prim:
        data = dict(prim["nova_object.data"], host="-", node="-")
        return {**prim, "nova_object.data": data}
    return prim


def test_the_stand_ins_speak_novas_wire_both_ways(nova):
    """``hdpbf compute`` answers nova's own client; the stand-in reader's step 2 is
    accepted by a compute on nova's serializer; a refusal is compute's, not the broker's."""
    from mesh.openstack import ComputeRefused, ComputeService, ConsoleReader
    host = f"standin-{uuid.uuid4().hex[:8]}"
    with ComputeService(host, RABBIT) as standin:
        vm = str(uuid.uuid4())
        info = nova.on("plain").get_vnc_console(_ctx(), _instance(host, vm), "novnc")
        assert info["token"] and standin.served[-1]["instance"] == vm
        assert info == standin.served[-1]["connect_info"]

    vm = str(uuid.uuid4())
    reader = ConsoleReader("/nonexistent/ledger.sqlite", RABBIT, {vm: PLAIN_HOST},
                           rpc_timeout=20)
    try:
        info, step = reader.get_vnc_console(vm)
        assert step == 2 and info["token"]
        method, ctx, args = nova.plain_compute.received[-1]
        assert method == "get_vnc_console"
        assert args["instance"]["nova_object.data"]["uuid"] == vm   # an objects.Instance
        assert ctx["user_id"]                                       # a RequestContext
        with pytest.raises(ComputeRefused, match="ConsoleTypeInvalid"):
            reader.get_vnc_console(vm, "spice-html5")
    finally:
        reader.close()
