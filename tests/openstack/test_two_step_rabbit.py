"""The two-step read on real RabbitMQ: 4 Celery workers (LocalMesh), compute services as
oslo.messaging RPC servers on the rabbit driver, one ConsoleReader per API node (own
answers on, the default; a ``Gate`` holds compute's records back where a test needs "before
the commit" to be certain).

Marked ``broker``: needs RabbitMQ and Redis and FAILS (never skips) without them.  The
mesh and the compute services are shared by the module, on a vhost of its own
(``vhosts``, tests/conftest.py); the broker stop/start test runs last and always
restarts the broker (``rabbit_app_stopped``, tests/services.py: ``stop_app`` and
``start_app``, never a full server stop, and not while /tmp/hdpbf-quiet exists)."""
from __future__ import annotations

import glob
import logging
import time

import pytest

from ledger import LedgerReader
from mesh.openstack import (STEP_OWN, ComputeService, ConsoleReader, ConsoleRecorder,
                            ConsoleUnavailable, Opener, Sealer, instance_key)
from mesh.openstack.rpc import transport_url_from_broker
from pbft_tasks.topology import (MeshConfig, add_readers, console_writers, load_reader_identity,
                                 reader_keys)
from tests.meshkit import Mesh, wait_until
from tests.services import rabbit_app_stopped, wait_not_quiet

from .kit import FakeClock
from .test_own_answers import Gate

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RPC_TIMEOUT = 1.5


class Rig:
    def __init__(self, base, broker: str):
        wait_not_quiet()
        # the one recorder of this rig records for every compute host of the tests
        self.mesh = Mesh(base, 4, broker,
                         hosts={"admin": ("cmp1", "cmp2", "cmp-gate", "cmp-gate2")})
        add_readers(self.mesh.config_path, ["api0", "api1"])
        self.cfg = MeshConfig.load(self.mesh.config_path)
        self.url = transport_url_from_broker(broker)
        self.mesh.start()
        self.recorder = ConsoleRecorder(self.mesh.client(), Sealer(reader_keys(self.cfg)),
                                        attempt_timeout=3.0)
        self.hosts: dict[str, str] = {}
        self.computes = {h: ComputeService(h, self.url, recorder=self.recorder).start()
                         for h in ("cmp1", "cmp2")}
        self.readers: dict[tuple[int, str | None], ConsoleReader] = {}

    def api(self, node: int, reader: str | None = "api0") -> ConsoleReader:
        """nova-api on ``node``: its own ledger copy, the shared host map."""
        if (node, reader) not in self.readers:
            opener = Opener(reader, load_reader_identity(self.cfg, reader)) if reader else None
            self.readers[node, reader] = ConsoleReader(
                self.mesh.ledger_path(node), self.url, self.hosts, opener, rpc_timeout=RPC_TIMEOUT,
                writers=console_writers(self.cfg))
        return self.readers[node, reader]

    def step1_everywhere(self, instance: str) -> list:
        return [self.api(i).step1(instance) for i in range(self.mesh.n)]

    def wait_everywhere(self, instance: str, expected, timeout: float = 20.0) -> None:
        """flush() returns at f+1 replies; the other replicas commit the same block a
        moment later.  Wait until every node's step 1 gives ``expected``."""
        wait_until(lambda: self.step1_everywhere(instance) == [expected] * self.mesh.n,
                   timeout, lambda: f"every node's step 1 for {instance} to be {expected}; "
                                    f"now {self.step1_everywhere(instance)}; node status "
                                    f"{self._statuses()}")

    def _statuses(self):
        try:
            return self.mesh.local.statuses(timeout=3)
        except Exception as exc:
            return repr(exc)

    def close(self) -> None:
        for svc in self.computes.values():
            svc.stop()
        self.recorder.close(timeout=5)
        for r in self.readers.values():
            r.close()
        self.mesh.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, vhosts):
    broker = vhosts.new()
    r = Rig(tmp_path_factory.mktemp("openstack"), broker)
    try:
        yield r
    finally:
        r.close()
        vhosts.delete(broker)


def test_first_call_is_step_2_then_step_1_on_every_node(rig):
    rig.hosts["vm1"] = "cmp1"
    info, step = rig.api(0).get_vnc_console("vm1")
    assert step == 2
    assert rig.computes["cmp1"].served[-1]["connect_info"] == info
    rig.recorder.flush(30)
    rig.wait_everywhere("vm1", info)
    for node in range(rig.mesh.n):
        again, step = rig.api(node).get_vnc_console("vm1")
        assert step == 1, f"node {node} went to step 2 after the commit"
        assert again == info, f"node {node} answered something compute never returned"


