"""Random schedules of client changes on an embedded mesh (real wiring, ledgers and
signatures; no broker): clients added, removed and re-keyed by config entries while they
and the admin send.  Invariants: every ledger ends identical; every committed request
was signed by the key its client had in the configuration in force at the request's
seq (never by a removed or rotated-out key); ``hdpbf verify``'s audit passes."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mesh.audit.verify import LedgerAudit
from mesh.client import MeshClient
from mesh.embedded import EmbeddedMesh, _LocalClientTransport
from pbft_tasks.batch_verify import BatchVerifier
from pbft_tasks.core import config as C
from pbft_tasks.signing import generate_key, public_key_hex, read_key_file, sign_hex
from pbft_tasks.topology import MeshConfig, admin_key_path, client_keys, init_mesh, node_keys

K, L = 4, 8
NAMES = ("c1", "c2")

step = st.one_of(
    st.tuples(st.sampled_from(["add", "remove", "rotate"]), st.sampled_from(NAMES)),
    st.tuples(st.sampled_from(["send", "send", "send_old"]), st.sampled_from(NAMES)),
    st.tuples(st.sampled_from(["admin", "pass"]), st.just("")),
)


def run_schedule(base: Path, schedule: list) -> None:
    init_mesh(base, nodes=4, admins=("a", "b", "c"))
    cfg = MeshConfig.load(base / "mesh.json")
    cfg.checkpoint_interval, cfg.log_window = K, L
    cfg.save(base / "mesh.json")
    with EmbeddedMesh(str(base / "mesh.json")) as mesh:
        admin = mesh.client()
        hosts: dict[str, list] = {n: [generate_key()] for n in NAMES}  # keys a host had, newest last
        clients: dict[str, MeshClient] = {}   # by public key
        key_of: dict[str, str] = {}            # client id -> the public key it signs with
        last_effective = 0

        def client(name: str, which: int) -> MeshClient:
            key = hosts[name][which]
            pub = public_key_hex(key)
            c = clients.get(pub)
            if c is None:
                c = clients[pub] = MeshClient(name, key, cfg.n, mesh.verifier)
                c.transport = _LocalClientTransport(mesh, c)
                mesh.transport.clients[c.client_id] = c.on_reply
                key_of[c.client_id] = pub
            return c

        for what, name in schedule:
            if what in ("add", "remove", "rotate"):
                if what == "rotate":
                    hosts[name].append(generate_key())
                op = {"op": f"{what}_client", "name": name}
                if what != "remove":
                    op["key"] = public_key_hex(hosts[name][-1])
                latest = mesh.nodes[0].ledger.config_history().latest
                ch = C.proposal(latest, [op])
                ch["sigs"] = {a: sign_hex(read_key_file(admin_key_path(base, a)), C.change_bytes(ch))
                              for a in ("b", "c")}
                r = admin.reconfigure(ch, timeout=10)
                last_effective = max(last_effective, r.get("effective") or 0)
            elif what.startswith("send"):
                c = client(name, 0 if what == "send_old" else -1)
                c.submit([c.put_request(f"{name}-{c.next_ts()}", 1)])
            elif what == "pass":  # past every boundary so far
                while min(rt.ledger.height for rt in mesh.nodes) < last_effective:
                    admin.put("tick", 0, timeout=10)
            admin.put("tick", 0, timeout=10)
        while min(rt.ledger.height for rt in mesh.nodes) < last_effective + K:
            admin.put("tick", 0, timeout=10)
        while mesh.transport.pump():
            pass
        tips = {(rt.ledger.height, rt.ledger.head) for rt in mesh.nodes}
        assert len(tips) == 1, tips
        history = mesh.nodes[0].ledger.config_history()
        committed = 0
        for block in mesh.nodes[0].ledger.iter_blocks():
            in_force = history.at(block["seq"])
            for w in block["requests"]:
                name = w["client"].split("/")[0]
                if name == "admin":
                    continue
                assert key_of[w["client"]] == in_force.client_key(name), (block["seq"], w["client"])
                committed += 1
        event(f"client requests committed: {min(committed, 2)}{'+' if committed >= 2 else ''}")
        with BatchVerifier(node_keys(cfg), client_keys(cfg)) as bv:
            audit = LedgerAudit(cfg, bv)
            for i in range(cfg.n):
                assert audit.run(i, str(cfg.ledger_path(i))).ok


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=12))
def test_random_client_change_schedules_keep_ledgers_identical_and_keys_in_force(schedule):
    # both clients start as members, so that later removals and re-keys have traffic to refuse
    with tempfile.TemporaryDirectory() as d:
        run_schedule(Path(d) / "mesh", [("add", "c1"), ("add", "c2"), ("pass", "")] + schedule)
