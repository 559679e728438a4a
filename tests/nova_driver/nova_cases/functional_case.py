"""nova's own functional fixtures, unmodified, on ``hdpbf+fake:/`` with an in-process mesh.
Run in a process of its own by
../test_nova_functional.py: importing ``nova.tests.functional`` monkey-patches the whole
process with eventlet.

``integrated_helpers._IntegratedTestBase`` starts nova-api (WSGI, in-process), conductor,
scheduler, placement and nova-compute on the fake virt driver, all on one RPC transport
built by nova's ``RPCFixture``.  The only change: that fixture builds its bus on
``hdpbf+fake:/`` (nova.conf's ``transport_url``) with an ``[hdpbf]`` group, so nova's
own services talk through the hdpbf driver wrapping oslo's fake one."""
from __future__ import annotations

import nova.tests.functional  # noqa: F401  (first: it monkey-patches the process)

import atexit
import os
import re
import shutil
import sys
import tempfile
from unittest import mock

from nova import conf as nova_conf
from nova import objects, rpc
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers

from ledger import LedgerReader
from mesh.openstack import driver as hdpbf_driver
from mesh.openstack import driver_record, nova_wire
from pbft_tasks.topology import init_mesh

CONF = nova_conf.CONF
hdpbf_driver.register_opts(CONF)
MESH_DIR = tempfile.mkdtemp(prefix="hdpbf-nova-functional-")
atexit.register(shutil.rmtree, MESH_DIR, True)
# nova's fixtures run every compute service in this process, on one transport: the one
# client "cmp" records for the default host "compute" and the migration target "host2".
MESH = init_mesh(os.path.join(MESH_DIR, "mesh"), clients=("admin", "cmp"),
                 readers=("api0", "api1"), hosts={"cmp": ("compute", "host2")})
MESH_JSON = os.path.join(MESH_DIR, "mesh", "mesh.json")


def ledger(node: int) -> str:
    return os.path.join(MESH.node_data_dir(node), "ledger.sqlite")


class HdpbfRPCFixture(nova_fixtures.RPCFixture):
    """nova's RPCFixture, then its one bus rebuilt on hdpbf+fake:/ (nova.conf settings)."""

    def setUp(self):
        super().setUp()
        rpc.cleanup()
        self._buses.clear()
        self.messaging_conf.transport_url = "hdpbf+fake:/"
        for k, v in {"mesh_config": MESH_JSON, "embedded": True, "client": "cmp",
                     "reader": "api0", "ledger": ledger(0), "own_answers": False}.items():
            CONF.set_override(k, v, group="hdpbf")
        self.addCleanup(CONF.clear_override, "mesh_config", group="hdpbf")
        with mock.patch("nova.rpc.get_transport_url") as gtu:
            gtu.return_value = None
            rpc.init(CONF)


nova_fixtures.RPCFixture = HdpbfRPCFixture  # nova.test looks it up when each test starts


class _PasteConfig(__import__("fixtures").Fixture):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def _setUp(self):
        CONF.set_override("api_paste_config", self.path, group="wsgi")
        self.addCleanup(CONF.clear_override, "api_paste_config", group="wsgi")


class RemoteConsolesThroughHdpbf(integrated_helpers._IntegratedTestBase):
    ADMIN_API = True
    microversion = "latest"

    def setUp(self):
        # The wheel installs api-paste.ini under the venv's etc/nova/, not beside the
        # sources where nova's tests look for it.
        paste = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")
        assert os.path.isfile(paste), f"nova's api-paste.ini is not at {paste}"
        self.useFixture(_PasteConfig(paste))
        super().setUp()
        self.driver = rpc.TRANSPORT._driver
        assert isinstance(self.driver, hdpbf_driver.HdpbfDriver), type(self.driver)
        self.addCleanup(driver_record.shutdown)

    def _console(self, server_id: str) -> str:
        resp = self.api.api_post(f"/servers/{server_id}/remote-consoles",
                                 {"remote_console": {"protocol": "vnc", "type": "novnc"}})
        url = resp.body["remote_console"]["url"]
        return re.search(r"token(?:=|%3D)([^&%]+)", url).group(1)

    def _key(self, server_id: str) -> str:
        return nova_wire.reply_key("compute", "get_vnc_console", server_id, "novnc")

    def _records(self, server_id: str) -> list:
        out = []
        for node in range(MESH.n):
            with LedgerReader(ledger(node)) as r:
                out.append(r.get_record(self._key(server_id)))
        return out

    def test_second_console_from_step_1_and_deleted_with_the_server(self):
        server = self._create_server(networks="none")
        token = self._console(server["id"])
        self.assertEqual(1, self.driver.stats["step2"])
        self.assertEqual(1, self.driver.stats["recorded"])
        self.driver.flush(30)
        again = self._console(server["id"])
        self.assertEqual(token, again)
        self.assertEqual(1, self.driver.stats["step1"])
        self.assertEqual(1, self.driver.stats["step2"])
        # The token is nova's: it validates against nova's own ConsoleAuthToken table.
        info = self.api.api_get(f"/os-console-auth-tokens/{token}").body["console"]
        self.assertEqual(server["id"], info["instance_uuid"])
        # nova keeps only its hash; the ledger keeps it sealed, never in clear.
        for rec in self._records(server["id"]):
            self.assertNotIn(token, str(rec))
            self.assertEqual(server["OS-EXT-SRV-ATTR:host"], rec["value"]["compute_host"])

        self._delete_server(server)
        self.driver.flush(30)
        self.assertGreaterEqual(self.driver.stats["invalidated.terminate_instance"], 1)
        for rec in self._records(server["id"]):
            self.assertTrue(rec["deleted"], rec)
        host = server["OS-EXT-SRV-ATTR:host"]
        reply, why, _ = self.driver.reader.lookup(self._key(server["id"]), host)
        self.assertIsNone(reply)
        self.assertEqual("deleted", why)

    def test_live_migration_ends_step_1_for_the_source(self):
        self._start_compute("host2")
        server = self._create_server(networks="none")
        source = server["OS-EXT-SRV-ATTR:host"]
        token = self._console(server["id"])
        self.driver.flush(30)
        self.assertEqual(token, self._console(server["id"]))
        self.assertEqual(1, self.driver.stats["step1"])

        server = self._live_migrate(server)
        dest = server["OS-EXT-SRV-ATTR:host"]
        self.assertNotEqual(source, dest)
        self.driver.flush(30)
        self.assertGreaterEqual(
            self.driver.stats["invalidated.post_live_migration_at_destination"], 1)
        for rec in self._records(server["id"]):
            self.assertTrue(rec["deleted"], rec)
        new = self._console(server["id"])       # step 2 to the new host, a new token
        self.assertNotEqual(token, new)
        self.assertEqual(2, self.driver.stats["step2"])
        # The destination's record replaces the source's: written by the client that
        # speaks for the destination, served by step 1 for calls addressed there.
        self.driver.flush(30)
        for rec in self._records(server["id"]):
            self.assertEqual(dest, rec["value"]["compute_host"])
            self.assertEqual("cmp", rec["writer"])
        self.assertEqual(new, self._console(server["id"]))
        self.assertEqual(2, self.driver.stats["step1"])
        self.assertEqual(0, self.driver.stats["miss.other_writer"])
