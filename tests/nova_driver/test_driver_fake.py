"""The ``hdpbf`` driver on ``hdpbf+fake:/`` with an embedded mesh.

Each test: hosts (transports with their own [hdpbf] settings), calls through oslo's RPC
client exactly as nova's ComputeAPI makes them, then which step answered, what the
driver counted and what the ledger holds."""
from __future__ import annotations

import threading
import time

import pytest

from ledger import LedgerReader
from mesh.openstack import nova_wire
from mesh.openstack.nova_wire import instance_primitive, request_context

from tests.meshkit import wait_until

from .driverkit import vnc

UUID = "6f5c3f0e-8a3b-4c0e-9d7e-0123456789ab"
UUID2 = "0b9e7d2c-1111-4a4a-8b8b-fedcba987654"


def _key(uuid=UUID, method="get_vnc_console", console_type="novnc"):
    return nova_wire.reply_key("compute", method, uuid, console_type)


def _record(kit, node, key):
    with LedgerReader(kit.ledger_path(node)) as r:
        return r.get_record(key)


def test_without_settings_it_is_a_pure_pass_through(kit):
    t = kit.transport()                     # no [hdpbf] at all
    ep, _ = kit.compute("cmp1", transport=t)
    drv = kit.driver(t)
    assert drv.reader is None and drv.recorder is None
    c = kit.client(t, ep.host)
    a, b = vnc(c, UUID, ep.host), vnc(c, UUID, ep.host)
    assert a["token"] != b["token"]         # every call reached compute
    assert [m for m, _ in ep.calls] == ["get_vnc_console"] * 2
    assert not drv.stats


def test_first_call_step_2_then_step_1_with_the_same_token_on_two_api_hosts(kit):
    ep, _ = kit.compute("cmp1")
    api0 = kit.api(0, "api0", own_answers=False)
    first = vnc(kit.client(api0, ep.host), UUID, ep.host)
    assert kit.driver(api0).stats == {"miss.missing": 1, "step2": 1}
    kit.settle()
    second = vnc(kit.client(api0, ep.host), UUID, ep.host)
    assert second == first
    assert kit.driver(api0).stats["step1"] == 1
    api1 = kit.api(1, "api1")               # a second API host: node 1's copy, key api1
    third = vnc(kit.client(api1, ep.host), UUID, ep.host)
    assert third == first and kit.driver(api1).stats == {"step1": 1}
    assert len(ep.calls) == 1               # compute served one call out of three
    rec = _record(kit, 2, _key())
    assert rec["value"]["compute_host"] == ep.host
    assert first["token"] not in str(rec)   # sealed: no clear token in the ledger


def test_own_answer_serves_the_next_call_before_the_commit(kit):
    ep, _ = kit.compute("cmp1")
    api0 = kit.api(0, "api0")
    c = kit.client(api0, ep.host)
    first = vnc(c, UUID, ep.host)
    assert vnc(c, UUID, ep.host) == first   # own answer, or the ledger if it committed
    stats = kit.driver(api0).stats
    assert stats["step2"] == 1 and stats["step1_own"] + stats["step1"] == 1


def test_unrelated_calls_and_casts_pass_through_with_identical_bodies_and_replies(kit):
    ep, t = kit.compute("cmp1")
    api0 = kit.api(0, "api0")
    plain = kit.transport()                 # the same call on a transport without hdpbf
    inst = instance_primitive(UUID, ep.host, vm_state="active")
    replies = [kit.client(tr, ep.host).call(request_context(), "get_instance_diagnostics",
                                            instance=inst) for tr in (api0, plain)]
    assert replies[0] == replies[1] == {"state": "running", "uuid": UUID,
                                        "nested": {"a": [1, 2.5, None, "x"]}}
    kit.client(api0, ep.host).cast(request_context(), "terminate_instance",
                                   instance=instance_primitive(UUID2, ep.host), bdms=[])
    kit.client(plain, ep.host).cast(request_context(), "terminate_instance",
                                    instance=instance_primitive(UUID2, ep.host), bdms=[])
    wait_until(lambda: len(ep.calls) >= 4, 30, lambda: f"the 4 calls; compute saw {ep.calls}")
    assert ep.calls[0] == ep.calls[1] and ep.calls[2] == ep.calls[3], ep.calls
    assert "step2" not in kit.driver(api0).stats and "step1" not in kit.driver(api0).stats


