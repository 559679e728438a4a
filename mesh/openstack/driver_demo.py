"""``hdpbf demo``'s second act: console reads through the ``hdpbf`` oslo.messaging driver.

Owns: a small OpenStack in one process on ``hdpbf+fake:/`` (oslo's in-process driver,
wrapped by ours) over the demo's own embedded mesh: one compute host whose driver
records console replies through consensus, two API hosts (nova-api) each reading its
own node's ledger copy with its own reader key.  Calls are made as nova's ComputeAPI
makes them (topic ``compute``, server = the instance's host, the instance as a
NovaObject primitive, a serialized RequestContext), so what the driver sees is nova's
wire.  No nova import: the demo runs on the runtime dependencies alone.

The story, one row per call: step 2 first, the API host's own answer while consensus
commits, step 1 after the commit on both API hosts with the same token, and step 2
again once a terminate has deleted the entry everywhere.
"""
from __future__ import annotations

import secrets
import time
import warnings
from typing import Any

from . import driver as hdpbf_driver
from . import driver_record
from .nova_wire import instance_primitive, request_context

EXCHANGE = "nova"
STEP_NAMES = {"step1": "1 (ledger)", "step1_own": "1o (own answer)", "step2": "2 (RPC)"}


class _DemoCompute:
    """nova's ComputeManager signatures; a fresh token per console, as nova mints them."""

    def __init__(self, host: str):
        import oslo_messaging
        self.target = oslo_messaging.Target(version="6.4")
        self.host = host
        self.served = 0

    def get_vnc_console(self, context: Any, console_type: str, instance: Any) -> dict:
        self.served += 1
        token = secrets.token_hex(16)
        return {"host": "192.0.2.10", "port": 5900, "internal_access_path": None,
                "token": token,
                "access_url": f"http://ctl:6080/vnc_auto.html?path=%3Ftoken%3D{token}"}

    def terminate_instance(self, context: Any, instance: Any, bdms: Any) -> None:
        pass


def _conf(**hdpbf: Any):
    from oslo_config import cfg
    from oslo_messaging import conffixture
    conf = cfg.ConfigOpts()  # one nova.conf per simulated host
    conf([], project="hdpbf-demo")
    conffixture.ConfFixture(conf)  # oslo's own options, registered on this ConfigOpts
    hdpbf_driver.register_opts(conf)
    for k, v in hdpbf.items():
        conf.set_override(k, v, group="hdpbf")
    return conf


def run(config_path: str, mesh: Any, cfg: Any) -> dict:
    """The reads; ``mesh`` is the demo's embedded mesh (now stepped by the recorder)."""
    import os

    import oslo_messaging
    driver_record.use_embedded(config_path, mesh)
    ledger = lambda node: os.path.join(cfg.node_data_dir(node), "ledger.sqlite")  # noqa: E731
    common = {"mesh_config": config_path, "embedded": True}
    transports: list = []
    server = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            def transport(conf):
                t = oslo_messaging.get_rpc_transport(conf, url="hdpbf+fake:/")
                transports.append(t)
                return t
            host = "cmp"  # the client "cmp" speaks for the host of its own name
            cmp_t = transport(_conf(client="cmp", **common))
            compute = _DemoCompute(host)
            server = oslo_messaging.get_rpc_server(
                cmp_t, oslo_messaging.Target(exchange=EXCHANGE, topic="compute", server=host),
                [compute], executor="threading")
            server.start()
            apis = {f"api{n}": transport(_conf(ledger=ledger(n), reader=f"api{n}", **common))
                    for n in (0, 1)}
            target = oslo_messaging.Target(exchange=EXCHANGE, topic="compute", version="6.0")
            clients = {name: oslo_messaging.get_rpc_client(t, target).prepare(server=host,
                                                                             timeout=10)
                       for name, t in apis.items()}
            vm = "6f5c3f0e-8a3b-4c0e-9d7e-0123456789ab"
            rows: list[dict] = []

            def call(api: str, note: str) -> None:
                drv = apis[api]._driver
                before = dict(drv.stats)
                t0 = time.perf_counter()
                info = clients[api].call(request_context(), "get_vnc_console",
                                         instance=instance_primitive(vm, host),
                                         console_type="novnc")
                ms = (time.perf_counter() - t0) * 1000
                step = next((k for k in ("step1", "step1_own", "step2")
                             if drv.stats[k] > before.get(k, 0)), "?")
                rows.append({"api": api, "step": step, "token": info["token"],
                             "ms": round(ms, 3), "note": note})

            cmp_driver = cmp_t._driver
            call("api0", "nothing in the ledger yet")
            call("api0", "at once: consensus still committing")
            cmp_driver.flush(30)
            call("api0", "after the commit")
            call("api1", "another API host, its own ledger copy")
            clients["api0"].cast(request_context(), "terminate_instance",
                                 instance=instance_primitive(vm, host), bdms=[])
            deadline = time.monotonic() + 10
            while not cmp_driver.stats["invalidated.terminate_instance"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the demo's terminate_instance never returned")
                time.sleep(0.005)
            cmp_driver.flush(30)
            call("api1", "after terminate: deleted everywhere")
            counts = {api: {k: t._driver.stats[k] for k in ("step1", "step1_own", "step2")}
                      for api, t in apis.items()}
            return {"calls": rows, "steps": counts, "compute_served": compute.served,
                    "recorded": cmp_driver.stats["recorded"]}
        finally:
            if server is not None:
                server.stop()
                server.wait()
            for t in transports:
                t.cleanup()
            driver_record.shutdown()


def show(result: dict, out: Any) -> None:
    from rich.table import Table
    table = Table(title="console reads through the hdpbf oslo.messaging driver "
                        "(nova's wire on hdpbf+fake:/)")
    for col in ("#", "API host", "answered by step", "token", "ms", ""):
        table.add_column(col)
    for n, r in enumerate(result["calls"], start=1):
        table.add_row(str(n), r["api"], STEP_NAMES.get(r["step"], r["step"]),
                      r["token"][:12] + "…", f"{r['ms']:.2f}", r["note"])
    out.print(table)
    per = "; ".join(f"{api}: step 1 {c['step1']}, own {c['step1_own']}, step 2 {c['step2']}"
                    for api, c in result["steps"].items())
    out.print(f"{per}; compute served {result['compute_served']} of "
              f"{len(result['calls'])} calls")
