"""Own answers ("read your own RPC"): the rules of mesh/openstack/reader.py with fakes.

A ``FakeLedger`` stands for the node's ledger copy (raw records with versions and
tombstones, as ``ledger/state.py`` writes them) and a ``FakeCompute`` for the RPC client
(a fresh token per call, expiry in ``rpc.EXPIRES_AT_FIELD`` like a recording compute).
Each test: a step-2 call, then what the ledger commits, then which step answers.
"""
from __future__ import annotations

import threading
import time

import pytest

from mesh.openstack import STEP_OWN, ConsoleReader, instance_key, nova_wire, rpc, seal_console
from mesh.openstack.sealing import NOVA_KEYS

from .kit import FakeClock


class FakeLedger:
    """Raw kv records by key, versioned like ledger/state.py (put: +1; delete of a live
    record: tombstone +1)."""

    def __init__(self):
        self.records: dict[str, dict] = {}

    def get_record(self, key):
        return self.records.get(key)

    def _version(self, key):
        old = self.records.get(key)
        return old["version"] if old else 0

    def put(self, instance, info, host, expires_at):
        key = instance_key(instance)
        self.records[key] = {"value": seal_console(instance, "novnc", host, info, None),
                             "version": self._version(key) + 1, "block": 1,
                             "expires_at": expires_at, "writer": host}

    def delete(self, instance):
        key = instance_key(instance)
        old = self.records.get(key)
        if old is not None and not old.get("deleted"):
            self.records[key] = {"deleted": True, "version": old["version"] + 1, "block": 2,
                                 "expires_at": None}

    def close(self):
        pass


class FakeCompute:
    """The RPC client: ``prepare(server=host).call(...)`` mints a console per call."""

    def __init__(self, ttl=600.0, send_expiry=True, clock=time.time):
        self.ttl, self.send_expiry, self.clock = ttl, send_expiry, clock
        self.calls: list[tuple[str, str]] = []
        self.served: list[tuple[str, dict, float]] = []  # (host, connect_info, expires_at)
        self._lock = threading.Lock()
        self._n = 0

    def prepare(self, server, **_):
        compute = self

        class _Ctxt:
            def call(self, ctxt, method, instance, console_type):
                assert method == "get_vnc_console"
                instance = nova_wire.instance_uuid(instance)  # nova's wire: a primitive
                assert instance is not None and ctxt["user_id"]  # a real context
                with compute._lock:
                    compute._n += 1
                    token = f"tok-{compute._n}"
                    compute.calls.append((server, instance))
                info = {"host": server, "port": 5900, "internal_access_path": None,
                        "token": token, "access_url": f"http://vnc/?token={token}"}
                expires_at = compute.clock() + compute.ttl
                compute.served.append((server, dict(info), expires_at))
                return {**info, rpc.EXPIRES_AT_FIELD: expires_at} if compute.send_expiry \
                    else info
        return _Ctxt()


def make_reader(ledger=None, compute=None, hosts=None, **kw) -> ConsoleReader:
    r = ConsoleReader("/nonexistent/ledger.sqlite", "fake:/unused", hosts or {"i1": "cmp1"},
                      None, rpc_timeout=2.0, **kw)
    r._ledger = ledger if ledger is not None else FakeLedger()
    r._client = compute if compute is not None else FakeCompute()
    return r


@pytest.fixture
def setup():
    ledger, compute = FakeLedger(), FakeCompute()
    reader = make_reader(ledger, compute)
    yield ledger, compute, reader
    reader.close()


def _commit_own_put(ledger, compute, index=-1):
    host, info, expires_at = compute.served[index]
    ledger.put(compute.calls[index][1], info, host, expires_at)


def test_served_as_own_answer_before_the_commit_lands(setup):
    ledger, compute, reader = setup
    first, step = reader.get_vnc_console("i1")
    assert step == 2 and set(first) == set(NOVA_KEYS)     # the expiry field is stripped
    for _ in range(3):
        assert reader.get_vnc_console("i1") == (first, STEP_OWN)
    assert len(compute.calls) == 1
    assert (reader.step1_hits, reader.step1_own_answers, reader.step2_calls) == (0, 3, 1)
    assert reader.step1("i1") is None                     # step1() is the ledger alone


