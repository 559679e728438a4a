"""Console records are bound to their writer: one compute host cannot hand out another
host's consoles, through the mesh or through a tampered ledger copy.

The attack: compute host B, with its own client key, commits a console record under the
key of an instance that lives on host A, saying ``compute_host: A``; nova-api then calls
``get_vnc_console`` on A.  The replicas refuse the write (ledger/state.py, counted as
evidence on every replica) and step 1 checks the writer again, so the call is answered by
A itself.  Live migration (A -> B, as nova drives it) still works: B deletes A's record
and writes its own."""
from __future__ import annotations

from ledger import LedgerReader, LedgerStore
from ledger.format import kv_key
from ledger.memory import build_block, put
from mesh.openstack import driver_record, nova_wire
from mesh.openstack.driver_read import Step1Reader
from mesh.openstack.nova_wire import instance_primitive, request_context
from pbft_tasks.core.chain import GENESIS
from pbft_tasks.topology import console_writers

from .driverkit import vnc

UUID = "6f5c3f0e-8a3b-4c0e-9d7e-0123456789ab"
FORGED = "forged-token-" + "f" * 40


def _key(uuid=UUID):
    return nova_wire.reply_key("compute", "get_vnc_console", uuid, "novnc")


def _forged_value(host, sealer=None):
    reply = {"host": "6.6.6.6", "port": 5900, "internal_access_path": None, "token": FORGED,
             "access_url": f"http://evil/vnc_auto.html?path=%3Ftoken%3D{FORGED}"}
    return nova_wire.seal_reply(reply, method="get_vnc_console", uuid=UUID,
                                console_type="novnc", compute_host=host,
                                sealer=sealer)


def _forge(kit, client, host):
    """``client`` commits a console record for ``UUID`` saying ``compute_host: host``
    (from the test's thread, once every recorder is idle: one thread steps the mesh)."""
    kit.settle()
    mc = driver_record.embedded_mesh(kit.mesh_config).client(client, timeout=5.0)
    return mc.put(_key(), _forged_value(host, driver_record.recorders()[0].seal), ttl=600,
                  timeout=10)


def _nodes(kit):
    return driver_record.embedded_mesh(kit.mesh_config).nodes


def test_a_compute_host_cannot_forge_another_hosts_console(kit):
    ep_a, _ = kit.compute("hostA", client="cmpA")
    kit.compute("hostB", client="cmpB")
    api = kit.api(0, "api0", own_answers=False)
    c = kit.client(api, ep_a.host)
    honest = vnc(c, UUID, ep_a.host)                # step 2, recorded by cmpA
    kit.settle()
    _forge(kit, "cmpB", ep_a.host)     # ordered, and refused on execution:
    assert all(n.rejected["console_other_host"] == 1 for n in _nodes(kit))
    for node in range(kit.cfg.n):
        with LedgerReader(kit.ledger_path(node)) as r:
            assert r.get_record(_key())["writer"] == "cmpA"
    again = vnc(c, UUID, ep_a.host)                 # nova's call to A: A's own token
    assert again["token"] == honest["token"] != FORGED
    assert kit.driver(api).stats["step1"] == 1


def test_a_truthful_record_of_another_host_only_costs_a_step_2(kit):
    """B may write the instance's key for itself (that is how a migration lands), but a
    call addressed to A never gets B's record: A answers it."""
    ep_a, _ = kit.compute("hostA", client="cmpA")
    ep_b, _ = kit.compute("hostB", client="cmpB")
    api = kit.api(0, "api0", own_answers=False)
    vnc(kit.client(api, ep_a.host), UUID, ep_a.host)
    kit.settle()
    _forge(kit, "cmpB", ep_b.host)
    assert not any(n.rejected for n in _nodes(kit))
    info = vnc(kit.client(api, ep_a.host), UUID, ep_a.host)
    assert info["token"] != FORGED
    stats = kit.driver(api).stats
    assert stats["miss.other_host"] == 1 and stats["step2"] == 2 and stats["step1"] == 0


def test_live_migration_the_destination_takes_over_the_record(kit):
    """nova's live migration A -> B: B's post_live_migration_at_destination deletes A's
    record (allowed: any compute client may delete), B's next console is recorded by
    cmpB and served by step 1 for B; A's old token is never served again."""
    ep_a, _ = kit.compute("hostA", client="cmpA")
    ep_b, t_b = kit.compute("hostB", client="cmpB")
    api = kit.api(0, "api0", own_answers=False)
    old = vnc(kit.client(api, ep_a.host), UUID, ep_a.host)
    kit.settle()
    assert vnc(kit.client(api, ep_a.host), UUID, ep_a.host) == old   # step 1
    kit.client(t_b, ep_b.host).call(request_context(), "post_live_migration_at_destination",
                                    instance=instance_primitive(UUID, ep_b.host),
                                    block_migration=False)
    kit.settle()
    with LedgerReader(kit.ledger_path(0)) as r:
        rec = r.get_record(_key())
    assert rec["deleted"] and rec["writer"] == "cmpB"
    assert not any(n.rejected for n in _nodes(kit))
    new = vnc(kit.client(api, ep_b.host), UUID, ep_b.host)          # step 2 to B
    kit.settle()
    assert vnc(kit.client(api, ep_b.host), UUID, ep_b.host) == new != old  # step 1
    with LedgerReader(kit.ledger_path(0)) as r:
        assert r.get_record(_key())["writer"] == "cmpB"
    assert vnc(kit.client(api, ep_a.host), UUID, ep_a.host)["token"] not in (old["token"],
                                                                            new["token"])
    assert kit.driver(api).stats["step1"] == 2


def test_step_1_checks_the_writer_of_its_own_copy(kit, tmp_path):
    """A ledger copy holding a record no replica would have written (a tampered file, an
    older rule) is a miss: written by a client that does not speak for the host, or by
    nobody."""
    host_a = kit.host("hostA")
    value = _forged_value(host_a)
    path = str(tmp_path / "tampered.sqlite")
    with LedgerStore(path, writers={"cmpB": (host_a,)}) as store:   # the tamperer's rule
        store.apply({}, [build_block(1, GENESIS, [put(_key(), value, 4e9)], client="cmpB")])
    reader = Step1Reader(path, None, own_answers=False, writers=console_writers(kit.cfg))
    try:
        assert reader.lookup(_key(), host_a)[:2] == (None, "other_writer")
    finally:
        reader.close()
    path2 = str(tmp_path / "unbound.sqlite")
    with LedgerStore(path2) as store:
        store.apply({}, [build_block(1, GENESIS, [put(_key(), value, 4e9)], client=host_a)])
    with LedgerStore(path2) as store:   # an older record without a writer
        store._write({kv_key(_key()): {"value": value, "version": 1, "block": 1,
                                      "expires_at": 4e9}}, [])
    reader = Step1Reader(path2, None, own_answers=False, writers=console_writers(kit.cfg))
    try:
        assert reader.lookup(_key(), host_a)[:2] == (None, "other_writer")
    finally:
        reader.close()