@pytest.mark.parametrize("instance, reason", [
    ("6f5c3f0e-a-plain-string", "no_uuid"),
    ({"nova_object.name": "Instance", "nova_object.data": {"host": "x"}}, "no_uuid"),
])
def test_a_primitive_without_a_uuid_goes_to_step_2_and_is_counted(kit, instance, reason):
    ep, _ = kit.compute("cmp1")
    api0 = kit.api(0, "api0")
    c = kit.client(api0, ep.host)
    for _ in range(2):
        info = c.call(request_context(), "get_vnc_console", instance=instance,
                      console_type="novnc")
        assert info["token"]
    assert kit.driver(api0).stats == {f"miss.{reason}": 2, "step2": 2}
    assert len(ep.calls) == 2


def test_ledger_problems_never_fail_the_call(kit, tmp_path):
    ep, _ = kit.compute("cmp1")
    missing = kit.api(0, "api0", ledger=str(tmp_path / "nope.sqlite"))
    corrupt_path = tmp_path / "corrupt.sqlite"
    corrupt_path.write_bytes(b"this is not an SQLite file" * 100)
    corrupt = kit.api(0, "api0", ledger=str(corrupt_path))
    for t, reason in ((missing, "no_ledger"), (corrupt, "ledger_error")):
        info = vnc(kit.client(t, ep.host), UUID, ep.host)
        assert info["token"]
        assert kit.driver(t).stats[f"miss.{reason}"] == 1, kit.driver(t).stats
        assert kit.driver(t).stats["step2"] == 1


def test_a_value_sealed_for_other_readers_or_another_host_is_a_miss(kit):
    ep, _ = kit.compute("cmp1")
    api0 = kit.api(0, "api0", own_answers=False)
    first = vnc(kit.client(api0, ep.host), UUID, ep.host)
    kit.settle()
    nokey = kit.api(1, None, own_answers=False)        # a host without a reader key
    assert vnc(kit.client(nokey, ep.host), UUID, ep.host) != first
    assert kit.driver(nokey).stats["miss.unreadable"] == 1
    # The instance now lives on cmp2: a call addressed there never gets cmp1's entry.
    ep2, _ = kit.compute("cmp2")
    other = vnc(kit.client(api0, ep2.host), UUID, ep2.host)
    assert other != first and kit.driver(api0).stats["miss.other_host"] == 1


def test_a_failure_is_never_recorded(kit):
    ep, t = kit.compute("cmp1")
    ep.fail = True
    api0 = kit.api(0, "api0")
    for _ in range(2):  # the fake driver re-raises compute's exception as it is
        with pytest.raises(ValueError, match="console type unavailable"):
            vnc(kit.client(api0, ep.host), UUID, ep.host)
    assert kit.driver(t).stats == {"not_recorded.failure": 2}
    assert kit.driver(api0).stats["step2"] == kit.driver(api0).stats["step2_failed"] == 2
    kit.settle()
    assert kit.recorder().committed == 0


def test_expiry_is_novas_token_ttl_from_the_request_arrival(kit):
    ep, t = kit.compute("cmp1", token_ttl=77)
    api0 = kit.api(0, "api0")
    before = time.time()
    vnc(kit.client(api0, ep.host), UUID, ep.host)
    after = time.time()
    kit.settle()
    rec = _record(kit, 0, _key())
    assert before + 77 <= rec["expires_at"] <= after + 77