def test_dropped_once_the_ledger_has_it_then_a_ledger_hit(setup):
    ledger, compute, reader = setup
    first, _ = reader.get_vnc_console("i1")
    _commit_own_put(ledger, compute)
    assert reader.get_vnc_console("i1") == (first, 1)
    assert not reader.has_own("i1") and reader.own_size == 0
    assert (reader.step1_hits, reader.step1_own_answers) == (1, 0)


def test_a_committed_delete_wins(setup):
    ledger, compute, reader = setup
    first, _ = reader.get_vnc_console("i1")
    _commit_own_put(ledger, compute)
    ledger.delete("i1")                                   # put then delete, both committed
    again, step = reader.get_vnc_console("i1")
    assert step == 2 and again["token"] != first["token"]


def test_a_delete_committed_before_our_put_lands_wins(setup):
    """The instance had an older record; our RPC went out at its version; a delete
    commits (tombstone) while our own put is still on its way: the own answer is dead."""
    ledger, compute, reader = setup
    ledger.put("i1", {"host": "old", "port": 1, "internal_access_path": None, "token": "old",
                      "access_url": None}, "old-host", time.time() + 600)
    first, step = reader.get_vnc_console("i1")            # old-host entry: a miss
    assert step == 2 and reader.get_vnc_console("i1") == (first, STEP_OWN)
    ledger.delete("i1")
    again, step = reader.get_vnc_console("i1")
    assert step == 2 and again["token"] != first["token"]
    assert all(a != first for a in (reader.own_answer("i1"), reader.step1("i1")))


def test_a_committed_update_from_elsewhere_wins(setup):
    ledger, compute, reader = setup
    first, _ = reader.get_vnc_console("i1")
    other = {"host": "cmp1", "port": 5900, "internal_access_path": None, "token": "theirs",
             "access_url": "http://vnc/?token=theirs"}
    ledger.put("i1", other, "cmp1", time.time() + 600)   # another API node's call committed
    assert reader.get_vnc_console("i1") == (other, 1)
    assert not reader.has_own("i1")


def test_a_moved_instance_never_gets_the_old_hosts_own_answer(setup):
    ledger, compute, reader = setup
    first, _ = reader.get_vnc_console("i1")
    reader.hosts["i1"] = "cmp2"                           # moved; nothing committed yet
    moved, step = reader.get_vnc_console("i1")
    assert step == 2 and moved["host"] == "cmp2" and compute.calls[-1] == ("cmp2", "i1")
    assert reader.get_vnc_console("i1") == (moved, STEP_OWN)
    reader.hosts["i1"] = "cmp1"                           # and back: the cmp1 answer is gone
    back, step = reader.get_vnc_console("i1")
    assert step == 2 and back != first


def test_an_expired_own_answer_is_not_served():
    clock = FakeClock()
    ledger, compute = FakeLedger(), FakeCompute(ttl=0.2, clock=clock)
    reader = make_reader(ledger, compute, clock=clock)
    first, _ = reader.get_vnc_console("i1")
    assert reader.get_vnc_console("i1") == (first, STEP_OWN)
    clock.advance(0.2)                                    # the token's life, nothing else
    again, step = reader.get_vnc_console("i1")
    assert step == 2 and again["token"] != first["token"]
    compute.ttl = -1.0                                    # a reply already expired
    reader.hosts["i2"] = "cmp1"
    assert reader.get_vnc_console("i2")[1] == 2 and not reader.has_own("i2")


