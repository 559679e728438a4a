"""The two-step read in one process: embedded mesh + oslo.messaging's fake driver.

Each test: set up compute (+ recorder) and API readers, call, check which step answered
and what every node's ledger holds."""
from __future__ import annotations

import collections
import glob
import threading

import pytest

from ledger import LedgerReader
from mesh.openstack import ConsoleUnavailable, instance_key
from mesh.openstack.sealing import NOVA_KEYS

from tests.meshkit import wait_until

from .kit import FakeClock


def _all_nodes(kit, instance, **kw):
    return [kit.reader(i, **kw).step1(instance) for i in range(kit.cfg.n)]


def test_first_call_is_step_2_then_step_1_on_every_node(kit):
    rec = kit.recorder()
    svc = kit.compute("cmp1", rec)
    kit.hosts["i1"] = "cmp1"
    info, step = kit.reader(0).get_vnc_console("i1")
    assert step == 2
    rec.flush(10)
    for node in range(kit.cfg.n):
        again, step = kit.reader(node).get_vnc_console("i1")
        assert (again, step) == (info, 1), f"node {node}"
    assert len(svc.served) == 1 and svc.served[0]["connect_info"] == info


def test_connect_info_has_novas_keys_and_a_fresh_token_per_call(kit):
    svc = kit.compute("cmp1", token_ttl=600)
    kit.hosts["i1"] = "cmp1"
    api = kit.reader(0)
    a, b = api.step2("i1"), api.step2("i1")
    assert set(a) == set(NOVA_KEYS)
    assert a["token"] != b["token"] and len(a["token"]) >= 32
    assert a["access_url"].endswith("?path=%3Ftoken%3D" + a["token"])
    exp = svc.served[0]["expires_at"] - svc.served[0]["time"]
    assert 599 < exp <= 600


def test_the_ledger_files_hold_no_clear_token(kit):
    rec = kit.recorder()
    kit.compute("cmp1", rec)
    kit.hosts.update(i1="cmp1", i2="cmp1")
    tokens = [kit.reader(0).get_vnc_console(i)[0]["token"] for i in ("i1", "i2")]
    rec.flush(10)
    assert all(kit.reader(1).step1(i) for i in ("i1", "i2"))  # committed and readable...
    files = glob.glob(str(kit.dir / "data" / "node*" / "ledger.sqlite*"))
    assert len(files) >= kit.cfg.n
    for path in files:  # ...yet no byte of any node's SQLite file (or its WAL) is a token
        raw = open(path, "rb").read()
        for token in tokens:
            assert token.encode() not in raw, f"{path} holds a token in clear"


def test_a_reader_without_the_key_misses_step_1_and_goes_to_step_2(tmp_path):
    from .kit import Kit
    kit = Kit(tmp_path, readers=("api0",))
    try:
        from pbft_tasks.topology import add_readers
        rec = kit.recorder()              # seals for api0 only
        add_readers(kit.dir, ["api1"])    # a reader added after compute started
        kit.cfg = type(kit.cfg).load(kit.dir)
        kit.compute("cmp1", rec)
        kit.hosts["i1"] = "cmp1"
        kit.reader(0, "api0").get_vnc_console("i1")
        rec.flush(10)
        assert kit.reader(1, "api0").step1("i1") is not None
        other = kit.reader(1, "api1")
        assert other.step1("i1") is None and other.unreadable == 1
        assert kit.reader(1, None).step1("i1") is None
        assert other.get_vnc_console("i1")[1] == 2
    finally:
        kit.close()


def test_expiry_makes_step_1_miss(kit):
    rec = kit.recorder()
    kit.compute("cmp1", rec, token_ttl=600)
    kit.hosts["i1"] = "cmp1"
    clock = FakeClock()
    api = kit.reader(2, clock=clock)
    first, _ = api.get_vnc_console("i1")
    rec.flush(10)
    assert api.step1("i1") == first
    expires = LedgerReader(kit.ledger_path(2)).get_record(instance_key("i1"))["expires_at"]
    clock.now = expires  # the node's clock reaches the token's expiry
    assert api.step1("i1") is None
    second, step = api.get_vnc_console("i1")
    assert step == 2 and second["token"] != first["token"]


def test_delete_invalidates_on_every_node(kit):
    rec = kit.recorder()
    kit.compute("cmp1", rec)
    kit.hosts["i1"] = "cmp1"
    kit.reader(0).get_vnc_console("i1")
    rec.flush(10)
    assert all(_all_nodes(kit, "i1"))
    rec.invalidate("i1")
    assert _all_nodes(kit, "i1") == [None] * kit.cfg.n
    assert LedgerReader(kit.ledger_path(3)).get_record(instance_key("i1"))["deleted"] is True


def test_move_serves_from_the_new_host_and_never_the_old_entry(kit):
    rec = kit.recorder()
    old = kit.compute("cmp1", rec)
    new = kit.compute("cmp2", rec)
    kit.hosts["i1"] = "cmp1"
    api = kit.reader(1)
    before, _ = api.get_vnc_console("i1")
    rec.flush(10)
    kit.hosts["i1"] = "cmp2"          # the instance moved; its delete not committed yet
    assert api.step1("i1") is None    # an entry from the old host is a miss already
    rec.invalidate("i1")
    after, step = api.get_vnc_console("i1")
    assert step == 2 and after["host"] == "cmp2" and after != before
    rec.flush(10)
    for node in range(kit.cfg.n):
        assert kit.reader(node).step1("i1") == after
    assert len(old.served) == 1 and len(new.served) == 1


