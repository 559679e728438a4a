"""A compute host added through ``hdpbf config propose/sign/submit`` on real workers and
RabbitMQ: submit waits for the commit and prints the boundary; from there the new
client's updates commit, with no worker restarted; then it is revoked the same way and
every worker refuses it from that boundary on."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from mesh.cli import main
from mesh.client import BrokerClientTransport, MeshClient
from pbft_tasks.core.messages import Request, to_wire
from pbft_tasks.signing import Signer, Verifier, read_key_file
from pbft_tasks.topology import admin_key_path, client_keys, node_keys
from tests.meshkit import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def hdpbf(*args):
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def change_through_cli(mesh, tmp_path, name, *flags):
    p = str(tmp_path / name)
    config = str(mesh.config_path)
    hdpbf("config", "propose", *flags, "--out", p, "--config", config)
    for admin in ("a", "b"):
        hdpbf("config", "sign", p, "--admin-key", str(admin_key_path(mesh.base, admin)))
    out = hdpbf("config", "submit", p, "--config", config, "--timeout", "30")
    m = re.search(r"committed at seq (\d+), in force from seq (\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def pass_boundary(mesh, admin, effective):
    def passed():
        admin.put("tick", 0, timeout=20)
        return min(h for h, _ in mesh.tips().values()) >= effective
    wait_until(passed, 120, lambda: f"every ledger past seq {effective}: {mesh.describe_tips()}")


def test_add_and_revoke_a_compute_host_without_restarts(make_mesh, tmp_path):
    mesh = make_mesh(4, admins=("a", "b", "c"), checkpoint_interval=4, log_window=8)
    pids = {i: p.pid for i, p in mesh.local.procs.items()}
    admin = mesh.client(timeout=5.0)
    admin.put("before", 1, timeout=20)
    pub = CliRunner().invoke(main, ["keygen", "--out", str(tmp_path / "compute7.key")]).output.strip()
    executed, effective = change_through_cli(mesh, tmp_path, "add.json", "--add-client", f"compute7={pub}")
    assert effective > executed + 8
    pass_boundary(mesh, admin, effective)
    key = read_key_file(tmp_path / "compute7.key")
    compute7 = MeshClient("compute7", key, mesh.n, Verifier(node_keys(mesh.cfg), client_keys(mesh.cfg)),
                          timeout=5.0)
    compute7.transport = BrokerClientTransport(mesh.app, compute7)
    # the compute host's own key file; mesh.json does not list it
    out = hdpbf("put", "instance-7", '{"host": "compute7"}', "--client", "compute7", "--key-file",
                str(tmp_path / "compute7.key"), "--config", str(mesh.config_path), "--timeout", "30")
    assert int(re.search(r"at block (\d+)", out).group(1)) >= effective
    assert compute7.put("instance-7b", {"host": "compute7"}, timeout=30)["seq"] >= effective
    _, revoked_from = change_through_cli(mesh, tmp_path, "revoke.json", "--remove-client", "compute7")
    pass_boundary(mesh, admin, revoked_from)
    out = hdpbf("config", "show", "--config", str(mesh.config_path), "--json")
    assert '"version": 2' in out and "compute7" not in out.split('"keys"')[0]
    # every worker refuses the revoked key now: nothing of compute7 commits after the boundary
    req = Signer(compute7.client_id, key).sign(Request(compute7.client_id, 1, {"op": "get", "key": "x"}))
    for node in range(mesh.n):
        compute7.transport.send_requests(node, [to_wire(req)])
    admin.put("after", 1, timeout=20)
    mesh.wait_converged(timeout=60)
    with mesh.reader(0) as r:
        late = [b["seq"] for b in r.iter_blocks(revoked_from)
                if any(w["client"].startswith("compute7/") for w in b["requests"])]
    assert late == []
    # no worker was restarted
    assert {i: p.pid for i, p in mesh.local.procs.items()} == pids
    assert all(p.poll() is None for p in mesh.local.procs.values())