def test_the_table_is_bounded_and_least_recently_used_goes_first():
    ledger, compute = FakeLedger(), FakeCompute()
    reader = make_reader(ledger, compute, hosts={f"i{k}": "cmp1" for k in range(6)},
                         own_answers_max=3)
    for k in range(3):
        reader.get_vnc_console(f"i{k}")
    assert reader.get_vnc_console("i0")[1] == STEP_OWN    # i0 used: i1 is now the oldest
    reader.get_vnc_console("i3")
    assert reader.own_size == 3
    assert [reader.has_own(f"i{k}") for k in range(4)] == [True, False, True, True]
    assert reader.get_vnc_console("i1")[1] == 2


def test_off_switch_and_plain_compute_keep_nothing():
    ledger = FakeLedger()
    off = make_reader(ledger, FakeCompute(), own_answers=False)
    assert [off.get_vnc_console("i1")[1] for _ in range(2)] == [2, 2] and off.own_size == 0
    plain = make_reader(ledger, FakeCompute(send_expiry=False))
    first, step = plain.get_vnc_console("i1")
    assert step == 2 and set(first) == set(NOVA_KEYS) and plain.own_size == 0
    assert plain.get_vnc_console("i1")[1] == 2


def test_another_reader_never_sees_my_own_answers_and_answers_are_copies(setup):
    ledger, compute, reader = setup
    first, _ = reader.get_vnc_console("i1")
    other = make_reader(ledger, compute)
    assert other.step1("i1") is None and other.own_answer("i1") is None
    assert other.get_vnc_console("i1")[1] == 2
    got, _ = reader.get_vnc_console("i1")
    got["token"] = "mutated by the caller"
    assert reader.get_vnc_console("i1") == (first, STEP_OWN)


def test_metrics_count_own_answers_apart(setup):
    from pbft_tasks.metrics import export_reader, reader_registry
    ledger, compute, reader = setup
    export_reader(reader, 77)
    reader.get_vnc_console("i1")
    reader.get_vnc_console("i1")
    reg = reader_registry()
    assert reg.get_sample_value("hdpbf_step1_own_answers_total", {"node": "77"}) == 1
    assert reg.get_sample_value("hdpbf_step1_answers_total", {"node": "77"}) == 0


# -- with the embedded mesh and a real (fake-bus) compute ----------------------------------

class Gate:
    """Holds compute's records until ``release``: 'before the commit lands', for sure."""

    def __init__(self, recorder):
        self.recorder, self.held, self.open = recorder, [], False

    def record(self, *a, **kw):
        if self.open:
            self.recorder.record(*a, **kw)
        else:
            self.held.append((a, kw))

    def release(self):
        self.open = True
        for a, kw in self.held:
            self.recorder.record(*a, **kw)
        self.held.clear()


def test_recording_compute_tells_the_expiry_and_the_reader_strips_it(kit):
    rec = kit.recorder()
    svc = kit.compute("cmp1", rec)
    kit.hosts["i1"] = "cmp1"
    import oslo_messaging
    client = oslo_messaging.get_rpc_client(rpc.get_transport(kit.url), rpc.compute_target())
    raw = client.prepare(server="cmp1").call({}, "get_vnc_console", instance="i1",
                                             console_type="novnc")
    assert set(raw) == set(NOVA_KEYS) | {rpc.EXPIRES_AT_FIELD}
    assert raw[rpc.EXPIRES_AT_FIELD] == svc.served[-1]["expires_at"]
    assert set(svc.served[-1]["connect_info"]) == set(NOVA_KEYS)


def test_own_answer_then_ledger_on_the_embedded_mesh(kit):
    rec = kit.recorder()
    gate = Gate(rec)
    kit.compute("cmp1", gate)
    kit.hosts["i1"] = "cmp1"
    api0, api1 = kit.reader(0), kit.reader(1)
    info, step = api0.get_vnc_console("i1")
    assert step == 2
    assert api0.get_vnc_console("i1") == (info, STEP_OWN)
    assert api1.step1("i1") is None and api1.own_answer("i1") is None
    gate.release()
    rec.flush(10)
    for node in range(kit.cfg.n):
        assert kit.reader(node).step1("i1") == info
    assert api0.get_vnc_console("i1") == (info, 1) and not api0.has_own("i1")
    assert api1.get_vnc_console("i1") == (info, 1)