def test_terminate_invalidates_every_console_of_the_instance(kit):
    ep, t = kit.compute("cmp1")
    api0 = kit.api(0, "api0", own_answers=False)
    c = kit.client(api0, ep.host)
    vnc(c, UUID, ep.host)
    c.call(request_context(), "get_serial_console", instance=instance_primitive(UUID, ep.host),
           console_type="serial")
    vnc(c, UUID2, ep.host)                             # another instance: kept
    kit.settle()
    assert vnc(c, UUID, ep.host) and kit.driver(api0).stats["step1"] == 1
    c.cast(request_context(), "terminate_instance", instance=instance_primitive(UUID, ep.host),
           bdms=[])
    wait_until(lambda: kit.driver(t).stats["invalidated.terminate_instance"], 30,
               "terminate_instance to return")
    kit.settle()
    for node in range(kit.cfg.n):
        assert _record(kit, node, _key())["deleted"]
        assert _record(kit, node, _key(method="get_serial_console", console_type="serial"))["deleted"]
        assert not _record(kit, node, _key(UUID2)).get("deleted")
    vnc(c, UUID, ep.host)
    assert kit.driver(api0).stats["miss.deleted"] == 1


def test_a_versioned_delete_notification_invalidates(kit):
    ep, t = kit.compute("cmp1")
    api0 = kit.api(0, "api0", own_answers=False)
    vnc(kit.client(api0, ep.host), UUID, ep.host)
    kit.settle()
    notifier = __import__("oslo_messaging").Notifier(t, publisher_id=f"nova-compute:{ep.host}",
                                                    driver="messaging", topics=["versioned"])
    payload = {"nova_object.name": "InstanceActionPayload", "nova_object.namespace": "nova",
               "nova_object.version": "1.8", "nova_object.data": {"uuid": UUID}}
    notifier.info({}, "instance.delete.end", payload)
    assert kit.driver(t).stats["invalidated.instance.delete.end"] == 1
    kit.settle()
    assert _record(kit, 0, _key())["deleted"]


def test_a_console_call_that_returns_after_a_terminate_is_not_recorded(kit):
    ep, t = kit.compute("cmp1")
    api0 = kit.api(0, "api0", own_answers=False)
    ep.gate = threading.Event()
    result = {}
    caller = threading.Thread(target=lambda: result.update(
        info=vnc(kit.client(api0, ep.host), UUID, ep.host)))
    caller.start()
    assert ep.entered.wait(10)
    kit.driver(t).invalidate(UUID, "test")              # the instance is deleted meanwhile
    ep.gate.set()
    caller.join(10)
    assert result["info"]["token"]
    assert kit.driver(t).stats["not_recorded.deleted_meanwhile"] == 1
    kit.settle()
    rec = _record(kit, 0, _key())
    assert rec is None or rec.get("deleted")


def test_the_reply_does_not_wait_for_consensus(kit):
    ep, t = kit.compute("cmp1")
    api0 = kit.api(0, "api0")
    rec = kit.recorder()
    gate = threading.Event()
    submit = rec.client.submit

    def held_submit(requests):
        gate.wait(20)
        return submit(requests)
    rec.client.submit = held_submit
    try:
        info = vnc(kit.client(api0, ep.host, timeout=5), UUID, ep.host)
        assert info["token"]                           # answered while consensus is held
        wait_until(lambda: kit.driver(t).stats["recorded"], 30,  # queued just after the reply
                   "the reply to be queued for the ledger")
        assert rec.pending == 1 and rec.committed == 0
    finally:
        gate.set()
    kit.settle()
    assert _record(kit, 0, _key())["value"]["compute_host"] == ep.host


def test_one_ledger_connection_per_os_thread_not_per_call(kit):
    """nova-api under eventlet makes a green thread per request: connections must not
    pile up per thread object; a dead thread's reused id gets a fresh one."""
    ep, _ = kit.compute("cmp1")
    api0 = kit.api(0, "api0", own_answers=False)
    c = kit.client(api0, ep.host)
    vnc(c, UUID, ep.host)
    kit.settle()
    for _ in range(3):
        t = threading.Thread(target=lambda: vnc(c, UUID, ep.host))
        t.start()
        t.join(10)
    reader = kit.driver(api0).reader
    assert kit.driver(api0).stats["step1"] == 3
    assert len(reader._readers) <= 4      # at most one per OS thread that called
