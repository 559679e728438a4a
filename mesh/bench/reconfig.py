"""``hdpbf bench reconfig``: membership changes under a steady stream of updates.

Starts a 4-node mesh of real workers on RabbitMQ (with admins and a short checkpoint
interval, so boundaries come quickly), keeps a steady stream of updates going from one
client, and meanwhile orders, one after the other: add a client (a compute host), add
an API reader, add a follower, then revoke the client while it keeps sending.  Each
change goes through consensus signed by 2 of 3 admins (pbft_tasks/core/config.py) and
is in force from its boundary; nothing is restarted.  Figures, never assertions:

- ``acknowledged``: updates of the stream with f+1 matching replies; ``lost``: those
  missing (or with another value) in some node's ledger at the end;
- ``identical_heads``: every ledger at one (height, head) once the stream stopped;
- ``verify_ok``: ``hdpbf verify``'s audit of every node's ledger, each block against
  the configuration in force at its seq;
- ``restarts``: worker processes whose pid changed (must be 0);
- ``new_client_commit_s``: from the add-client change's commit to the new client's
  first committed update (it can only commit from the boundary on);
- ``revoked_accepted``: requests of the revoked client in blocks at or after its
  boundary (must be 0), and ``revoked_refused`` how many the workers counted;
- ``pause_s_max``: longest gap between blocks on node 1 while the changes ran;
- ``changes``: each change with the seq it was committed at and the seq it took effect
  at; ``not_run``: the steps of the full scenario this mesh refuses (validator changes:
  ``config_unsupported``, see docs/operations/membership.md).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any, Callable

from nacl.public import PrivateKey

from pbft_tasks.core import config as C
from pbft_tasks.core.messages import Request, to_wire
from pbft_tasks.signing import (Signer, Verifier, generate_key, public_key_hex, read_key_file,
                                sign_hex)
from pbft_tasks.topology import (MeshConfig, admin_key_path, client_keys, init_mesh,
                                 load_client_identity, node_keys)

from ..client import BrokerClientTransport, MeshClient, SubmitTimeout
from .failover import CommitWatch

ADMINS = ("a", "b", "c")
NOT_RUN = ["grow validators 4 -> 7", "re-key a validator", "shrink validators 7 -> 4"]


class Stream:
    """A steady stream of puts from one client in a thread: ``window`` in flight."""

    def __init__(self, client: MeshClient, prefix: str, window: int = 8):
        self.client, self.prefix, self.window = client, prefix, window
        self.acked: dict[str, int] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stream-{prefix}", daemon=True)

    def start(self) -> "Stream":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            reqs = [self.client.put_request(f"{self.prefix}{i + j}", i + j) for j in range(self.window)]
            try:
                done = self.client.wait(self.client.submit(reqs), timeout=30)
                for p in done:
                    self.acked[p.request.op["key"]] = p.request.op["value"]
                self.client.forget(done)
            except SubmitTimeout:
                self.errors += 1
            i += self.window


def _change(base, latest: C.Configuration, ops: list) -> dict:
    ch = C.proposal(latest, ops)
    data = C.change_bytes(ch)
    ch["sigs"] = {a: sign_hex(read_key_file(admin_key_path(base, a)), data) for a in ADMINS[:2]}
    return ch


def run(broker: str | None = None, backend: str | None = None, data_dir: str | None = None,
        checkpoint_interval: int = 8, log_window: int = 16,
        say: Callable[[str], None] = print) -> dict:
    from ledger.reader import LedgerReader
    from pbft_tasks.batch_verify import BatchVerifier

    from ..audit.verify import LedgerAudit
    from ..ops.launcher import LocalMesh
    base = data_dir or tempfile.mkdtemp(prefix="hdpbf-bench-reconfig-")
    kw = {k: v for k, v in (("broker_url", broker), ("result_backend", backend)) if v}
    init_mesh(base, nodes=4, admins=ADMINS, **kw)
    cfg = MeshConfig.load(os.path.join(base, "mesh.json"))
    cfg.checkpoint_interval, cfg.log_window = checkpoint_interval, log_window
    cfg.save(os.path.join(base, "mesh.json"))
    cfg = MeshConfig.load(os.path.join(base, "mesh.json"))
    mesh = LocalMesh(str(cfg.path))
    verifier = Verifier(node_keys(cfg), client_keys(cfg))

    def client(name: str, key: Any) -> MeshClient:
        c = MeshClient(name, key, cfg.n, verifier, timeout=2.0)
        c.transport = BrokerClientTransport(mesh.app, c)
        return c

    def history():
        with LedgerReader(cfg.ledger_path(0)) as r:
            from ledger.state import config_history
            from pbft_tasks.core.messages import CONFIG_KEY
            return config_history(r.get_record(CONFIG_KEY), cfg.config_rules())

    result: dict[str, Any] = {"changes": [], "not_run": NOT_RUN, "data_dir": base}
    mesh.purge()
    mesh.start()
    try:
        mesh.wait_ready(timeout=300)
        pids = {i: p.pid for i, p in mesh.procs.items()}
        admin = client("admin", load_client_identity(cfg, "admin"))
        stream = Stream(client("admin", load_client_identity(cfg, "admin")), "s").start()
        with CommitWatch(cfg.ledger_path(1)) as watch:
            t_changes = time.monotonic()

            def apply(what: str, ops: list) -> dict:
                r = admin.reconfigure(_change(base, history().latest, ops), timeout=60)
                entry = {"change": what, "outcome": r.get("config"), "committed_seq": r.get("executed"),
                         "effective_seq": r.get("effective"), "reason": r.get("reason"),
                         "committed_at": time.monotonic()}
                result["changes"].append(entry)
                say(f"{what}: {r.get('config')} at seq {r.get('executed')}, in force from "
                    f"{r.get('effective')}")
                return entry

            key = generate_key()
            add = apply("add client compute7", [{"op": "add_client", "name": "compute7",
                                                  "key": public_key_hex(key)}])
            compute7 = client("compute7", key)
            compute7.timeout = 0.2  # resend every 0.2 s: refused until the boundary
            compute7.put("compute7-first", 1, timeout=120)
            result["new_client_commit_s"] = round(time.monotonic() - add["committed_at"], 3)
            apply("add reader api7", [{"op": "add_reader", "name": "api7",
                                       "key": bytes(PrivateKey.generate().public_key).hex()}])
            apply("add follower f7", [{"op": "add_follower", "name": "f7"}])
            revoke = apply("revoke client compute7", [{"op": "remove_client", "name": "compute7"}])
            # the revoked host keeps sending, past its boundary
            sent = 0
            while revoke["effective_seq"] and watch.height < revoke["effective_seq"] + 8:
                req = Signer(compute7.client_id, key).sign(
                    Request(compute7.client_id, compute7.next_ts(), {"op": "put", "key": f"rv{sent}",
                                                                     "value": sent, "expires_at": None}))
                for node in range(cfg.n):
                    compute7.transport.send_requests(node, [to_wire(req)])
                sent += 1
                time.sleep(0.05)  # a host's pace, not a synchronisation
            t_end = time.monotonic()
            stream.stop()
        result["pause_s_max"] = round(watch.pause_after(t_changes, t_end) or 0.0, 3)
        result["acknowledged"] = len(stream.acked)
        result["revoked_sent"] = sent
        heads = _converge(mesh, cfg)
        result["identical_heads"] = len(set(heads.values())) == 1
        result["lost"] = _lost(cfg, stream.acked)
        result["revoked_accepted"] = _revoked_accepted(cfg, "compute7", revoke["effective_seq"])
        statuses = mesh.statuses()
        result["revoked_refused"] = sum(s["rejected"].get("unknown_client", 0) +
                                        s["rejected"].get("batch_unknown_client", 0)
                                        for s in statuses.values())
        result["config_versions"] = sorted({s.get("config_version") for s in statuses.values()})
        result["restarts"] = sum(1 for i, p in mesh.procs.items() if p.pid != pids[i] or p.poll() is not None)
        with BatchVerifier(node_keys(cfg), client_keys(cfg)) as bv:
            audit = LedgerAudit(cfg, bv)
            result["verify_ok"] = all(audit.run(i, str(cfg.ledger_path(i))).ok for i in range(cfg.n))
        for c in result["changes"]:
            c.pop("committed_at", None)
    finally:
        mesh.stop()
    return result


def _converge(mesh: Any, cfg: MeshConfig, timeout: float = 60.0) -> dict[int, tuple]:
    from ledger.reader import LedgerReader
    deadline = time.monotonic() + timeout
    while True:
        heads = {}
        for i in range(cfg.n):
            with LedgerReader(cfg.ledger_path(i)) as r:
                heads[i] = (r.height(), r.head())
        if len(set(heads.values())) == 1 or time.monotonic() > deadline:
            return heads
        time.sleep(0.2)


def _lost(cfg: MeshConfig, acked: dict[str, int]) -> int:
    from ledger.reader import LedgerReader
    lost = 0
    for i in range(cfg.n):
        with LedgerReader(cfg.ledger_path(i)) as r:
            lost = max(lost, sum(1 for k, v in acked.items() if r.get_value(k) != v))
    return lost


def _revoked_accepted(cfg: MeshConfig, name: str, effective: int | None) -> int:
    from ledger.reader import LedgerReader
    if effective is None:
        return 0
    with LedgerReader(cfg.ledger_path(0)) as r:
        return sum(1 for b in r.iter_blocks(effective) for w in b["requests"]
                   if w["client"].split("/")[0] == name)