def test_expiry_makes_step_1_miss(rig):
    # readers on a clock of the test's own: the token outlives the commit however slow
    # the machine, and expires when the test says so
    clock = FakeClock()
    opener = Opener("api0", load_reader_identity(rig.cfg, "api0"))
    apis = [ConsoleReader(rig.mesh.ledger_path(i), rig.url, rig.hosts, opener,
                          rpc_timeout=RPC_TIMEOUT, clock=clock, writers=console_writers(rig.cfg))
            for i in range(rig.mesh.n)]
    try:
        rig.hosts["vm-exp"] = "cmp1"
        first, step = apis[1].get_vnc_console("vm-exp")
        assert step == 2
        rig.recorder.flush(30)
        wait_until(lambda: [a.step1("vm-exp") for a in apis] == [first] * rig.mesh.n, 20,
                   lambda: f"every node's step 1 for vm-exp; now "
                           f"{[a.step1('vm-exp') for a in apis]}")
        served = next(s for s in reversed(rig.computes["cmp1"].served)
                      if s["connect_info"] == first)
        clock.now = served["expires_at"]
        assert [a.step1("vm-exp") for a in apis] == [None] * rig.mesh.n
        second, step = apis[1].get_vnc_console("vm-exp")
        assert step == 2 and second["token"] != first["token"]
    finally:
        for a in apis:
            a.close()


def test_delete_invalidates_every_node(rig):
    rig.hosts["vm-del"] = "cmp1"
    info, _ = rig.api(2).get_vnc_console("vm-del")
    rig.recorder.flush(30)
    rig.wait_everywhere("vm-del", info)
    rig.recorder.invalidate("vm-del")
    rig.wait_everywhere("vm-del", None)


def test_move_lets_the_new_host_serve(rig):
    rig.hosts["vm-mv"] = "cmp1"
    old, _ = rig.api(3).get_vnc_console("vm-mv")
    rig.recorder.flush(30)
    rig.hosts["vm-mv"] = "cmp2"
    rig.recorder.invalidate("vm-mv")
    new, step = rig.api(3).get_vnc_console("vm-mv")
    assert step == 2 and new["host"] == "cmp2" and new["token"] != old["token"]
    rig.recorder.flush(30)
    rig.wait_everywhere("vm-mv", new)


def test_sealed_token_unreadable_without_the_key(rig):
    rig.hosts["vm-seal"] = "cmp1"
    info, _ = rig.api(0).get_vnc_console("vm-seal")
    rig.recorder.flush(30)
    rig.wait_everywhere("vm-seal", info)
    keyless = rig.api(1, reader=None)
    assert keyless.step1("vm-seal") is None and keyless.unreadable >= 1
    with LedgerReader(rig.mesh.ledger_path(1)) as led:
        value = led.get_value(instance_key("vm-seal"))
    assert set(value["sealed"]) == {"api0", "api1"} and "token" not in value
    for path in glob.glob(str(rig.cfg.data_path / "node*" / "ledger.sqlite*")):
        raw = open(path, "rb").read()
        assert info["token"].encode() not in raw, f"{path} holds the token in clear"
    assert rig.api(1, "api0").step1("vm-seal") == info


# -- own answers: what this API node got from compute, before the ledger has it -----------

def _gated_compute(rig, host):
    gate = Gate(rig.recorder)
    return gate, ComputeService(host, rig.url, recorder=gate).start()


def test_own_answer_before_the_commit_then_the_ledger_and_never_another_nodes(rig):
    gate, svc = _gated_compute(rig, "cmp-gate")
    try:
        rig.hosts["vm-own"] = "cmp-gate"
        api0, api1 = rig.api(0), rig.api(1)
        mine, step = api0.get_vnc_console("vm-own")
        assert step == 2
        assert api0.get_vnc_console("vm-own") == (mine, STEP_OWN)   # the commit is held back
        # another API node: its ledger has nothing and my own answers are not its own
        assert api1.step1("vm-own") is None and api1.own_answer("vm-own") is None
        theirs, step = api1.get_vnc_console("vm-own")
        assert step == 2 and theirs["token"] != mine["token"]
        assert api1.get_vnc_console("vm-own") == (theirs, STEP_OWN)
        assert api0.get_vnc_console("vm-own") == (mine, STEP_OWN)
        gate.release()                       # both puts go to consensus, in order
        rig.recorder.flush(30)
        rig.wait_everywhere("vm-own", theirs)  # the newest put is what the ledger keeps
        # the ledger moved past both own answers: they are dropped, step 1 is the ledger
        assert api0.get_vnc_console("vm-own") == (theirs, 1) and not api0.has_own("vm-own")
        assert api1.get_vnc_console("vm-own") == (theirs, 1) and not api1.has_own("vm-own")
        assert [s["connect_info"] for s in svc.served] == [mine, theirs]
    finally:
        svc.stop()