def test_a_put_recorded_before_a_delete_never_lands_after_it(kit):
    rec = kit.recorder()
    svc = kit.compute("cmp1", rec)
    info, exp = svc.connect_info("i1")
    for _ in range(5):
        rec.record("i1", "novnc", info, exp, host="cmp1")
        rec.invalidate("i1")
    rec.flush(10)
    assert _all_nodes(kit, "i1") == [None] * kit.cfg.n


class _DropFirstReplies:
    """Delivers every request, but the first ``n`` sends then fail as if the broker
    connection dropped before the sender learned it went out."""

    def __init__(self, inner, n=1):
        self.inner, self.n, self.sent = inner, n, []

    def send_requests(self, to, wires):
        self.inner.send_requests(to, wires)
        self.sent.extend(wires)
        if self.n:
            self.n -= 1
            raise ConnectionResetError("broker connection lost (simulated)")

    def poll(self, timeout):
        self.inner.poll(timeout)


def test_recorder_retry_resends_the_same_request_and_commits_it_once(kit):
    client = kit.mesh.client("admin")
    client.transport = flaky = _DropFirstReplies(client.transport, n=2)
    from mesh.openstack import ConsoleRecorder, Sealer
    from pbft_tasks.topology import reader_keys
    rec = ConsoleRecorder(client, Sealer(reader_keys(kit.cfg)), attempt_timeout=2.0)
    try:
        svc = kit.compute("cmp1")
        info, exp = svc.connect_info("i1")
        rec.record("i1", "novnc", info, exp, host="cmp1")
        rec.flush(10)
        assert rec.retries == 2 and rec.committed == 1
        assert len({(w["client"], w["timestamp"], w["sig"]) for w in flaky.sent}) == 1
        for node in range(kit.cfg.n):
            record = LedgerReader(kit.ledger_path(node)).get(instance_key("i1"))
            assert record["version"] == 1, f"node {node} executed the request more than once"
        assert kit.reader(0).step1("i1") == info
    finally:
        rec.close()


class _Stalled:
    """Consensus unreachable: a send never returns until the test releases it."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def send_requests(self, to, wires):
        self.entered.set()
        self.release.wait()

    def poll(self, timeout):
        self.release.wait(timeout)


def test_recording_never_delays_the_rpc_reply(kit):
    client = kit.mesh.client("admin")
    client.transport = stalled = _Stalled()
    from mesh.openstack import ConsoleRecorder
    rec = ConsoleRecorder(client, None, attempt_timeout=0.2)
    try:
        kit.compute("cmp1", rec, service_ms=0)
        kit.hosts["i1"] = "cmp1"
        # were the reply waiting for consensus, it would never come, and the call would
        # end in ConsoleUnavailable (the long RPC timeout only turns a hang into that)
        info, step = kit.reader(0, timeout=60).get_vnc_console("i1")
        assert step == 2
        wait_until(stalled.entered.is_set, 60, "the recorder to try to send")
        assert not stalled.release.is_set() and rec.pending == 1
        with pytest.raises(TimeoutError, match="not committed"):
            rec.flush(0.2)
    finally:
        stalled.release.set()
        rec.close(timeout=0.1)


def test_step_2_without_a_compute_fails_with_console_unavailable(kit):
    kit.hosts["i9"] = "nowhere"
    api = kit.reader(0, timeout=0.3)
    # the reader's own deadline ends the call (ConsoleReader._step2): "did not answer"
    with pytest.raises(ConsoleUnavailable, match="did not answer .* within 0.3s"):
        api.get_vnc_console("i9")
    with pytest.raises(ConsoleUnavailable, match="no compute host"):
        api.get_vnc_console("unknown")


def test_a_missing_ledger_is_a_step_1_miss(tmp_path, kit):
    from mesh.openstack import ConsoleReader
    api = ConsoleReader(tmp_path / "absent.sqlite", kit.url, {}, None)
    assert api.step1("i1") is None
    api.close()


def test_queued_put_is_superseded_by_a_newer_put_on_the_same_key():
    """Back-to-back calls for one instance: only the newest unsent put is submitted."""
    from mesh.openstack.recorder import ConsoleRecorder

    class _Stalled:  # a client the background thread never gets to use
        pass

    rec = ConsoleRecorder.__new__(ConsoleRecorder)
    import threading
    rec._cond = threading.Condition()
    rec._queue, rec._inflight, rec._closing, rec.failure = [], {}, False, None
    rec.superseded, rec.by_kind = 0, collections.Counter()
    from mesh.openstack.recorder import _Op
    first = _Op("console/i1/novnc", "put", ("i1", "novnc", "h", {"token": "a"}), 1e12)
    second = _Op("console/i1/novnc", "put", ("i1", "novnc", "h", {"token": "b"}), 1e12)
    other = _Op("console/i2/novnc", "put", ("i2", "novnc", "h", {"token": "c"}), 1e12)
    delete = _Op("console/i1/novnc", "delete")
    third = _Op("console/i1/novnc", "put", ("i1", "novnc", "h", {"token": "d"}), 1e12)
    for op in (first, other, second, delete, third):
        rec._enqueue(op)
    # first was overtaken by second before it was sent; nothing overtakes a delete
    assert rec._queue == [other, second, delete, third]
    assert first.skipped and first.done.is_set() and rec.superseded == 1
    assert rec.by_kind == {"queued.put": 4, "queued.delete": 1, "superseded.put": 1}