def test_delete_after_an_own_answer_is_never_served_again(rig):
    gate, svc = _gated_compute(rig, "cmp-gate2")
    try:
        rig.hosts["vm-own-del"] = "cmp-gate2"
        api = rig.api(2)
        mine, step = api.get_vnc_console("vm-own-del")
        assert step == 2 and api.get_vnc_console("vm-own-del") == (mine, STEP_OWN)
        gate.release()
        rig.recorder.invalidate("vm-own-del")   # after the put, on the same queue
        rig.wait_everywhere("vm-own-del", None)
        again, step = api.get_vnc_console("vm-own-del")
        assert step == 2 and again["token"] != mine["token"]
        rig.recorder.flush(30)
        rig.wait_everywhere("vm-own-del", again)
        for node in range(rig.mesh.n):
            assert rig.api(node).get_vnc_console("vm-own-del") == (again, 1), f"node {node}"
    finally:
        svc.stop()


# -- broker stop/start (last: it disturbs everything) -------------------------------------

def test_broker_outage_step_1_answers_step_2_fails_fast_and_the_mesh_catches_up(rig, caplog):
    caplog.set_level(logging.CRITICAL, logger="oslo.messaging")  # reconnect chatter
    rig.hosts.update({"vm-out": "cmp1", "vm-down": "cmp1", "vm-during": "cmp1", "vm-after": "cmp2"})
    before, _ = rig.api(0).get_vnc_console("vm-out")
    rig.recorder.flush(30)
    rig.wait_everywhere("vm-out", before)
    height = rig.mesh.wait_converged(timeout=30)[0]
    warm = rig.api(2)
    warm.get_vnc_console("vm-out")
    cold = ConsoleReader(rig.mesh.ledger_path(2), rig.url, rig.hosts, None, rpc_timeout=RPC_TIMEOUT,
                         writers=console_writers(rig.cfg))
    try:
        with rabbit_app_stopped():
            pending = _during_the_outage(rig, before, warm, cold)
    finally:
        cold.close()
    rig.mesh.local.wait_ready(timeout=90)  # every worker answers pbft.status again
    # The update kept during the outage commits (checked on every node below), sent again
    # by the recorder's retry or by the client's own re-publish once a broker answers
    # (mesh/client.py fails over its request connection): which one depends on where the
    # outage caught the request, so neither count is asserted.
    rig.recorder.flush(90)
    # a new console after the outage: RPC works again and every node gets it
    after = wait_until(lambda: _try_step2(rig, "vm-after"), 60,
                       "the compute RPC to work again after the broker restart", interval=0.5)
    rig.recorder.flush(60)
    rig.wait_everywhere("vm-after", after, timeout=30)
    rig.wait_everywhere("vm-during", pending, timeout=30)
    assert rig.mesh.wait_converged(timeout=60, at_least=height + 1)


def _during_the_outage(rig, before, warm, cold) -> dict:
    for node in range(rig.mesh.n):  # step 1 is local SQLite: the broker is irrelevant
        assert rig.api(node).get_vnc_console("vm-out") == (before, 1)
    # step 2 fails fast, for a client that has called before and for one that has not
    # (the reader's own deadline ends the call, ConsoleReader._step2; how long it took is
    # printed, not asserted)
    for api in (warm, cold):
        t0 = time.monotonic()
        with pytest.raises(ConsoleUnavailable):
            api.get_vnc_console("vm-down")  # (a call left hanging may still be
            # served once the broker is back: that is a new console, and fine)
        print(f"\nstep 2 with the broker down failed after {time.monotonic() - t0:.2f}s "
              f"(rpc_timeout {RPC_TIMEOUT}s)")
    # compute served something while the bus was down (e.g. a call that was already
    # in flight): the recorder takes it up and keeps it until consensus is reachable
    # again (it commits after the outage, below)
    pending, _ = rig.computes["cmp1"].connect_info("vm-during")
    rig.recorder.record("vm-during", "novnc", pending,
                        time.time() + 600, host="cmp1")
    wait_until(lambda: rig.recorder.sending >= 1, 60,
               "the recorder to take the update up and send it")
    assert rig.recorder.pending >= 1
    return pending


def _try_step2(rig, instance):
    try:
        info, step = rig.api(3).get_vnc_console(instance)
    except ConsoleUnavailable:
        return None
    assert step == 2
    return info
